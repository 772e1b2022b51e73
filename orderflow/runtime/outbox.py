"""The transactional outbox relay: rows staged inside a service's transaction are published in order.

One relay publishes at a time per service (a PostgreSQL advisory lock), so per-key order holds even with
several workers. A crash after sending and before marking re-sends rows; every emitted event carries a
deterministic event_id, so consumers drop the repeat.

No row can stall the others. Each send's failure is classified (`send_errors.classify`):
- permanent (too large for its topic or for the producer, topic missing or invalid, writing to it denied): the row is
  *parked* (`parked_at`, `parked_reason`), logged, counted in `orderflow_outbox_parked`, listed by
  `orderflow outbox list SERVICE`; the rows after it go on, in order. `orderflow outbox retry SERVICE` clears the
  mark after a fix. A parked row gives up its place: later rows of the same key are published before it.
- transient (broker away, timeouts, a leader moving, the producer's own settings): nothing is parked; the rows the
  broker acknowledged are marked, and the relay sends the rest again, in order, after a capped backoff.

A row is parked only on evidence about that row: an error raised while queueing it (the producer checks its size
and the topic's metadata there, for this message alone), or a broker rejection that repeats when it is sent alone
(a broker rejects a whole record batch, which may hold several rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg
from aiokafka import errors as ke

from contracts import Event, encode, spec_for
from orderflow.runtime.send_errors import classify

if TYPE_CHECKING:
    from orderflow.settings import Settings

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[object]]]
"""send(topic, key, value) queues a message and returns an awaitable that resolves once the broker has it."""

TopicExists = Callable[[str], Awaitable[bool | None]]
"""topic_exists(topic): True, False, or None when the broker cannot tell (it is away)."""

QUEUE = "queue"
DELIVERY = "delivery"

PARKED_RECOUNT_SECONDS = 10.0
MISSING_TOPIC_TTL = 60.0
"""Without a `topic_exists` check, a topic the producer found missing is taken as missing for this long (its rows
are parked at once instead of each waiting for the producer's own metadata timeout)."""

_staged = 0
"""Rows this process has staged so far: the runtime wakes the relay after a batch only when this grew, so a batch
that emitted nothing costs no relay round (the relay still polls every `idle_poll` seconds, and retries after
`busy_retry` seconds when another worker's relay held the lock, so the rows this one was woken for are not left
waiting for the long poll)."""

_relays: weakref.WeakSet[OutboxRelay] = weakref.WeakSet()


def staged_so_far() -> int:
    return _staged


def parked_rows() -> int:
    """Rows parked in the outbox of this process's service (as last counted by its relay): the metric's value."""
    return sum(relay.parked for relay in list(_relays))


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


# --- the decision for one round: pure ----------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    error: BaseException | None
    stage: str = DELIVERY
    """QUEUE: failed before the producer took it (about this row alone); DELIVERY: the broker's answer."""


@dataclass(frozen=True)
class RoundPlan:
    published: list[int] = field(default_factory=list)
    parked: list[tuple[int, str]] = field(default_factory=list)
    confirm_alone: int | None = None
    """A row the broker rejected for good within a batch: send it alone before judging it."""
    retry: str | None = None
    """A transient failure: back off, then send again from the first row not published."""


def plan_round(ids: Sequence[int], attempts: Mapping[int, Attempt], *, alone: bool = False) -> RoundPlan:
    """What to mark after sending `ids` (in order); ids without an attempt were not sent (queueing stopped)."""
    published = [i for i in ids if i in attempts and attempts[i].error is None]
    parked: list[tuple[int, str]] = []
    for i in ids:
        attempt = attempts.get(i)
        if attempt is None or attempt.error is None:
            continue
        failure = classify(attempt.error, at_delivery=attempt.stage == DELIVERY)
        if failure.transient:
            return RoundPlan(published, parked, retry=failure.reason)
        if attempt.stage == QUEUE or alone:
            parked.append((i, failure.reason))
            continue
        return RoundPlan(published, parked, confirm_alone=i)
    return RoundPlan(published, parked)


def backoff(failures: int, *, first: float = 0.2, cap: float = 10.0) -> float:
    return min(cap, first * 2 ** max(0, failures - 1))


class RelayRetry(Exception):
    """A transient send failure: what was acknowledged is marked; the rest is sent again after a backoff."""


# --- the relay -------------------------------------------------------------------------------------------


class OutboxRelay:
    def __init__(self, pool_factory: Callable[[], Awaitable[asyncpg.Pool]], schema: str, send: Send,
                 *, batch: int = 500, idle_poll: float = 5.0, busy_retry: float = 0.25,
                 on_published: Callable[[int], None] | None = None, on_parked: Callable[[int], None] | None = None,
                 on_round: Callable[[], None] | None = None,
                 topic_exists: TopicExists | None = None,
                 metadata_wait: float = 30.0, max_backoff: float = 10.0):
        """`topic_exists` bounds the wait for a topic's metadata: a row not queued within `metadata_wait` seconds
        whose topic the check finds missing is parked. Without it the producer's own timeout bounds that wait
        (`request_timeout_ms`; faust's default is 20 minutes).

        `idle_poll` is long: every commit that stages rows wakes the relay, so the poll only picks up what no wake
        announced (rows released by `orderflow outbox retry`, rows of a relay that stopped). A round that found the
        advisory lock held by another worker's relay is tried again after `busy_retry` seconds instead."""
        self._pool_factory = pool_factory
        self._schema = schema
        self._lock_key = zlib.crc32(f"orderflow-outbox-{schema}".encode())
        self._send = send
        self._batch = batch
        self._idle_poll = idle_poll
        self._busy_retry = busy_retry
        self._on_round = on_round or (lambda: None)  # a round that published or parked rows
        self._lock_busy = False
        self._wake = asyncio.Event()
        self._on_published = on_published or (lambda n: None)
        self._on_parked = on_parked or (lambda n: None)
        self._topic_exists = topic_exists
        self._metadata_wait = metadata_wait
        self._max_backoff = max_backoff
        self._solo: int | None = None
        self._missing: dict[str, float] = {}  # topic -> when found missing (monotonic)
        self._parked_counted_at = float("-inf")
        self.depth = 0
        self.parked = 0
        self.last_error: str | None = None
        _relays.add(self)

    def wake(self) -> None:
        """Called after a commit that staged rows: publish now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                handled = await self.publish_once()
                failures = 0
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff(failures, cap=self._max_backoff)
                self.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if isinstance(exc, RelayRetry | OSError | asyncpg.PostgresError | asyncpg.InterfaceError):
                    log.warning("outbox relay: %s; retrying in %.1fs", self.last_error, delay)
                else:
                    log.exception("outbox relay failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                continue
            if handled < self._batch and self._solo is None:
                wait = self._busy_retry if self._lock_busy else self._idle_poll
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                self._wake.clear()

    async def publish_once(self) -> int:
        """One round: send the next rows in order, mark what the broker acknowledged, park what it never will.

        Returns the rows published or parked; raises RelayRetry (after marking) on a transient failure."""
        pool = await self._pool_factory()
        if time.monotonic() - self._parked_counted_at > PARKED_RECOUNT_SECONDS:
            await self._count_parked(pool)
        plan = RoundPlan()
        sizes: dict[int, tuple[str, int]] = {}
        async with pool.acquire() as conn, conn.transaction():
            self._lock_busy = not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_key)
            if self._lock_busy:
                return 0
            rows = await conn.fetch(
                "SELECT id, topic, key, value FROM outbox WHERE published_at IS NULL AND parked_at IS NULL "
                "ORDER BY id LIMIT $1",
                self._batch,
            )
            alone = bool(rows) and rows[0]["id"] == self._solo
            self._solo = None
            if alone:
                rows = rows[:1]
            if not rows:
                self.depth = 0
                return 0
            sizes = {r["id"]: (r["topic"], len(r["value"])) for r in rows}
            attempts = await self._send_rows(rows)
            plan = plan_round([r["id"] for r in rows], attempts, alone=alone)
            if plan.published:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                                   plan.published)
            parked = [(i, f"{reason} ({sizes[i][1]} bytes to {sizes[i][0]})") for i, reason in plan.parked]
            if parked:
                await conn.executemany(
                    "UPDATE outbox SET parked_at = now(), parked_reason = $2 WHERE id = $1", parked)
            self._solo = plan.confirm_alone
            self.depth = await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL AND parked_at IS NULL"
            ) if len(rows) == self._batch else 0
        for row_id, reason in parked:
            log.error("outbox row %s parked: %s (orderflow outbox list %s)", row_id, reason, self._schema)
        if plan.published or parked:
            self._on_round()
        if plan.published:
            self._on_published(len(plan.published))
        if parked:
            self._on_parked(len(parked))
            await self._count_parked(pool)
        if plan.confirm_alone is not None:
            log.warning("outbox row %s refused by the broker within a batch; sending it alone", plan.confirm_alone)
        if plan.retry is not None:
            raise RelayRetry(f"send failed ({plan.retry}); {len(plan.published)} of {len(sizes)} rows acknowledged")
        return len(plan.published) + len(parked)

    async def _send_rows(self, rows: Sequence[asyncpg.Record]) -> dict[int, Attempt]:
        """Queue rows in order (stopping at the first transient failure, so nothing overtakes it), then wait for
        the broker's answer to each."""
        attempts: dict[int, Attempt] = {}
        pending: list[tuple[int, Awaitable[object]]] = []
        checked: dict[str, bool | None] = {}
        for row in rows:
            try:
                pending.append((row["id"], await self._queue(row["topic"], bytes(row["key"]), bytes(row["value"]),
                                                             checked)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempts[row["id"]] = Attempt(exc, QUEUE)
                if isinstance(exc, ke.UnknownTopicOrPartitionError):
                    self._missing.setdefault(row["topic"], time.monotonic())
                if classify(exc).transient:
                    break
        results = await asyncio.gather(*(fut for _, fut in pending), return_exceptions=True)
        for (row_id, _), result in zip(pending, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            attempts[row_id] = Attempt(result if isinstance(result, BaseException) else None, DELIVERY)
        return attempts

    async def _queue(self, topic: str, key: bytes, value: bytes, checked: dict[str, bool | None],
                     ) -> Awaitable[object]:
        if topic in self._missing:
            if self._topic_exists is None:
                if time.monotonic() - self._missing[topic] < MISSING_TOPIC_TTL:
                    raise ke.UnknownTopicOrPartitionError(f"topic {topic} does not exist (seen by the producer)")
                del self._missing[topic]
            else:
                if topic not in checked:
                    checked[topic] = await self._check_topic(topic)
                if checked[topic] is False:
                    raise ke.UnknownTopicOrPartitionError(f"topic {topic} does not exist")
                del self._missing[topic]
        if self._topic_exists is None:
            return await self._send(topic, key, value)
        try:
            async with asyncio.timeout(self._metadata_wait):
                return await self._send(topic, key, value)
        except TimeoutError:
            exists = await self._check_topic(topic)
            checked[topic] = exists
            if exists is False:
                self._missing[topic] = time.monotonic()
                raise ke.UnknownTopicOrPartitionError(
                    f"topic {topic} does not exist (no metadata after {self._metadata_wait:g}s)") from None
            raise ke.KafkaTimeoutError(f"not queued within {self._metadata_wait:g}s") from None

    async def _check_topic(self, topic: str) -> bool | None:
        assert self._topic_exists is not None
        try:
            async with asyncio.timeout(max(1.0, self._metadata_wait)):
                return await self._topic_exists(topic)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - cannot tell: the caller treats the failure as transient
            log.info("outbox relay: cannot tell whether topic %s exists: %s", topic, exc)
            return None

    async def _count_parked(self, pool: asyncpg.Pool) -> None:
        self.parked = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND published_at IS NULL")
        self._parked_counted_at = time.monotonic()

    async def prune(self, older_than_hours: int = 24) -> int:
        pool = await self._pool_factory()
        status = await pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(hours => $1)", older_than_hours
        )
        return int(status.split()[-1])


# --- a topic check for `topic_exists` ------------------------------------------------------------------------


class BrokerTopics:
    """`topic_exists` from the broker's metadata, over one admin client opened on first use.

    `client_options` are aiokafka's (bootstrap_servers, security_protocol, sasl_*, ssl_context)."""

    def __init__(self, **client_options: object) -> None:
        self._options = client_options
        self._admin: object | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerTopics:
        """The same broker and security settings as the worker's faust app."""
        return cls(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10000,
                   **settings.kafka_security.client_options())

    async def __call__(self, topic: str) -> bool | None:
        from aiokafka.admin import AIOKafkaAdminClient

        async with self._lock:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**self._options)  # type: ignore[arg-type]
                await admin.start()
                self._admin = admin
            admin = self._admin
        described = await admin.describe_topics([topic])  # type: ignore[attr-defined]
        for info in described:
            if info.get("topic") != topic:
                continue
            code = info.get("error_code", 0)
            if code == ke.UnknownTopicOrPartitionError.errno:
                return False
            if code == 0:
                return bool(info.get("partitions"))
        return None

    async def close(self) -> None:
        if self._admin is not None:
            await self._admin.close()  # type: ignore[attr-defined]
            self._admin = None
