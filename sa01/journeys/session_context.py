"""Session-only context: the recent turns of a session, kept in Redis (bounded, with a TTL).

Used when SomaBrain is unavailable. Redis being down is not an error for the user: the
context is then empty and the reply says ``degraded: ["redis"]``.

Guarantees:

* The reads (:meth:`SessionContext.recent`) of the sessions answered at the same time
  are one Redis command (a Lua script: ``LRANGE`` per session, the lists returned as one
  JSON text), and so are their writes (:meth:`SessionContext.append`: one script of
  ``LPUSH``, ``LTRIM``, ``EXPIRE`` per session, atomic as a script is): one round trip
  and one reply to parse per batch, not per message. The data stays a Redis list per
  session, as before (Redis must allow ``EVALSHA``/``EVAL``).
* :meth:`SessionContext.append` returns only once its turns are in Redis, so the next
  message of the same session (its lane runs after) reads them. The partition owner
  is a session's only writer, so there is no cache to keep coherent across workers:
  every read goes to Redis.
* A Redis failure fails every call of its batch with
  :class:`~sa01.core.errors.ServiceUnavailableError`; the next batch tries again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sa01.core.errors import ServiceUnavailableError
from sa01.core.micro_batch import MicroBatcher
from sa01.core.settings import Settings

__all__ = ["SessionContext"]

logger = logging.getLogger(__name__)

#: Sessions read (or written) together in one command at most.
MAX_BATCH = 256

#: The recent turns of every key (newest first, at most ARGV[1] each), as one JSON text:
#: one reply to parse for the whole batch, decoded in C by ``json.loads``.
_READ = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('LRANGE', key, 0, tonumber(ARGV[1]) - 1)
end
return cjson.encode(out)
"""

#: ARGV: bound, ttl, then per key: the number of its turns and the turns (oldest first).
#: A script runs atomically, as the MULTI/EXEC it replaces did.
_WRITE = """
local bound, ttl, a = tonumber(ARGV[1]), tonumber(ARGV[2]), 3
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[a])
  for j = 1, n do
    redis.call('LPUSH', key, ARGV[a + j])
  end
  a = a + n + 1
  redis.call('LTRIM', key, 0, bound - 1)
  redis.call('EXPIRE', key, ttl)
end
return 1
"""


class SessionContext:
    """Recent turns per session; constructing it does no I/O."""

    def __init__(self, settings: Settings) -> None:
        self.turns = settings.session_context_turns
        self.ttl = settings.session_context_ttl_seconds
        self.prefix = f"{settings.app_id}:{settings.database_schema}:session:"
        self.client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._read_script = self.client.register_script(_READ)
        self._write_script = self.client.register_script(_WRITE)
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
            encoded = await self._read_script(keys=keys, args=[self.turns])
            found = json.loads(encoded)
        except (RedisError, OSError, ValueError) as exc:
            raise ServiceUnavailableError("redis", str(exc)) from exc
        # An empty list comes back as ``{}`` (Lua's cjson cannot tell an empty table's kind).
        return [list(reversed(items)) if isinstance(items, list) else [] for items in found]

    async def _write_batch(self, writes: list[tuple[str, tuple[str, ...]]]) -> Sequence[None]:
        args: list[str | int] = [self.turns, self.ttl]
        for _key, turns in writes:
            args += [len(turns), *turns]
        try:
            await self._write_script(keys=[key for key, _turns in writes], args=args)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailableError("redis", str(exc)) from exc
        return [None] * len(writes)

    async def close(self) -> None:
        """Wait for the calls already made, then close the client."""
        await self._reads.close()
        await self._writes.close()
        await self.client.aclose()
