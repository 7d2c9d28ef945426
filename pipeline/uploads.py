"""The upload and backup journeys: ``upload.retry`` and ``backup.tasks``.

An :class:`UploadTask` is done when its object is in the primary store and no
temporary store keeps a copy. Until then it is retried with capped exponential
backoff; after ``upload_max_attempts`` it is dead-lettered to ``upload.retry.dlq``
(original bytes, KIP-1034 headers). While the primary is down, a task that carries
its bytes first parks them in a temporary store, so the upload can be read meanwhile.

A :class:`BackupTask` copies each named object (read from wherever it is) to the
backup store, with the same retry and dead-letter rules.

Puts are idempotent (same key, same bytes), so a task processed twice after a crash
stores its object once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel

from core.errors import (
    InfrastructureUnavailableError,
    ObjectNotFoundError,
    PermanentError,
    ResilienceError,
    TransientError,
)
from core.metrics import Metrics
from core.settings import Settings
from pipeline.dead_letters import DeadLetterWriter, InboundMessage
from providers.storage import ObjectStore, StorageChain
from schemas.codec import decode_message
from schemas.messages import BackupTask, UploadTask, tenant_object_key

__all__ = ["BackupProcessor", "UploadProcessor", "backoff_seconds"]

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def backoff_seconds(settings: Settings, failures: int) -> float:
    """Capped exponential backoff with ±20 % jitter after ``failures`` failures."""
    base = settings.upload_retry_backoff_seconds * float(2 ** max(0, failures - 1))
    capped = min(base, settings.upload_retry_max_backoff_seconds)
    jitter: float = random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography
    return capped * jitter


class _RetryingProcessor:
    """Decode, retry transient failures with backoff, dead-letter the rest."""

    def __init__(
        self, settings: Settings, dead_letters: DeadLetterWriter, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.dead_letters = dead_letters
        self.metrics = metrics

    async def _run(
        self,
        message: InboundMessage,
        model: type[M],
        attempt: Callable[[M], Awaitable[str]],
        on_failure: Callable[[], None],
    ) -> str:
        try:
            task = decode_message(model, message.value)
        except PermanentError as exc:
            await self._dead_letter(message, exc, 1)
            return "dead_lettered"
        failures = 0
        while True:
            try:
                return await attempt(task)
            except PermanentError as exc:
                await self._dead_letter(message, exc, failures + 1)
                return "dead_lettered"
            except TransientError as exc:
                failures += 1
                on_failure()
                if failures >= self.settings.upload_max_attempts:
                    await self._dead_letter(message, exc, failures)
                    return "dead_lettered"
                delay = backoff_seconds(self.settings, failures)
                if failures in (1, 5) or failures % 10 == 0:
                    logger.warning(
                        "%s: attempt %d failed, next in %.1fs: %s",
                        message.position,
                        failures,
                        delay,
                        exc,
                    )
                await asyncio.sleep(delay)

    async def _dead_letter(self, message: InboundMessage, error: Exception, attempts: int) -> None:
        while True:
            try:
                await self.dead_letters.write(message, error, attempts)
                return
            except InfrastructureUnavailableError as exc:
                logger.warning("dead letter of %s waits for %s", message.position, exc.service)
                await asyncio.sleep(self.settings.infrastructure_retry_max_seconds / 5)


class UploadProcessor(_RetryingProcessor):
    """Moves queued and temporary uploads to the primary store; never raises."""

    def __init__(
        self,
        settings: Settings,
        storage: StorageChain,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
    ) -> None:
        super().__init__(settings, dead_letters, metrics)
        self.storage = storage

    async def process(self, message: InboundMessage) -> str:
        """``stored``, ``promoted`` or ``dead_lettered``."""
        parked: dict[str, str] = {}  # this task's temporary copy, once made
        outcome = await self._run(
            message,
            UploadTask,
            lambda task: self._attempt(task, parked),
            self.metrics.upload_task_attempts_total.inc,
        )
        self.metrics.upload_tasks_total.labels(outcome=outcome).inc()
        return outcome

    async def _attempt(self, task: UploadTask, parked: dict[str, str]) -> str:
        key = task.storage_key
        held = task.held_in or parked.get(key)
        if held is None:
            data = _inline(task)
        else:
            try:
                data = await self._read_temporary(held, key)
            except ObjectNotFoundError:
                if await self._through_exists(key):
                    await self._forget_temporary(key, held)
                    return "promoted"
                if task.content_base64 is None:
                    raise PermanentError(
                        f"the temporary copy of {key!r} in {held!r} is gone and the primary "
                        "store does not have it (a Redis copy outlived its TTL?)"
                    ) from None
                data = _inline(task)
        try:
            await self.storage.put_primary(key, data, task.content_type)
        except TransientError:
            if held is None and task.content_base64 is not None:
                await self._park(task, data, parked)
            raise
        await self._forget_temporary(key, held)
        return "stored" if task.held_in is None and held is None else "promoted"

    async def _read_temporary(self, store: str, key: str) -> bytes:
        return await self.storage.store(store).get(key)

    async def _through_exists(self, key: str) -> bool:
        try:
            return await self.storage.primary.provider.exists(key)
        except ResilienceError:
            return False

    async def _park(self, task: UploadTask, data: bytes, parked: dict[str, str]) -> None:
        """Keep the bytes readable in a temporary store while the primary is down."""
        for store in self.storage.stores[1:]:
            try:
                await store.put(task.storage_key, data, task.content_type)
            except ResilienceError:
                continue
            parked[task.storage_key] = store.name
            logger.info("upload %s parked in %s", task.upload_id, store.name)
            return

    async def _forget_temporary(self, key: str, held: str | None) -> None:
        """Delete the temporary copies: the one we know of must go, others best effort."""
        if held is not None:
            await self.storage.store(held).delete(key)
        for store in self.storage.stores[1:]:
            if store.name == held:
                continue
            try:
                await store.delete(key)
            except ResilienceError as exc:
                logger.info("could not check %s for a stale copy of %r: %s", store.name, key, exc)


def _inline(task: UploadTask) -> bytes:
    if task.content_base64 is None:
        raise PermanentError(f"upload {task.upload_id} carries no bytes and no store holds them")
    import base64

    return base64.b64decode(task.content_base64)


class BackupProcessor(_RetryingProcessor):
    """Copies stored objects to the backup store; never raises."""

    def __init__(
        self,
        settings: Settings,
        storage: StorageChain,
        backup: ObjectStore,
        dead_letters: DeadLetterWriter,
        metrics: Metrics,
    ) -> None:
        super().__init__(settings, dead_letters, metrics)
        self.storage = storage
        self.backup = backup

    async def process(self, message: InboundMessage) -> str:
        """``copied`` or ``dead_lettered`` (a key no store holds is counted ``missing``)."""
        done: set[str] = set()
        return await self._run(
            message,
            BackupTask,
            lambda task: self._attempt(task, done),
            self.metrics.backup_task_attempts_total.inc,
        )

    async def _attempt(self, task: BackupTask, done: set[str]) -> str:
        for name in task.storage_keys:
            key = tenant_object_key(task.tenant_id, name)  # only the task's tenant's objects
            if key in done:
                continue
            try:
                _, data = await self.storage.get(key)
            except ObjectNotFoundError:
                logger.warning("backup %s: %r is in no store, skipped", task.task_id, key)
                self.metrics.backup_objects_total.labels(outcome="missing").inc()
                done.add(key)
                continue
            await self.backup.put(key, data, "application/octet-stream")
            self.metrics.backup_objects_total.labels(outcome="copied").inc()
            done.add(key)
        return "copied"
