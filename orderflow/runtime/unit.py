"""The unit of work: one PostgreSQL transaction holding a handler's effects, the events it emits and the consumer
positions of the records it applied.

Handlers are plain functions `async def handle(uow, events) -> None`: they read and write through `uow.conn`, emit
events with `uow.emit(...)` (staged in the outbox in the same transaction), refuse an event with
`uow.reject(event, reason)` (dead-lettered before the transaction commits), and ask for work after the commit with
`uow.after_commit(fn)` (metrics, waking a sender). `uow.fresh(events)` drops events already applied under the same
event id, for the topics where a producer may resend one fact at a new offset. Everything else (dedupe by position,
retries, the relay's wake-up) is the runtime's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from contracts import Event
from orderflow.runtime.failures import LostRace

E = TypeVar("E", bound=Event)


class PositionMoved(LostRace):
    """A stored position is not the one this worker read: another worker applied those records meanwhile."""


@dataclass(frozen=True)
class PositionWrite:
    """Move the position of one partition from `expected` (None: no row yet) to `next_offset`."""

    topic: str
    partition: int
    expected: int | None
    next_offset: int


@dataclass
class UnitOfWork:
    conn: asyncpg.Connection
    context: Any = None
    topic: str | None = None
    staged: list[Event] = field(default_factory=list)
    rejected: list[tuple[Event, str]] = field(default_factory=list)
    callbacks: list[Callable[[], object]] = field(default_factory=list)

    def emit(self, events: Iterable[Event]) -> None:
        self.staged.extend(events)

    def reject(self, event: Event, reason: str) -> None:
        """The event honours the contract but cannot be applied (e.g. an unknown SKU): dead-letter it."""
        self.rejected.append((event, reason))

    def after_commit(self, fn: Callable[[], object]) -> None:
        self.callbacks.append(fn)

    async def fresh(self, events: Sequence[E]) -> list[E]:
        """The events not applied before under their (topic, event id), in order; a repeat inside the batch too."""
        if not events:
            return []
        topic = self.topic or "http"
        rows = await self.conn.fetch(
            "INSERT INTO processed_events (topic, event_id) SELECT $1, unnest($2::uuid[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id",
            topic, list(dict.fromkeys(e.event_id for e in events)),
        )
        new = {r["event_id"] for r in rows}
        out: list[E] = []
        for event in events:
            if event.event_id in new:
                new.discard(event.event_id)
                out.append(event)
        return out


async def load_positions(conn: asyncpg.Connection | asyncpg.Pool, group: str, topic: str,
                         partitions: Sequence[int]) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM consumer_positions WHERE consumer = $1 AND topic = $2 "
        "AND partition = ANY($3::int[])", group, topic, list(partitions))
    return {r["partition"]: r["next_offset"] for r in rows}


async def all_positions(conn: asyncpg.Connection | asyncpg.Pool, group: str,
                        topics: Sequence[str]) -> dict[tuple[str, int], int]:
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM consumer_positions "
                            "WHERE consumer = $1 AND topic = ANY($2::text[])", group, list(topics))
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def store_positions(conn: asyncpg.Connection, group: str, writes: Sequence[PositionWrite]) -> None:
    """Optimistic: each row must still hold what this worker read, else PositionMoved rolls everything back."""
    known = [w for w in writes if w.expected is not None]
    new = [w for w in writes if w.expected is None]
    for topic in {w.topic for w in known}:
        mine = [w for w in known if w.topic == topic]
        status = await conn.execute(
            "UPDATE consumer_positions p SET next_offset = v.next, updated_at = now() "
            "FROM unnest($3::int[], $4::bigint[], $5::bigint[]) AS v(part, expected, next) "
            "WHERE p.consumer = $1 AND p.topic = $2 AND p.partition = v.part AND p.next_offset = v.expected",
            group, topic, [w.partition for w in mine], [w.expected for w in mine], [w.next_offset for w in mine])
        if int(status.split()[-1]) != len(mine):
            raise PositionMoved(f"{topic}: a position moved under this worker")
    for topic in {w.topic for w in new}:
        mine = [w for w in new if w.topic == topic]
        status = await conn.execute(
            "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) "
            "SELECT $1, $2, unnest($3::int[]), unnest($4::bigint[]) ON CONFLICT DO NOTHING",
            group, topic, [w.partition for w in mine], [w.next_offset for w in mine])
        if int(status.split()[-1]) != len(mine):
            raise PositionMoved(f"{topic}: another worker stored a first position meanwhile")


async def set_positions(conn: asyncpg.Connection, group: str, positions: dict[tuple[str, int], int]) -> None:
    """Operator's reset (replay, rebuild; workers stopped): these partitions resume exactly there."""
    await conn.executemany(
        "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
        [(group, topic, partition, offset) for (topic, partition), offset in positions.items()])


async def set_goals(conn: asyncpg.Connection, group: str, goals: dict[tuple[str, int], int]) -> None:
    await conn.execute("DELETE FROM catch_up_goals WHERE consumer = $1", group)
    await conn.executemany(
        "INSERT INTO catch_up_goals (consumer, topic, partition, goal) VALUES ($1, $2, $3, $4)",
        [(group, topic, partition, goal) for (topic, partition), goal in goals.items() if goal > 0])


async def goals_pending(conn: asyncpg.Connection | asyncpg.Pool, group: str,
                        topics: Sequence[str] | None = None) -> int:
    """How many partitions (of these topics, or of all) have not reached their catch-up goal; reached goals are
    deleted, so the common case (no replay in progress) costs one indexed read."""
    rows = await conn.fetch(
        "SELECT g.topic, g.partition, g.goal, coalesce(p.next_offset, 0) AS at FROM catch_up_goals g "
        "LEFT JOIN consumer_positions p USING (consumer, topic, partition) "
        "WHERE g.consumer = $1 AND ($2::text[] IS NULL OR g.topic = ANY($2::text[]))",
        group, list(topics) if topics is not None else None)
    reached = [(r["topic"], r["partition"]) for r in rows if r["at"] >= r["goal"]]
    if reached:
        await conn.execute(
            "DELETE FROM catch_up_goals g USING unnest($2::text[], $3::int[]) AS r(topic, partition) "
            "WHERE g.consumer = $1 AND g.topic = r.topic AND g.partition = r.partition",
            group, [t for t, _ in reached], [p for _, p in reached])
    return len(rows) - len(reached)
