"""PostgreSQL connection pool of one schema, and translation of driver errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from core.errors import InfrastructureUnavailableError
from core.settings import Settings

__all__ = ["Database", "database_unavailable"]


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    return f"{host}:{port}/{info.get('dbname', '')}"


def database_unavailable(settings: Settings, exc: BaseException) -> InfrastructureUnavailableError:
    """The project error for a PostgreSQL failure that is not the statement's fault."""
    return InfrastructureUnavailableError(
        "postgres",
        f"PostgreSQL at {_redact(settings.database_url)} is not reachable ({exc})".strip(),
    )


class Database:
    """An async connection pool whose connections use the configured schema.

    Constructing it does no I/O: call :meth:`open` (or use ``async with``). Every
    connection's ``search_path`` is the settings' ``database_schema``.
    """

    def __init__(self, settings: Settings, *, min_size: int = 1, max_size: int | None = None):
        self.settings = settings
        self.pool = AsyncConnectionPool(
            settings.database_url,
            min_size=min_size,
            max_size=max_size or settings.database_pool_max_size,
            open=False,
            timeout=10.0,
            kwargs={
                "options": f"-c search_path={settings.database_schema}",
                "connect_timeout": 5,
                "autocommit": True,
            },
            name=f"sa01-{settings.database_schema}",
        )

    async def open(self, wait: bool = False) -> None:
        """Open the pool; with ``wait``, fail at once when PostgreSQL is not reachable."""
        await self.pool.open(wait=wait, timeout=10.0)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()

    async def __aenter__(self) -> Database:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        """A pooled connection (autocommit; open a transaction with ``conn.transaction()``).

        PostgreSQL being unreachable surfaces as :class:`InfrastructureUnavailableError`.
        """
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise database_unavailable(self.settings, exc) from exc
