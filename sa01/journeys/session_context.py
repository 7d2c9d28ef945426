"""Session-only context: the recent turns of a session, kept in Redis (bounded, with a TTL).

Used when SomaBrain is unavailable. Redis being down is not an error for the user: the
context is then empty and the reply says ``degraded: ["redis"]``.

Guarantees:

* The reads (:meth:`SessionContext.recent`) of the sessions answered at the same time
  are one Redis round trip (one pipeline of ``LRANGE``), and so are their writes
  (:meth:`SessionContext.append`: one ``MULTI``/``EXEC`` of ``LPUSH``, ``LTRIM``,
  ``EXPIRE`` per session): CPU and round trips per batch, not per message.
* :meth:`SessionContext.append` returns only once its turns are in Redis, so the next
  message of the same session (its lane runs after) reads them. The partition owner
  is a session's only writer, so there is no cache to keep coherent across workers:
  every read goes to Redis.
* A Redis failure fails every call of its batch with
  :class:`~sa01.core.errors.ServiceUnavailableError`; the next batch tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sa01.core.errors import ServiceUnavailableError
from sa01.core.micro_batch import MicroBatcher
from sa01.core.settings import Settings

__all__ = ["SessionContext"]

logger = logging.getLogger(__name__)

#: Sessions read (or written) together in one pipeline at most.
MAX_BATCH = 256


class SessionContext:
    """Recent turns per session; constructing it does no I/O."""

    def __init__(self, settings: Settings) -> None:
        self.turns = settings.session_context_turns
        self.ttl = settings.session_context_ttl_seconds
        self.prefix = f"{settings.app_id}:{settings.database_schema}:session:"
        self.client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        # max_wait 0: a batch holds the calls made while the previous one was in flight
        # (or within the same turn of the event loop); no call waits for company.
        self._reads: MicroBatcher[str, list[str]] = MicroBatcher(
            self._read_batch, max_size=MAX_BATCH, max_wait=0.0
        )
        self._writes: MicroBatcher[tuple[str, tuple[str, ...]], None] = MicroBatcher(
            self._write_batch, max_size=MAX_BATCH, max_wait=0.0
        )

    async def recent(self, session_key: str) -> list[str]:
        """The session's recent turns, oldest first."""
        return await self._reads.submit(self.prefix + session_key)

    async def append(self, session_key: str, *turns: str) -> None:
        """Remember new turns (newest last), keeping the bound and refreshing the TTL."""
        if turns:
            await self._writes.submit((self.prefix + session_key, turns))

    async def _read_batch(self, keys: list[str]) -> Sequence[list[str]]:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.lrange(key, 0, self.turns - 1)
                found = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailableError("redis", str(exc)) from exc
        return [
            [i.decode() if isinstance(i, bytes) else str(i) for i in reversed(items)]
            for items in found
        ]

    async def _write_batch(self, writes: list[tuple[str, tuple[str, ...]]]) -> Sequence[None]:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for key, turns in writes:
                    pipe.lpush(key, *turns)
                    pipe.ltrim(key, 0, self.turns - 1)
                    pipe.expire(key, self.ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailableError("redis", str(exc)) from exc
        return [None] * len(writes)

    async def close(self) -> None:
        """Wait for the calls already made, then close the client."""
        await self._reads.close()
        await self._writes.close()
        await self.client.aclose()
