"""PostgreSQL: one schema per service, plain-SQL migrations applied in order and recorded."""

from __future__ import annotations

import logging
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


async def migrate_auth(conn: asyncpg.Connection) -> list[str]:
    """The shared `auth` schema (per-shop credentials, orderflow/auth/migrations), which every service reads."""
    from orderflow.auth import credentials

    return await migrate(conn, credentials.SCHEMA, [credentials.MIGRATIONS])


async def migrate_service(database_url: str, service: str) -> list[str]:
    """The service's own schema, after the shared `auth` schema (applied by whichever worker starts first)."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrate_auth(conn)
        return await migrate(conn, service, [RUNTIME_MIGRATIONS, service_migrations(service)])
    finally:
        await conn.close()


async def migrate_all(database_url: str) -> dict[str, list[str]]:
    from orderflow.services import discover

    conn = await asyncpg.connect(database_url)
    try:
        applied = {"auth": await migrate_auth(conn)}
    finally:
        await conn.close()
    return {**applied, **{spec.name: await migrate_service(database_url, spec.name) for spec in discover()}}


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(unparseable URL)"


MISCONFIGURED_SQLSTATE_CLASSES = ("28", "3D")  # wrong password or role; database missing


async def misconfiguration(database_url: str, timeout: float = 5.0) -> str | None:
    """One line when DATABASE_URL can never work (bad URL, wrong password, missing database); None when it works or
    when the server is merely unreachable now (the worker then waits for it and reports it on /health)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=timeout)
    except asyncpg.PostgresError as exc:
        code = getattr(exc, "sqlstate", "") or ""
        if code[:2] in MISCONFIGURED_SQLSTATE_CLASSES:
            return f"DATABASE_URL {redact(database_url)}: {str(exc).splitlines()[0]}"
        return None
    except (OSError, TimeoutError, asyncpg.InterfaceError):
        return None
    except (ValueError, TypeError, asyncpg.ClientConfigurationError) as exc:
        return f"DATABASE_URL {redact(database_url)} is not a usable PostgreSQL URL: {exc}"
    await conn.close()
    return None
