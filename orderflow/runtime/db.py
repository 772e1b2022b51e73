"""PostgreSQL: one schema per service, plain-SQL migrations applied in order and recorded."""

from __future__ import annotations

import logging
import uuid
import zlib
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"


def service_migrations(service: str) -> Path:
    import services

    return Path(services.__path__[0]) / service / "migrations"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state to clear: locks are transaction-scoped (`pg_advisory_xact_lock`),
    nothing LISTENs or SETs. asyncpg still rolls back an open transaction on release; skipping its reset query
    (unlock all, CLOSE ALL, UNLISTEN, RESET ALL) saves a round trip per transaction."""


async def connect_pool(database_url: str, schema: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """A pool whose connections see the service's schema first; nothing opens at import time."""
    return await asyncpg.create_pool(
        database_url,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": f"{schema},public", "application_name": f"orderflow-{schema}"},
        command_timeout=30,
        reset=_keep_session,
    )


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.sql")) if folder.is_dir() else []


async def migrate(conn: asyncpg.Connection, schema: str, folders: list[Path]) -> list[str]:
    """Apply every not-yet-applied SQL file in order; serialised across workers by an advisory lock."""
    applied_now: list[str] = []
    lock_key = zlib.crc32(f"orderflow-migrate-{schema}".encode())
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch(f'SELECT name FROM "{schema}".schema_migrations')}
        for folder in folders:
            for path in _files(folder):
                name = f"{folder.parent.name}/{path.name}"
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
                    await conn.execute(path.read_text())
                    await conn.execute(f'INSERT INTO "{schema}".schema_migrations (name) VALUES ($1)', name)
                applied_now.append(name)
                log.info("migration %s applied to schema %s", name, schema)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied_now


async def migrate_service(database_url: str, service: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return await migrate(conn, service, [RUNTIME_MIGRATIONS, service_migrations(service)])
    finally:
        await conn.close()


async def migrate_all(database_url: str) -> dict[str, list[str]]:
    from orderflow.services import discover

    return {spec.name: await migrate_service(database_url, spec.name) for spec in discover()}


async def first_time(conn: asyncpg.Connection, event_id: uuid.UUID, topic: str) -> bool:
    """Record that this event is being applied; False when it already was (a duplicate or a replay)."""
    row = await conn.fetchrow(
        "INSERT INTO processed_events (event_id, topic) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1",
        event_id,
        topic,
    )
    return row is not None


async def first_times(conn: asyncpg.Connection, event_ids: list[uuid.UUID], topic: str) -> set[uuid.UUID]:
    """Set-based `first_time` for a batch: returns the ids that were new."""
    rows = await conn.fetch(
        "INSERT INTO processed_events (event_id, topic) SELECT unnest($1::uuid[]), $2 "
        "ON CONFLICT DO NOTHING RETURNING event_id",
        list(dict.fromkeys(event_ids)),
        topic,
    )
    return {r["event_id"] for r in rows}
