"""Micro-batching: the items submitted together, flushed by one call.

Used where many concurrent callers each need one small round trip to the same service
(PostgreSQL group commit and idempotency lookups, Redis session context): one call per
batch replaces one call per item.

Guarantees:

* Every submitted item gets its own result or its own error, in submission order
  within its batch; an error the flush raises is every item's of that batch.
* One batch is flushed at a time; the items submitted meanwhile form the next one, so
  an item submitted after another item's result was delivered is flushed after it.
* A cancelled caller does not cancel its batch; cancelling the batch's task cancels
  every waiting caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """Coalesces the items submitted together into one call of ``flush``.

    ``flush`` takes the items of a batch in submission order and returns one result per
    item, an exception instance standing for that item's own failure; an exception it
    raises is every item's. A batch holds at most ``max_size`` items and waits at most
    ``max_wait`` seconds for more after its first; one batch is flushed at a time and
    the items submitted meanwhile form the next. Constructing it does no I/O; its task
    runs only while items wait.
    """

    def __init__(
        self,
        flush: Callable[[list[In]], Awaitable[Sequence[Out | BaseException]]],
        *,
        max_size: int,
        max_wait: float,
        on_batch: Callable[[int], None] = lambda _size: None,
    ) -> None:
        self._flush = flush
        self.max_size = max_size
        self.max_wait = max_wait
        self._on_batch = on_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        """``item``'s result once its batch is flushed (raises its error)."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_size:
            self._full.set()
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="micro-batch")
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                if len(self._pending) < self.max_size and self.max_wait > 0:
                    self._full.clear()
                    try:
                        async with asyncio.timeout(self.max_wait):
                            await self._full.wait()
                    except TimeoutError:
                        pass
                batch = self._pending[: self.max_size]
                del self._pending[: self.max_size]
                await self._run(batch)
        finally:
            self._task = None
            if self._pending:  # cancelled: nobody will flush these
                for _item, future in self._pending:
                    future.cancel()
                self._pending.clear()

    async def _run(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        self._on_batch(len(batch))
        try:
            results = await self._flush([item for item, _future in batch])
        except asyncio.CancelledError:
            for _item, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _item, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_item, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Wait until the items already submitted are flushed."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)
