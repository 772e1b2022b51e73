"""The transactional outbox relay: rows staged inside a service's transaction are published in order.

One relay publishes at a time per service (a PostgreSQL advisory lock), so per-key order holds even with
several workers. A crash after sending and before marking re-sends rows; every emitted event carries a
deterministic event_id, so consumers drop the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from contracts import Event, encode, spec_for

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[object]]]
"""send(topic, key, value) queues a message and returns an awaitable that resolves once the broker has it."""


_staged = 0
"""Rows this process has staged so far: the runtime wakes the relay after a batch only when this grew, so a batch
that emitted nothing costs no relay round (the relay still polls every `idle_poll` seconds)."""


def staged_so_far() -> int:
    return _staged


async def stage(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Write events to emit, in the caller's transaction."""
    global _staged
    if not events:
        return
    _staged += len(events)
    rows = []
    for event in events:
        spec = spec_for(type(event))
        rows.append((spec.name, spec.key_of(event).encode(), encode(event)))
    await conn.executemany("INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3)", rows)


class OutboxRelay:
    def __init__(self, pool_factory: Callable[[], Awaitable[asyncpg.Pool]], schema: str, send: Send,
                 *, batch: int = 500, idle_poll: float = 0.25, on_published: Callable[[int], None] | None = None):
        self._pool_factory = pool_factory
        self._lock_key = zlib.crc32(f"orderflow-outbox-{schema}".encode())
        self._send = send
        self._batch = batch
        self._idle_poll = idle_poll
        self._wake = asyncio.Event()
        self._on_published = on_published or (lambda n: None)
        self.depth = 0

    def wake(self) -> None:
        """Called after a commit that staged rows: publish now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                sent = await self.publish_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("outbox relay: %s; retrying", exc)
                sent = 0
                await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
                sent = 0
                await asyncio.sleep(1.0)
            if sent < self._batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._idle_poll)
                self._wake.clear()

    async def publish_once(self) -> int:
        pool = await self._pool_factory()
        async with pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key):
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, value FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
                self._batch,
            )
            if not rows:
                self.depth = 0
                return 0
            pending = [await self._send(r["topic"], bytes(r["key"]), bytes(r["value"])) for r in rows]
            await asyncio.gather(*pending)
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
            self.depth = max(0, await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                             - len(rows)) if len(rows) == self._batch else 0
        self._on_published(len(rows))
        return len(rows)

    async def prune(self, older_than_hours: int = 24) -> int:
        pool = await self._pool_factory()
        status = await pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(hours => $1)", older_than_hours
        )
        return int(status.split()[-1])
