"""PostgreSQL connection pool of one schema, and translation of driver errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sa01.core.errors import InfrastructureUnavailableError, SchemaMissingError
from sa01.core.settings import Settings

__all__ = ["Database", "database_unavailable", "schema_missing"]

#: What a lost table or schema looks like to the driver.
_MISSING_SCHEMA_ERRORS = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)


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


def schema_missing(settings: Settings, exc: BaseException) -> SchemaMissingError:
    """The project error for tables that are not there: it says how to fix it."""
    return SchemaMissingError(
        f"schema {settings.database_schema!r} lacks the project's tables "
        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
        "run `faust -A streams migrate` (or `make migrate`), then start the worker again"
    )


class Database:
    """An async connection pool whose connections use the configured schema.

    Constructing it does no I/O: call :meth:`open` (or use ``async with``). Every
    connection's ``search_path`` is the settings' ``database_schema``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        min_size: int = 1,
        max_size: int | None = None,
        on_schema_missing: Callable[[SchemaMissingError], None] | None = None,
    ):
        self.settings = settings
        self.on_schema_missing = on_schema_missing
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

        PostgreSQL being unreachable surfaces as :class:`InfrastructureUnavailableError`;
        a table or schema that is not there as :class:`SchemaMissingError` (and
        ``on_schema_missing`` is told, so that a worker can stop with one clear error
        instead of failing every message).
        """
        try:
            async with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise database_unavailable(self.settings, exc) from exc
        except _MISSING_SCHEMA_ERRORS as exc:
            error = schema_missing(self.settings, exc)
            if self.on_schema_missing is not None:
                self.on_schema_missing(error)
            raise error from exc
