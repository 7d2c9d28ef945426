"""Session-only context: the recent turns of a session, kept in Redis (bounded, with a TTL).

Used when SomaBrain is unavailable. Redis being down is not an error for the user: the
context is then empty and the reply says ``degraded: ["redis"]``.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sa01.core.errors import ServiceUnavailableError
from sa01.core.settings import Settings

__all__ = ["SessionContext"]

logger = logging.getLogger(__name__)


class SessionContext:
    """Recent turns per session; constructing it does no I/O."""

    def __init__(self, settings: Settings) -> None:
        self.turns = settings.session_context_turns
        self.ttl = settings.session_context_ttl_seconds
        self.prefix = f"{settings.app_id}:{settings.database_schema}:session:"
        self.client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )

    async def recent(self, session_key: str) -> list[str]:
        """The session's recent turns, oldest first."""
        try:
            items = await self.client.lrange(self.prefix + session_key, 0, -1)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailableError("redis", str(exc)) from exc
        return [i.decode() if isinstance(i, bytes) else str(i) for i in reversed(items)]

    async def append(self, session_key: str, *turns: str) -> None:
        """Remember new turns (newest last), keeping the bound and refreshing the TTL."""
        key = self.prefix + session_key
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for turn in turns:
                    pipe.lpush(key, turn)
                pipe.ltrim(key, 0, self.turns - 1)
                pipe.expire(key, self.ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailableError("redis", str(exc)) from exc

    async def close(self) -> None:
        """Close the client."""
        await self.client.aclose()
