"""Apply the numbered SQL migrations to the configured schema, once each."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql

from sa01.core.errors import ConfigurationError
from sa01.core.settings import Settings
from sa01.outbox.database import database_unavailable

__all__ = ["Migration", "applied_versions", "available_migrations", "migrate"]

logger = logging.getLogger(__name__)
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x5A01_0001


@dataclass(frozen=True)
class Migration:
    """One SQL file: its version number, name and text."""

    version: int
    name: str
    text: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("sa01.outbox.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def _connect(settings: Settings) -> psycopg.AsyncConnection[tuple[object, ...]]:
    try:
        return await psycopg.AsyncConnection.connect(
            settings.database_url, autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        raise database_unavailable(settings, exc) from exc


async def applied_versions(settings: Settings) -> set[int]:
    """Versions already applied to the configured schema (empty when none)."""
    conn = await _connect(settings)
    async with conn:
        cur = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            (f"{settings.database_schema}.schema_migrations",),
        )
        row = await cur.fetchone()
        if not row or not row[0]:
            return set()
        cur = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(
                sql.Identifier(settings.database_schema)
            )
        )
        return {int(r[0]) for r in await cur.fetchall()}  # type: ignore[call-overload]


async def migrate(settings: Settings) -> list[Migration]:
    """Apply what is missing (serialised by an advisory lock); return what was applied."""
    schema = sql.Identifier(settings.database_schema)
    conn = await _connect(settings)
    applied: list[Migration] = []
    async with conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(schema)
            )
            cur = await conn.execute(
                sql.SQL("SELECT version FROM {}.schema_migrations").format(schema)
            )
            done = {int(r[0]) for r in await cur.fetchall()}  # type: ignore[call-overload]
            for migration in available_migrations():
                if migration.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(schema))
                    try:
                        await conn.execute(migration.text.encode())
                    except psycopg.Error as exc:
                        raise ConfigurationError(
                            f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                        ) from exc
                    await conn.execute(
                        sql.SQL(
                            "INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)"
                        ).format(schema),
                        (migration.version, migration.name),
                    )
                applied.append(migration)
                logger.info(
                    "applied migration",
                    extra={"migration": f"{migration.version:04d}_{migration.name}"},
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
