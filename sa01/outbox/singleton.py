"""A job that runs in one process of the cluster at a time, under a PostgreSQL advisory lock.

Contract:

* :class:`AdvisoryLock` holds one session-level advisory lock on a dedicated
  autocommit connection whose ``search_path`` is the configured schema. The lock lives
  exactly as long as that session: a holder killed with ``kill -9`` loses its
  connection, and PostgreSQL frees the lock for the next process.
* :class:`SingletonJob` competes for its lock and, while it holds it, runs its body
  (``body(lease)``). Beside the body a watchdog checks the lock's session every
  ``check_seconds``; when the session is lost the body is cancelled at once (another
  process may already hold the lock). When the body returns, the job releases the lock
  and competes again after ``lock_retry_seconds`` (that is how a holder hands a lock
  over). When the body or the lock fails, the job releases the lock and retries with
  :class:`~resilience.retry.Backoff` (exponential with jitter, bounded), the failure
  count growing until the body calls :meth:`Lease.healthy`.
* :meth:`SingletonJob.run_once` takes the lock (waiting at most ``wait_seconds``),
  runs one body and releases it: for commands that drain and exit.
* Errors name PostgreSQL by host, port and database only: the URL's password, and
  every configured secret, are redacted (``sa01.core.redaction``).
* Constructing either does no I/O.

A job is a few lines::

    job = SingletonJob(settings, name="deferred-answers", lock_key=key, body=answer_forever)
    await job.start()   # ... await job.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from sa01.core.errors import (
    ConfigurationError,
    InfrastructureUnavailableError,
    ServiceUnavailableError,
)
from sa01.core.redaction import configured_secrets, redact_text
from sa01.core.settings import Settings
from sa01.outbox.database import database_unavailable
from sa01.resilience.retry import Backoff, sleep_unless

__all__ = ["AdvisoryLock", "Lease", "SingletonJob"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _unavailable(
    settings: Settings, what: str, exc: BaseException
) -> InfrastructureUnavailableError:
    detail = redact_text(f"{what}: {exc}", configured_secrets(settings))
    return database_unavailable(settings, RuntimeError(detail))


class AdvisoryLock:
    """One session-level advisory lock on its own connection; construct, then acquire."""

    def __init__(self, settings: Settings, key: int, name: str) -> None:
        self.settings = settings
        self.key = key
        self.name = name
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def held(self) -> bool:
        """Whether this object believes it holds the lock (its session is open)."""
        return self._conn is not None and not self._conn.closed

    async def try_acquire(self) -> bool:
        """Take the lock if it is free; raises InfrastructureUnavailableError."""
        if self.held:
            return True
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.settings.database_url,
                autocommit=True,
                connect_timeout=5,
                options=f"-c search_path={self.settings.database_schema}",
            )
        except psycopg.Error as exc:
            raise _unavailable(self.settings, f"lock {self.name}", exc) from exc
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
            row = await cur.fetchone()
        except psycopg.Error as exc:
            await conn.close()
            raise _unavailable(self.settings, f"lock {self.name}", exc) from exc
        except BaseException:
            await conn.close()
            raise
        if row is not None and row[0]:
            self._conn = conn
            return True
        await conn.close()
        return False

    async def acquire(
        self,
        wait_seconds: float | None,
        retry_seconds: float,
        stopping: asyncio.Event | None = None,
    ) -> bool:
        """Try every ``retry_seconds`` until held, ``wait_seconds`` ran out or ``stopping``."""
        loop = asyncio.get_running_loop()
        deadline = None if wait_seconds is None else loop.time() + wait_seconds
        while stopping is None or not stopping.is_set():
            if await self.try_acquire():
                return True
            if deadline is not None and loop.time() >= deadline:
                return False
            await sleep_unless(stopping, retry_seconds)
        return False

    async def check(self) -> None:
        """Raise InfrastructureUnavailableError when the lock's session is gone."""
        conn = self._conn
        if conn is None or conn.closed:
            raise _unavailable(self.settings, f"lock {self.name}", RuntimeError("not held"))
        try:
            await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            await self.release()
            raise _unavailable(self.settings, f"lock {self.name} lost", exc) from exc

    async def release(self) -> None:
        """Let the lock go (closing the session frees it; never raises)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            if not conn.closed:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        with contextlib.suppress(psycopg.Error):
            await conn.close()


class Lease:
    """What a running body sees: the stop signal, and a way to say it is healthy."""

    def __init__(self, job: SingletonJob) -> None:
        self._job = job

    @property
    def stopping(self) -> asyncio.Event:
        """Set when the job is being stopped."""
        return self._job.stopping

    def healthy(self) -> None:
        """The body got going: the next failure starts the backoff from the beginning."""
        self._job.failures = 0


Body = Callable[[Lease], Awaitable[T]]


class SingletonJob:
    """Runs ``body`` in this process while it holds ``lock_key``; see the module's contract."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        lock_key: int,
        body: Body[None] | None = None,
        backoff: Backoff | None = None,
        lock_retry_seconds: float | None = None,
        check_seconds: float = 5.0,
        on_change: Callable[[bool], None] = lambda held: None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.lock = AdvisoryLock(settings, lock_key, name)
        self.body = body
        self.backoff = backoff or Backoff(maximum=settings.infrastructure_retry_max_seconds)
        self.lock_retry_seconds = lock_retry_seconds or settings.relay_lock_retry_seconds
        self.check_seconds = check_seconds
        self.on_change = on_change
        self.stopping = asyncio.Event()
        self.failures = 0
        self.active = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Compete for the lock and run the body in the background until :meth:`stop`."""
        if self.body is None:
            raise TypeError(f"singleton job {self.name} has no body to run")
        self.stopping.clear()
        self._task = asyncio.create_task(self._run_forever(self.body), name=self.name)

    async def stop(self) -> None:
        """Cancel the body and release the lock."""
        self.stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.lock.release()

    async def run_once(self, body: Body[T], wait_seconds: float = 0.0) -> T | None:
        """Run ``body`` once under the lock; None when another holder kept it ``wait_seconds``."""
        if not await self.lock.acquire(wait_seconds, self.lock_retry_seconds, self.stopping):
            return None
        try:
            return await self._while_held(body)
        finally:
            await self.lock.release()

    async def _run_forever(self, body: Body[None]) -> None:
        while not self.stopping.is_set():
            try:
                if await self.lock.acquire(None, self.lock_retry_seconds, self.stopping):
                    try:
                        await self._while_held(body)
                    finally:
                        await self.lock.release()
                    await sleep_unless(self.stopping, self.lock_retry_seconds)
                    continue
            except asyncio.CancelledError:
                raise
            except (ServiceUnavailableError, psycopg.Error) as exc:
                self.failures += 1
                logger.warning("%s paused: %s", self.name, exc)
            except ConfigurationError as exc:  # an operator's to fix: said, retried
                self.failures += 1
                logger.error("%s refused: %s", self.name, exc)
            except Exception:
                self.failures += 1
                logger.exception("%s failed", self.name)
            await sleep_unless(self.stopping, self.backoff.delay(self.failures))

    async def _while_held(self, body: Body[T]) -> T:
        """Run ``body`` with the watchdog beside it; the first to end ends the other."""
        self._set_active(True)
        work = asyncio.ensure_future(body(Lease(self)))
        watchdog = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait({work, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                watchdog.result()  # raises why the lock was lost
                raise ServiceUnavailableError(self.name, "the lock's watchdog ended")
            return work.result()
        finally:
            for task in (work, watchdog):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._set_active(False)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            await self.lock.check()

    def _set_active(self, active: bool) -> None:
        self.active = active
        self.on_change(active)
