"""`orderflow outbox list|retry SERVICE`: the outbox rows a service's relay parked, and sending them again after a fix.

The relay parks a row it can never publish as it is (too large for its topic, topic missing, writing to it denied;
see `orderflow.runtime.outbox`) and goes on with the rows after it. `list` shows each with its reason; once the cause
is fixed (the topic created or its `max.message.bytes` raised, the ACL granted), `retry` clears the mark and the
service's relay sends those rows at its next round. A row that fails again is parked again, with the new reason.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from orderflow.ops.dlq import show_bytes

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]*$")


class OutboxError(Exception):
    """An operator-facing problem (unknown service, database away), one line."""


@dataclass(frozen=True)
class ParkedRow:
    service: str
    id: int
    topic: str
    key: bytes
    size: int
    created_at: datetime
    parked_at: datetime
    reason: str


async def _connect(database_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(database_url, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise OutboxError(f"cannot reach the database: {type(exc).__name__}: {exc}") from None


async def _schemas_with_parking(conn: asyncpg.Connection) -> list[str]:
    """Every schema whose outbox has the parking columns (migration 003 applied)."""
    rows = await conn.fetch(
        "SELECT table_schema FROM information_schema.columns "
        "WHERE table_name = 'outbox' AND column_name = 'parked_at' ORDER BY table_schema")
    return [r["table_schema"] for r in rows]


async def _check_service(conn: asyncpg.Connection, service: str) -> None:
    if not _SCHEMA.match(service):
        raise OutboxError(f"{service!r} is not a service name")
    if service not in await _schemas_with_parking(conn):
        raise OutboxError(f"no outbox with parking in schema {service!r} (unknown service, or its worker has not "
                          "applied its migrations yet: orderflow migrate)")


async def list_parked(database_url: str, service: str | None = None, limit: int | None = None) -> list[ParkedRow]:
    """Parked rows of one service (or of every service), oldest first."""
    conn = await _connect(database_url)
    try:
        if service is not None:
            await _check_service(conn, service)
            schemas = [service]
        else:
            schemas = await _schemas_with_parking(conn)
        found: list[ParkedRow] = []
        for schema in schemas:
            rows = await conn.fetch(
                f'SELECT id, topic, key, length(value) AS size, created_at, parked_at, parked_reason '
                f'FROM "{schema}".outbox WHERE parked_at IS NOT NULL AND published_at IS NULL ORDER BY id LIMIT $1',
                limit)
            found += [ParkedRow(schema, r["id"], r["topic"], bytes(r["key"]), r["size"], r["created_at"],
                                r["parked_at"], r["parked_reason"] or "") for r in rows]
        return found
    finally:
        await conn.close()


async def parked_counts(database_url: str) -> dict[str, int]:
    """{service: rows parked} for every service whose outbox has parking; services with none are left out."""
    conn = await _connect(database_url)
    try:
        counts = {}
        for schema in await _schemas_with_parking(conn):
            n = await conn.fetchval(
                f'SELECT count(*) FROM "{schema}".outbox WHERE parked_at IS NOT NULL AND published_at IS NULL')
            if n:
                counts[schema] = n
        return counts
    finally:
        await conn.close()


async def retry(database_url: str, service: str, ids: Sequence[int] | None = None) -> int:
    """Clear the parking mark of the given rows (all of the service's when `ids` is empty); returns how many."""
    conn = await _connect(database_url)
    try:
        await _check_service(conn, service)
        status = await conn.execute(
            f'UPDATE "{service}".outbox SET parked_at = NULL, parked_reason = NULL '
            "WHERE parked_at IS NOT NULL AND published_at IS NULL AND ($1::bigint[] IS NULL OR id = ANY($1))",
            list(ids) if ids else None)
        return int(status.split()[-1])
    finally:
        await conn.close()


def describe(row: ParkedRow) -> str:
    return "\n".join([
        f"{row.service} outbox #{row.id}  to {row.topic}  {row.size} bytes  staged {row.created_at:%Y-%m-%d %H:%M:%S}"
        f"  parked {row.parked_at:%Y-%m-%d %H:%M:%S}",
        f"  reason: {row.reason}",
        f"  key:    {show_bytes(row.key, 120)}",
    ])


# --- command line ------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction, database_url: Callable[[], str]) -> None:
    p = sub.add_parser("outbox", help="list the outbox rows a service parked, or send them again after a fix")
    actions = p.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    s = actions.add_parser("list", help="show the parked rows of SERVICE (or of every service) with their reason")
    s.add_argument("service", nargs="?", help="default: every service")
    s.add_argument("--limit", type=int, default=None, help="show at most N per service")
    s.set_defaults(func=lambda args: cmd_list(args, database_url()))
    s = actions.add_parser("retry", help="clear the parking mark: the service's relay sends those rows again")
    s.add_argument("service")
    s.add_argument("ids", nargs="*", type=int, metavar="ID", help="only these rows (default: every parked row)")
    s.set_defaults(func=lambda args: cmd_retry(args, database_url()))


def cmd_list(args: argparse.Namespace, database_url: str) -> int:
    try:
        rows = asyncio.run(list_parked(database_url, args.service, args.limit))
    except OutboxError as exc:
        print(f"orderflow outbox list: error: {exc}", file=sys.stderr)
        return 1
    for row in rows:
        print(describe(row))
    print(f"{len(rows)} parked outbox row(s)" + (f" in {args.service}" if args.service else ""))
    return 0


def cmd_retry(args: argparse.Namespace, database_url: str) -> int:
    try:
        n = asyncio.run(retry(database_url, args.service, args.ids))
    except OutboxError as exc:
        print(f"orderflow outbox retry: error: {exc}", file=sys.stderr)
        return 1
    print(f"{n} row(s) of {args.service} released; its relay sends them at its next round")
    return 0
