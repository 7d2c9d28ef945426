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
import base64
import binascii
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel

from sa01.core.errors import (
    InfrastructureUnavailableError,
    MessageValidationError,
    ObjectNotFoundError,
    PermanentError,
    ResilienceError,
    TransientError,
)
from sa01.core.metrics import Metrics
from sa01.core.settings import Settings
from sa01.pipeline.consuming import DEAD_LETTERED, INPUT_ERRORS, RecordGuard
from sa01.pipeline.dead_lettering import InboundMessage
from sa01.pipeline.priority import BackgroundShare
from sa01.providers.storage import ObjectStore, StorageChain
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
    """Decode, retry transient failures with backoff, dead-letter the rest (via the guard).

    Runs under a :class:`RecordGuard` (pipeline.consuming), which dead-letters what
    escapes: a record that cannot be decoded, a :class:`PermanentError`, bad input.
    Each attempt holds a slot of the :class:`BackgroundShare`; the waits between
    attempts hold none, so tasks waiting for a store do not crowd out other work.
    """

    def __init__(
        self,
        settings: Settings,
        guard: RecordGuard,
        metrics: Metrics,
        share: BackgroundShare | None = None,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.metrics = metrics
        self.share = share or BackgroundShare(1_000_000, 1_000_000)

    async def _run(
        self,
        message: InboundMessage,
        model: type[M],
        attempt: Callable[[M], Awaitable[str]],
        on_failure: Callable[[], None],
    ) -> str:
        task = decode_message(model, message.value)
        failures = 0
        while True:
            try:
                async with self.share.slot():
                    return await attempt(task)
            except TransientError as exc:
                if isinstance(exc, InfrastructureUnavailableError):
                    raise
                failures += 1
                on_failure()
                if failures >= self.settings.upload_max_attempts:
                    return await self.guard.dead_letter(message, exc, failures)
                delay = backoff_seconds(self.settings, failures)
                if failures in (1, 5) or failures % 10 == 0:
                    logger.warning(
                        "task attempt failed, retrying",
                        extra={
                            "position": message.position,
                            "attempt": failures,
                            "delay_seconds": round(delay, 1),
                            "error": str(exc),
                        },
                    )
                await asyncio.sleep(delay)


class UploadProcessor(_RetryingProcessor):
    """Moves queued and temporary uploads to the primary store; never raises."""

    def __init__(
        self,
        settings: Settings,
        storage: StorageChain,
        guard: RecordGuard,
        metrics: Metrics,
        share: BackgroundShare | None = None,
    ) -> None:
        super().__init__(settings, guard, metrics, share)
        self.storage = storage

    async def process(self, message: InboundMessage) -> str:
        """``stored``, ``promoted`` or ``dead_lettered``; raises what the guard must handle."""
        parked: dict[str, str] = {}  # this task's temporary copy, once made
        try:
            outcome = await self._run(
                message,
                UploadTask,
                lambda task: self._attempt(task, parked),
                self.metrics.upload_task_attempts_total.inc,
            )
        except INPUT_ERRORS:
            self.metrics.upload_tasks_total.labels(outcome=DEAD_LETTERED).inc()
            raise
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
            logger.info("upload parked", extra={"upload_id": task.upload_id, "store": store.name})
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
                logger.info(
                    "could not check for a stale copy",
                    extra={"store": store.name, "key": key, "error": str(exc)},
                )


def _inline(task: UploadTask) -> bytes:
    if task.content_base64 is None:
        raise PermanentError(f"upload {task.upload_id} carries no bytes and no store holds them")
    try:
        return base64.b64decode(task.content_base64, validate=True)
    except binascii.Error as exc:
        raise MessageValidationError(f"upload {task.upload_id}: content_base64: {exc}") from exc


class BackupProcessor(_RetryingProcessor):
    """Copies stored objects to the backup store; never raises."""

    def __init__(
        self,
        settings: Settings,
        storage: StorageChain,
        backup: ObjectStore,
        guard: RecordGuard,
        metrics: Metrics,
        share: BackgroundShare | None = None,
    ) -> None:
        super().__init__(settings, guard, metrics, share)
        self.storage = storage
        self.backup = backup

    async def process(self, message: InboundMessage) -> str:
        """``copied`` or ``dead_lettered`` (a key no store holds is counted ``missing``);
        raises what the guard must handle."""
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
                logger.warning(
                    "backup object in no store, skipped",
                    extra={"task_id": task.task_id, "key": key},
                )
                self.metrics.backup_objects_total.labels(outcome="missing").inc()
                done.add(key)
                continue
            await self.backup.put(key, data, "application/octet-stream")
            self.metrics.backup_objects_total.labels(outcome="copied").inc()
            done.add(key)
        return "copied"
