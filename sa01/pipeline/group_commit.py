"""Group commit: the rows of many answered messages in one PostgreSQL transaction.

The conversation lanes hand each answered message's rows to one :class:`GroupCommitter`
and wait. The committer writes the messages that arrived together (at most
``SA01_GROUP_COMMIT_MAX_MESSAGES``, gathered for at most
``SA01_GROUP_COMMIT_MAX_WAIT_SECONDS``) in one transaction, then resolves each wait.
The idempotency pre-checks of messages arriving together are one lookup the same way.

Guarantees (see docs/guarantees.md):

* A message's rows (its idempotency record, its outbox rows, its owed answer) commit
  atomically and together with its idempotency record: all of them or none. A batch
  without owed answers is one statement on an autocommit connection (its own
  transaction: one round trip); a batch with owed answers is an explicit transaction.
* :meth:`GroupCommitter.commit` returns only after the transaction holding the
  message's rows committed (True), or when the message's idempotency record already
  existed and nothing of it was written (False: a duplicate). Its neighbours in the
  batch are not affected by a duplicate.
* A batch whose transaction fails for any reason but an outage is written again in
  halves, each in its own transaction, and each half that fails again in halves, down
  to single messages: a message whose rows fail alone gets its own error (its caller
  dead-letters it) and never blocks the others, which commit.
* An outage (:class:`InfrastructureUnavailableError`) or lost tables
  (:class:`SchemaMissingError`) fail every message of the batch with that error, and
  nothing of the batch is written: the callers wait and commit again.
* At most one transaction (and one lookup) per committer is in flight; the messages
  arriving meanwhile form the next batch.
* ``on_committed`` (the relay's wake-up) is called once per committed transaction that
  wrote rows, after the commit and before any of its messages' waits resolve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sa01.core.errors import InfrastructureUnavailableError, SchemaMissingError
from sa01.core.metrics import Metrics
from sa01.core.micro_batch import MicroBatcher
from sa01.core.settings import Settings
from sa01.outbox.database import Database
from sa01.outbox.idempotency import IdempotencyStore
from sa01.outbox.owed_answers import DeferredAnswerStore
from sa01.outbox.store import OutboxRecord
from schemas.messages import ConversationInbound

__all__ = ["Answered", "GroupCommitter"]

logger = logging.getLogger(__name__)

#: Errors that concern every message of a batch alike: they are never retried one by one.
_BATCH_WIDE = (InfrastructureUnavailableError, SchemaMissingError)


@dataclass(frozen=True)
class Answered:
    """The rows of one answered message, committed with its idempotency record."""

    key: str
    """The idempotency key (``<topic>:<tenant>:<message id>``)."""
    result: Any
    """The record's result: a JSON value, or :class:`EncodedJson` (the reply)."""
    records: tuple[OutboxRecord, ...]
    """Outbox rows: the reply, the memory, the upload tasks."""
    owed: ConversationInbound | None = None
    """A message answered degraded: its real answer is owed (``deferred_answer``)."""


class GroupCommitter:
    """Commits answered messages in batches, and looks up answered keys in batches."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        metrics: Metrics,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.on_committed = on_committed
        self.database = database
        self.metrics = metrics
        self.ttl = timedelta(seconds=settings.idempotency_ttl_seconds)
        self.idempotency = IdempotencyStore()
        self.deferred = DeferredAnswerStore()
        self._commits: MicroBatcher[Answered, bool] = MicroBatcher(
            self._commit_batch,
            max_size=settings.group_commit_max_messages,
            max_wait=settings.group_commit_max_wait_seconds,
            on_batch=metrics.outbox_commit_batch_size.observe,
        )
        self._lookups: MicroBatcher[str, bool] = MicroBatcher(
            self._lookup_batch,
            max_size=settings.group_commit_max_messages,
            max_wait=settings.group_commit_max_wait_seconds,
            on_batch=metrics.idempotency_lookup_batch_size.observe,
        )

    async def answered(self, key: str) -> bool:
        """Whether ``key`` has an unexpired idempotency record (one lookup per batch)."""
        return await self._lookups.submit(key)

    async def commit(self, answered: Answered) -> bool:
        """Commit ``answered``'s rows; False when its key was already recorded (nothing
        written). Raises the message's own error, or the batch's outage."""
        return await self._commits.submit(answered)

    async def close(self) -> None:
        """Wait for the batches already submitted (at shutdown, before the pool closes)."""
        await self._lookups.close()
        await self._commits.close()

    # ------------------------------------------------------------------ lookups
    async def _lookup_batch(self, keys: list[str]) -> Sequence[bool | BaseException]:
        try:
            async with self.database.connection() as conn:
                found = await self.idempotency.found(conn, keys)
            return [key in found for key in keys]
        except _BATCH_WIDE:
            raise
        except Exception:
            if len(keys) == 1:
                raise
            logger.warning("a lookup of %d keys failed: looking them up one by one", len(keys))
            return [await self._lookup_one(key) for key in keys]

    async def _lookup_one(self, key: str) -> bool | BaseException:
        try:
            async with self.database.connection() as conn:
                return key in await self.idempotency.found(conn, [key])
        except _BATCH_WIDE:
            raise
        except Exception as exc:
            return exc

    # ------------------------------------------------------------------ commits
    async def _commit_batch(self, batch: list[Answered]) -> Sequence[bool | BaseException]:
        try:
            return await self._transaction(batch)
        except _BATCH_WIDE:
            raise
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            self.metrics.outbox_commit_fallbacks_total.inc()
            logger.warning(
                "a group commit of %d messages failed (%s): committing them in halves",
                len(batch),
                type(exc).__name__,
            )
            return await self._bisect(batch)

    async def _bisect(self, batch: list[Answered]) -> list[bool | BaseException]:
        """Commit each half of a failed ``batch`` alone, and so on down to the messages
        that fail on their own: a bad message costs its neighbours about 2·log2(n)
        transactions instead of n."""
        results: list[bool | BaseException] = []
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            self.metrics.outbox_commit_batch_size.observe(len(half))
            try:
                results += await self._transaction(half)
            except _BATCH_WIDE:
                raise
            except Exception as exc:
                results += [exc] if len(half) == 1 else await self._bisect(half)
        return results

    async def _transaction(self, batch: list[Answered]) -> list[bool]:
        async with self.database.connection() as conn:
            if any(answered.owed is not None for answered in batch):
                async with conn.transaction():
                    written = await self._write(conn, batch)
            else:  # one statement on an autocommit connection: its own transaction
                written = await self._write(conn, batch)
        if any(written):
            self.on_committed()  # once per transaction, not per message
        return written

    async def _write(self, conn: Any, batch: list[Answered]) -> list[bool]:
        """Write the batch's rows on ``conn``; True per message written.

        The idempotency records and the outbox rows are one statement; the owed answers
        (rare: degraded replies) follow it, in the caller's transaction.
        A key twice in one batch (the same message from two sessions) is written once:
        the first copy's rows, the later copies are duplicates.
        """
        first: dict[str, Answered] = {}
        for answered in batch:
            first.setdefault(answered.key, answered)
        recorded = await self.idempotency.put_many_with_rows(
            conn,
            [(a.key, a.result, a.records) for a in first.values()],
            self.ttl,
            self.settings.outbox_max_attempts,
        )
        for answered in first.values():
            if answered.owed is not None and answered.key in recorded:
                await self.deferred.add(conn, answered.owed)
        return [a.key in recorded and first[a.key] is a for a in batch]
