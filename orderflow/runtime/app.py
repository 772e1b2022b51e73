"""The runtime every service shares: faust app, PostgreSQL pool, units of work, outbox relay, dead letters, HTTP.

A service builds one `Runtime`, wires its handlers with `consume(topic, handler)`, adds routes, and is done.
Nothing opens a connection at import time: the pool, the relay and the HTTP server start with the worker.

From topic to handler (runtime v2):
1. faust hands out a batch of records; sources are subscribed with `acks=False`, so faust never commits by itself.
2. Each record passes its partition's gate (`positions.py`): below the stored position it is dropped, beyond it the
   partition is sought back. Nothing is decoded before that.
3. Records are decoded; those that break the contract go to their DLQ (the broker acknowledged it before going on).
4. One unit of work (`unit.py`): the handler's effects, the events it emits and the new positions commit together.
5. Failures are classified (`failures.py`): a dependency away pauses the handler with capped backoff and shows on
   `/health`; an event that fails alone, again and again, is dead-lettered and the partition flows on.
6. Committed positions are committed to the broker every second, for lag tooling only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import faust
from faust.types import TP
from mode import Service

from contracts import ContractError, Event, TopicSpec, decode
from orderflow.runtime import current, db, faust_adapter, outbox, stacks
from orderflow.runtime.dlq import DeadLetters, Source
from orderflow.runtime.failures import (
    EVENT_ATTEMPTS,
    Cause,
    NotCaughtUp,
    Redecide,
    backoff,
    classify,
    describe,
    is_race,
)
from orderflow.runtime.http import HttpSurface
from orderflow.runtime.metrics import RuntimeMetrics
from orderflow.runtime.outbox import BrokerTopics, OutboxRelay
from orderflow.runtime.positions import PartitionGate, Verdict, only_forward
from orderflow.runtime.probe import OffsetProbe
from orderflow.runtime.unit import (
    PositionMoved,
    PositionWrite,
    UnitOfWork,
    all_positions,
    goals_pending,
    load_positions,
    store_positions,
)
from orderflow.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=Event)

Handler = Callable[[UnitOfWork, list[Any]], Awaitable[None]]
"""`async def handle(uow, events)`: a plain module-level function (see `unit.py`)."""

COMMIT_SECONDS = 1.0
LAG_SECONDS = 2.0
STALL_SECONDS = 6.0
"""A partition whose records wait this long with no progress is read again from its position (`_unstall`)."""
NOTE_SECONDS = 30.0
"""`_note`: a reason a safeguard could not act is logged at most this often."""
READY_GRACE_SECONDS = 30.0
"""A rebalance, or a handler pausing for a lock race, shorter than this keeps the worker ready (/health/ready): a
routine rebalance takes a few seconds and routing traffic away for it helps nobody. A dependency that is down (the
database check fails) makes it not ready at once."""
DRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class Record:
    """One record as faust handed it out: where it is, and its raw key and value."""

    tp: Any
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # the record's timestamp (as its producer set it, by default)

    @property
    def source(self) -> Source:
        return Source(self.tp.topic, self.tp.partition, self.offset, self.key, self.value)


class EventFailed(Exception):
    """A handler failed for a cause that lies in the events (not a dependency): split the batch, find the one."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


def make_faust_app(settings: Settings) -> faust.App:
    sec = settings.kafka_security
    credentials = None
    ssl_context = None
    if sec.protocol in {"SSL", "SASL_SSL"}:
        ssl_context = ssl.create_default_context(cafile=sec.ssl_cafile)
    if sec.protocol.startswith("SASL"):
        credentials = faust.SASLCredentials(
            username=sec.sasl_username, password=sec.sasl_password, ssl_context=ssl_context,
            mechanism=sec.sasl_mechanism,
        )
    elif ssl_context is not None:
        credentials = faust.SSLCredentials(ssl_context)
    return faust_adapter.App(  # acks=all and idempotence for every send (see faust_adapter.IdempotentProducer)
        settings.app_id,
        broker=[f"kafka://{s}" for s in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=credentials,
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger_ms=5,  # fuller produce requests (a syscall is dear here) for 5 ms on a hop
        # A dead letter may carry a source message of up to 2 MiB plus its headers (DLQ topics take 2 MiB + 64 KiB).
        producer_max_request_size=2 * 1024 * 1024 + 64 * 1024,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 * 1024 * 1024,
        # A SIGKILLed worker holds its partitions until its session expires: 10 s, not faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        stream_recovery_delay=0.0,
        stream_wait_empty=False,
        table_standby_replicas=0,
    )


class Runtime(Service):
    """Owns the long-lived resources of one worker and the plumbing between topic and handler."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self.service = settings.service
        self.group = settings.app_id
        self.app = make_faust_app(settings)
        self.metrics = RuntimeMetrics(settings.service)
        self.context: Any = None  # what a service's handlers find as `uow.context` (its metrics, its settings)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._assigned_once = False
        self._gates: dict[Any, PartitionGate] = {}
        self._unsent: dict[Any, int] = {}  # positions committed in PostgreSQL, not yet on the broker
        self._broker_at: dict[Any, int] = {}  # what this worker last committed to the broker, per partition it holds
        self._idle_positions: dict[Any, int | None] = {}  # stored positions of assigned partitions not read yet
        self._stalls: dict[Any, tuple[int, float]] = {}  # partition with records waiting -> (position, since)
        self._in_hand = 0  # batches handed to an agent and not yet applied (see `_unstall`)
        self._consumed: set[str] = set()
        self._refusals_wait_for: dict[str, tuple[str, ...]] = {}  # topic -> topics its refusals depend on (consume)
        self._refusals_verified: dict[str, int] = {}  # topic -> record time (ms) up to which those are known applied
        self._partition_counts: dict[str, int] = {}
        self._settled: set[tuple[str, ...] | None] = set()  # topics with no replay goal left (then trusted)
        self._waiting: dict[str, str] = {}  # what is waiting on a dependency -> the last error
        self._waiting_since: dict[str, float] = {}
        self._down: set[str] = set()  # waiting because a dependency is away (not a lock race): not ready at once
        self._rebalancing_since: float | None = None
        self._noted: dict[str, float] = {}  # `_note`: when each reason was last logged
        self._settled_once = False  # a first rebalance completed (then a rebalance has READY_GRACE_SECONDS)
        self._health_checks: list[Callable[[], Awaitable[dict[str, Any]]]] = []
        self._background: list[Callable[[], Awaitable[None]]] = []
        self._drains: list[Callable[[], None]] = []
        self._running: list[asyncio.Future] = []
        self._inputs_clock: current.InputsClock | None = None  # only for a service that asks (`inputs_horizon`)
        self._admin: Any = None  # an admin client, opened by the inputs' probe only
        self._probe: OffsetProbe | None = None  # reads the log where a partition's records jumped (probe.py)
        self.http = HttpSurface(settings.http_port, settings.backoffice_token, self.health, self.render_metrics)
        self.http.title = f"orderflow {settings.service}"
        self.dlq = DeadLetters(settings.service, self._send_with_headers,
                               lambda topic, kind: self.metrics.dead_letters.labels(topic, kind).inc())
        self.outbox = OutboxRelay(self.pool, settings.service, self._send_soon,
                                  on_published=self.metrics.outbox_published.inc,
                                  on_round=self.metrics.outbox_rounds.inc,
                                  topic_exists=BrokerTopics.from_settings(settings))
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self.app.on_partitions_revoked.connect(self._on_revoked)
        super().__init__(**kwargs)

    # --- resources ------------------------------------------------------------------------------------------

    async def pool(self) -> asyncpg.Pool:
        """The PostgreSQL pool, created (and the schema migrated) on first use."""
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    await db.migrate_service(self.settings.database_url, self.service)
                    self._pool = await db.connect_pool(self.settings.database_url, self.service)
        return self._pool

    async def _send_soon(self, topic: str, key: bytes, value: bytes) -> Awaitable[object]:
        return await self.app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)

    async def _send_with_headers(self, topic: str, key: bytes | None, value: bytes | None,
                                 headers: list[tuple[str, bytes]]) -> None:
        await self.app.producer.send_and_wait(topic, key, value, partition=None, timestamp=None, headers=headers)

    def background(self, fn: Callable[[], Awaitable[None]], *,
                   drain: Callable[[], None] | None = None) -> Callable[[], Awaitable[None]]:
        """Register a coroutine that runs for the worker's life (e.g. an SMTP sender, a scanner).

        `drain`: asks it to finish what it has in flight and return; a stop calls it and waits (DRAIN_SECONDS at
        most) before the pool closes, so a mail the SMTP server accepted is recorded, not sent again by another
        worker after its lease ran out."""
        self._background.append(fn)
        if drain is not None:
            self._drains.append(drain)
        return fn

    def health_check(self, fn: Callable[[], Awaitable[dict[str, Any]]]) -> Callable[[], Awaitable[dict[str, Any]]]:
        self._health_checks.append(fn)
        return fn

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        stacks.install(asyncio.get_running_loop())
        await self.http.start()
        self.add_future(self.outbox.run())
        self.add_future(self._prune_outbox())
        self.add_future(self._commit_positions_to_broker())
        self.add_future(self._seek_watchdog())
        self.add_future(self._track_lag())
        if self._inputs_clock is not None:
            self.add_future(self._probe_inputs(self._inputs_clock))
        for fn in self._background:
            self._running.append(self.add_future(self._keep_running(fn)))

    async def _keep_running(self, fn: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while not self.should_stop:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a background task is restarted, with backoff, never lost
                attempt += 1
                log.warning("background task %s failed (%s); restarting it", fn.__name__, describe(exc))
                await asyncio.sleep(backoff(attempt))

    async def _prune_outbox(self) -> None:
        """Published outbox rows are kept a day for inspection, then deleted, hourly."""
        while not self.should_stop:
            try:
                await self.outbox.prune(older_than_hours=24)
            except Exception as exc:  # noqa: BLE001 - pruning is housekeeping: skipped, tried in an hour
                log.warning("outbox prune skipped: %s", describe(exc))
            await self.sleep(3600)

    async def on_stop(self) -> None:
        await self.http.stop()
        if self._drains:
            for drain in self._drains:
                drain()
            done, pending = await asyncio.wait(self._running, timeout=DRAIN_SECONDS)
            if pending:
                log.warning("%d background task(s) still busy after %.0f s; stopping anyway", len(pending),
                            DRAIN_SECONDS)
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
        if self._probe is not None:
            with contextlib.suppress(Exception):
                await self._probe.close()
        if self._pool is not None:
            await self._pool.close()

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        """Positions are read again from PostgreSQL on the next record of each assigned partition."""
        self._assigned_once = True
        self._rebalancing_since = None
        for tp in assigned:
            self._gates.pop(tp, None)
            self._idle_positions.pop(tp, None)
            self._broker_at.pop(tp, None)

    async def _on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        if self._rebalancing_since is None:
            self._rebalancing_since = time.monotonic()
        for tp in revoked:
            self._stalls.pop(tp, None)
            self._gates.pop(tp, None)
            self._unsent.pop(tp, None)
            self._idle_positions.pop(tp, None)
            self._broker_at.pop(tp, None)
            with contextlib.suppress(KeyError):  # never measured
                self.metrics.consumer_lag.remove(self.group, tp.topic, str(tp.partition))

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"service": self.service}
        try:
            pool = await asyncio.wait_for(self.pool(), timeout=2)
            await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout=2)
            report["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported as one line
            report["database"] = f"error: {describe(exc)}"
        now = time.monotonic()
        report["consumer"] = self._consumer_state(now)
        if self._waiting:
            report["paused"] = dict(self._waiting)
        for check in self._health_checks:
            report.update(await check())
        stuck = [what for what, since in self._waiting_since.items() if now - since >= READY_GRACE_SECONDS]
        report["ready"] = (report["database"] == "ok" and report["consumer"] in {"assigned", "rebalancing"}
                           and not stuck and not self._down
                           and all(v in {"ok", "assigned"} for k, v in report.items() if k.endswith("_check")))
        return report

    def _consumer_state(self, now: float) -> str:
        """assigned; rebalancing (for less than READY_GRACE_SECONDS: still ready); waiting (not ready).

        A starting worker is waiting until its first rebalance has completed (as `orderflow up` and the tests expect
        of a worker they wait for); the grace is for the rebalances after that."""
        if not self._assigned_once:
            return "waiting"  # starting: no partition yet
        if not self.app.rebalancing:
            self._rebalancing_since = None
            self._settled_once = True
            return "assigned"
        if not self._settled_once:
            return "waiting"
        if self._rebalancing_since is None:
            self._rebalancing_since = now
        return "rebalancing" if now - self._rebalancing_since < READY_GRACE_SECONDS else "waiting"

    def render_metrics(self) -> bytes:
        self.metrics.outbox_depth.set(self.outbox.depth)
        return self.metrics.render()

    # --- units of work --------------------------------------------------------------------------------------

    async def run_unit(self, work: Callable[[UnitOfWork], Awaitable[T]], *, topic: str | None = None,
                       wait_for_dependencies: bool = True, attempts: int = 3) -> T:
        """Run `work` in one transaction, then stage its events, wake the relay and run its after-commit callbacks.

        A dependency failure (database away, lock race, deadlock) runs it again with capped backoff: for as long
        as it takes on a stream (`wait_for_dependencies`), `attempts` times for an HTTP request (then it raises and
        the request gets a 503). Anything else raises at once: the caller decides whose fault it is.
        """
        attempt = 0
        while True:
            attempt += 1
            staged_before = outbox.staged_so_far()  # repositories may stage through `outbox.stage` themselves
            try:
                pool = await self.pool()
                async with pool.acquire() as conn, conn.transaction():
                    uow = UnitOfWork(conn, self.context, topic)
                    result = await work(uow)
                    if uow.staged:
                        await outbox.stage(conn, uow.staged)
            except (asyncio.CancelledError, PositionMoved):
                raise
            except Redecide:
                continue  # rolled back; once, at once: what it waited for is now known
            except Exception as exc:
                if classify(exc) is Cause.EVENT or (not wait_for_dependencies and attempt >= attempts):
                    raise
                self._pause(topic or "http", exc, attempt)
                await asyncio.sleep(backoff(attempt))
                continue
            self._resume(topic or "http")
            if outbox.staged_so_far() != staged_before:
                self.outbox.wake()
            for fn in uow.callbacks:
                if inspect.isawaitable(done := fn()):
                    await done
            return result

    def _pause(self, what: str, exc: BaseException, attempt: int) -> None:
        self._waiting[what] = describe(exc)
        self._waiting_since.setdefault(what, time.monotonic())
        if is_race(exc):
            self._down.discard(what)
        else:
            self._down.add(what)
        self.metrics.retries.labels(what).inc()
        self.metrics.paused.labels(what).set(1)
        log.log(logging.WARNING if attempt in (1, 5) or attempt % 20 == 0 else logging.DEBUG,
                "%s: waiting for a dependency (attempt %d): %s", what, attempt, describe(exc))

    def _resume(self, what: str) -> None:
        self._waiting_since.pop(what, None)
        self._down.discard(what)
        if self._waiting.pop(what, None) is not None:
            self.metrics.paused.labels(what).set(0)
            log.info("%s: dependency back; going on", what)

    async def _until_done(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` until it succeeds, waiting with backoff on dependency failures (anything else raises)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if classify(exc) is Cause.EVENT:
                    raise
                self._pause(what, exc, attempt)
                await asyncio.sleep(backoff(attempt))
                continue
            self._resume(what)
            return result

    # --- consuming ------------------------------------------------------------------------------------------

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        """A source topic as faust subscribes it: acks off, so faust never commits an offset by itself."""
        return self.app.topic(spec.name, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=self.settings.topic_partitions, acks=False)

    def consume(self, spec: TopicSpec, handler: Handler, *, batch: int = 1,
                after: Sequence[TopicSpec] = (), refusals_wait_for: Sequence[TopicSpec] = ()) -> Handler:
        """Feed `handler(uow, events)` the valid events of each batch, in offset order per partition.

        `after`: topics whose replay must be caught up before this one is applied (see `caught_up`).
        `refusals_wait_for`: topics a refusal (`uow.reject`) depends on; it is final only once they are applied up
        to the refused record's time (`_refusal_is_final`), else the unit is tried again shortly.
        """
        if spec.name in self._consumed:
            raise ValueError(f"{spec.name} is consumed twice by {self.service}: positions are per (group, topic)")
        self._consumed.add(spec.name)
        if refusals_wait_for:
            self._refusals_wait_for[spec.name] = tuple(t.name for t in refusals_wait_for)

        first = tuple(t.name for t in after)

        async def agent(stream: faust.StreamT) -> None:
            async for events in natural_batches(stream, batch):
                records = [Record(e.message.tp, e.message.offset, e.key, e.value, _millis(e.message.timestamp))
                           for e in events]
                self._in_hand += 1
                try:
                    if first:
                        await self.wait_caught_up(first, spec.name)
                    await self._consume(spec, handler, records)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - a runtime bug: never let faust skip; the positions re-read
                    log.exception("%s: batch not applied; its partitions are read again from their positions",
                                  spec.name)
                    for tp in {r.tp for r in records}:
                        self._gates.pop(tp, None)
                    await asyncio.sleep(1.0)
                finally:
                    self._in_hand -= 1

        agent.__name__ = handler.__name__
        self.app.agent(self.topic(spec), name=f"{self.service}.{handler.__name__}")(agent)
        return handler

    async def _consume(self, spec: TopicSpec, handler: Handler, records: Sequence[Record]) -> None:
        await self._load_gates(spec.name, {r.tp for r in records})
        start = {tp: self._gates[tp].position for tp in {r.tp for r in records}}
        now = time.monotonic()
        admitted: list[Record] = []
        seeks: dict[Any, int] = {}
        for record in records:
            gate = self._gates[record.tp]
            verdict = gate.admit(record.offset, now)
            if verdict is Verdict.ASK:
                wanted = gate.next_wanted()
                first = await self._first_in_log(record.tp, wanted) if wanted is not None else None
                verdict = gate.resolve(record.offset, first, time.monotonic())
                if first is not None and wanted is not None and first > wanted:
                    log.warning("%s[%s]: offsets %s to %s are not in the log (retention or transaction markers); "
                                "reading on from %s", record.tp.topic, record.tp.partition, wanted, first - 1, first)
            if verdict is Verdict.APPLY:
                admitted.append(record)
            elif verdict is Verdict.SEEK:
                seeks[record.tp] = gate.next_wanted()
            elif verdict is Verdict.DROP:
                self.metrics.redelivered.labels(spec.name).inc()
                if gate.position is not None:  # the broker was behind PostgreSQL (a replay without positions)
                    self._unsent.setdefault(record.tp, gate.position)
        for tp, offset in seeks.items():
            log.info("%s[%s]: records before %s did not come; reading again from %s", tp.topic, tp.partition,
                     gate_jump(self._gates[tp]), offset)
            await self._seek(tp, offset)
        if admitted:
            self.metrics.events_in.labels(spec.name).inc(len(admitted))
            await self._apply(spec, handler, admitted, start)

    async def _load_gates(self, topic: str, tps: set[Any]) -> None:
        missing = [tp for tp in tps if tp not in self._gates]
        if not missing:
            return

        async def load() -> dict[int, int]:
            return await load_positions(await self.pool(), self.group, topic, [tp.partition for tp in missing])

        stored = await self._until_done(topic, load)
        unknown = [tp for tp in missing if tp.partition not in stored]
        starts = await self._until_done(topic, lambda: self._start_offsets(unknown)) if unknown else {}
        for tp in missing:
            self._gates[tp] = PartitionGate(stored.get(tp.partition), start=starts.get((tp.topic, tp.partition)))

    async def _first_in_log(self, tp: Any, offset: int) -> int | None:
        """The first offset at or after `offset` in the log itself (`probe.py`); None if the broker did not say."""
        if self._probe is None:
            self._probe = OffsetProbe(self._client_options())
        try:
            return await self._probe.first_at_or_after(tp.topic, tp.partition, offset)
        except Exception as exc:  # noqa: BLE001 - not known: nothing is passed over, the partition is read again
            log.info("%s[%s]: the log not read at %s (%s)", tp.topic, tp.partition, offset, describe(exc))
            return None

    async def _seek(self, tp: Any, offset: int) -> None:
        try:
            await faust_adapter.seek(self.app, tp, offset)
        except Exception as exc:  # noqa: BLE001 - revoked meanwhile: its next owner starts from the position
            log.info("%s[%s]: seek to %s not made (%s)", tp.topic, tp.partition, offset, describe(exc))

    def _decode(self, spec: TopicSpec, record: Record) -> Event | ContractError:
        try:
            return decode(spec.model, record.value)
        except ContractError as exc:
            return exc

    async def _apply(self, spec: TopicSpec, handler: Handler, records: list[Record],
                     start: dict[Any, int | None]) -> None:
        items: list[tuple[Record, Event | None]] = []
        for record in records:  # contract breakers go to their DLQ once, here; their unit only moves the position
            event = self._decode(spec, record)
            if isinstance(event, ContractError):
                await self._dead_letter(record, event.reason, event.kind)
                event = None
            items.append((record, event))
        started = time.perf_counter()
        try:
            await self._unit(spec, handler, items, start)
        except PositionMoved:
            for tp in {r.tp for r in records}:
                self._gates.pop(tp, None)
            await self._consume(spec, handler, records)  # now below the moved positions: dropped
            return
        except EventFailed as failed:
            log.warning("%s: a batch of %d failed (%s); applying its events one by one", spec.name, len(items),
                        failed)
            for tp in {r.tp for r in records}:
                self._gates[tp].rolled_back()
            await self._one_by_one(spec, handler, items, start)
        self.metrics.handler_seconds.labels(spec.name).observe(time.perf_counter() - started)
        self.metrics.batch_size.labels(spec.name).observe(len(records))

    async def _one_by_one(self, spec: TopicSpec, handler: Handler, items: list[tuple[Record, Event | None]],
                          start: dict[Any, int | None]) -> None:
        """Each event its own unit; one that fails alone EVENT_ATTEMPTS times is dead-lettered with the reason."""
        position = dict(start)
        for record, event in items:
            one = {record.tp: position.get(record.tp)}
            for attempt in range(1, EVENT_ATTEMPTS + 1):
                try:
                    await self._unit(spec, handler, [(record, event)], one)
                    break
                except PositionMoved:
                    self._gates.pop(record.tp, None)
                    await self._consume(spec, handler, [record])
                    break
                except EventFailed as failed:
                    if attempt < EVENT_ATTEMPTS:
                        await asyncio.sleep(backoff(attempt))
                        continue
                    log.error("%s[%s]@%s failed %d times alone (%s); dead-lettering it", record.tp.topic,
                              record.tp.partition, record.offset, EVENT_ATTEMPTS, failed)
                    await self._dead_letter(record, f"handler error: {failed}", "handler_error")
                    await self._unit(spec, handler, [(record, None)], one)
            position[record.tp] = record.offset + 1

    async def _unit(self, spec: TopicSpec, handler: Handler, items: list[tuple[Record, Event | None]],
                    start: dict[Any, int | None]) -> None:
        """One transaction: the handler over the events (None: dead-lettered already), the new positions."""
        events = [e for _, e in items if e is not None]
        sources = {id(e): r for r, e in items if e is not None}
        ends: dict[Any, int] = {}
        for record, _ in items:
            ends[record.tp] = max(ends.get(record.tp, 0), record.offset + 1)
        writes = [PositionWrite(tp.topic, tp.partition, start.get(tp), end) for tp, end in ends.items()]

        async def work(uow: UnitOfWork) -> None:
            verified = self._refusals_verified.get(spec.name, -1)  # known before this attempt's reads (see below)
            if events:
                try:
                    await handler(uow, events)
                except Exception as exc:
                    if classify(exc) is Cause.EVENT:
                        raise EventFailed(exc) from exc
                    raise
                if uow.rejected and (depends := self._refusals_wait_for.get(spec.name)):
                    await self._refusal_is_final(uow.conn, spec.name, depends,
                                                 [sources[id(e)] for e, _ in uow.rejected], verified)
                for event, reason in uow.rejected:
                    await self._dead_letter(sources[id(event)], reason, "rejected")
            await store_positions(uow.conn, self.group, writes)

        await self.run_unit(work, topic=spec.name)
        for tp, end in ends.items():
            if (gate := self._gates.get(tp)) is not None:
                gate.committed(end)
            self._unsent[tp] = end
            start[tp] = end

    async def _refusal_is_final(self, conn: asyncpg.Connection, topic: str, depends: Sequence[str],
                                refused: Sequence[Record], verified: int) -> None:
        """Raise unless every record of `depends` written before the refused records was applied, by any worker of
        this service, before the decision read its data. An order for a SKU whose restock sits unread in
        stock.adjusted (a fresh group reading both topics from the start, a stock.adjusted partition behind) is not
        refused but waits: seen in a SIGKILL test whose restock's partition was slow, 585 good orders dead-lettered.

        `verified`: the record time up to which `depends` was known applied when this attempt began. Found applied
        only now, the restock may have been committed after the handler read the stock (seen: 86 orders refused in
        one batch whose check passed), so the unit is decided again at once (`Redecide`), and that attempt's
        refusals are final. NotCaughtUp waits with backoff. A record without a timestamp is not held."""
        timestamp_ms = max(r.timestamp_ms or 0 for r in refused)
        if timestamp_ms <= verified:
            return
        partitions = [(name, p) for name in depends for p in range(await self._partition_count(name))]
        if self._probe is None:
            self._probe = OffsetProbe(self._client_options())
        wanted = await self._probe.offsets_before(partitions, timestamp_ms)
        positions = await all_positions(conn, self.group, depends)
        unread = [TP(name, p) for name, p in partitions if (name, p) not in positions]
        starts = await self._start_offsets(unread) if unread else {}
        late = current.behind(wanted, positions, starts)
        if late:
            raise NotCaughtUp("a refusal waits until " + ", ".join(
                f"{name}[{p}] is applied up to {offset} (now {at})"
                for (name, p), (at, offset) in sorted(late.items())))
        self._refusals_verified[topic] = max(self._refusals_verified.get(topic, -1), timestamp_ms)
        raise Redecide(f"{', '.join(depends)} found applied up to the refused records: deciding again")

    async def _partition_count(self, topic: str) -> int:
        if topic not in await self._learn_partition_counts([topic]):
            raise NotCaughtUp(f"{topic}: its partitions are not known yet")
        return self._partition_counts[topic]

    async def _learn_partition_counts(self, topics: Sequence[str]) -> dict[str, int]:
        """Partitions per topic, asked of the broker once per topic (a topic not created yet is asked again)."""
        missing = sorted(set(topics) - self._partition_counts.keys())
        if missing:
            for info in await (await self._admin_client()).describe_topics(missing):
                if not info.get("error_code") and info.get("partitions"):
                    self._partition_counts[info["topic"]] = len(info["partitions"])
        return self._partition_counts

    async def _dead_letter(self, record: Record, reason: str, kind: str) -> None:
        await self._until_done(f"{record.tp.topic}.dlq", lambda: self.dlq.send(record.source, reason, kind))

    async def caught_up(self, topics: Sequence[str] | None = None) -> bool:
        """False while a replay or rebuild of these topics (all, by default) has not reached its goals."""
        key = tuple(topics) if topics is not None else None
        if key in self._settled:
            return True

        async def pending() -> int:
            return await goals_pending(await self.pool(), self.group, topics)

        left = await self._until_done("catch-up goals", pending)
        if not left:
            self._settled.add(key)  # goals are only written while this service's workers are stopped
        return not left

    async def wait_caught_up(self, topics: Sequence[str] | None, waiter: str) -> None:
        logged = False
        while not await self.caught_up(topics):
            if not logged:
                log.info("%s waits until the replay of %s has caught up", waiter, ", ".join(topics or ["its input"]))
                logged = True
            await asyncio.sleep(0.5)

    def track_inputs(self) -> None:
        """Keep `inputs_horizon` (orderflow/runtime/current.py): one ListOffsets request and one positions query a
        second, so only services whose decisions need it ask for it."""
        self._inputs_clock = current.InputsClock()

    def inputs_horizon(self, age: float = 0.0) -> float | None:
        """The wall time (epoch seconds) before which every record of every input partition is known applied, by
        any worker of this service; None until known. Decisions made on the clock use this instead of now.
        `age`: the horizon as it was that many seconds ago (see `InputsClock.horizon_as_of`)."""
        if self._inputs_clock is None:
            return None
        if age:
            return self._inputs_clock.horizon_as_of(time.time() - age)
        return self._inputs_clock.horizon

    async def _probe_inputs(self, clock: current.InputsClock) -> None:
        starts: dict[current.Partition, int] = {}  # where reading starts on partitions with no stored position
        while not self.should_stop:
            await self.sleep(current.PROBE_SECONDS)
            started = time.time()
            try:
                tps = await self._input_partitions()
                if tps and clock.wants_probe(started):
                    ends = await self.app.consumer.highwaters(*tps)
                    clock.probed(current.Probe(started, {(tp.topic, tp.partition): e for tp, e in ends.items()}),
                                 time.time())
            except Exception as exc:  # noqa: BLE001 - the broker is away or slow: the horizon waits for it
                clock.failed(time.time())
                log.debug("end offsets of the inputs not read: %s", describe(exc))
                continue
            if clock.pending is None:
                self._report_horizon(clock)
                continue
            try:
                positions = await all_positions(await self.pool(), self.group, sorted(self._consumed))
                unread = [tp for tp in tps if (tp.topic, tp.partition) not in positions
                          and (tp.topic, tp.partition) not in starts]
                if unread:  # read once: a partition with no position keeps its start until a record is applied
                    starts.update(await self._start_offsets(unread))
                before = clock.horizon
                if clock.check(positions, starts, time.time()) and (before is None or clock.horizon - before > 30):
                    log.info("inputs known applied up to %.1f s ago (before: %s); decisions on the clock go on",
                             time.time() - clock.horizon,
                             "not known" if before is None else f"{time.time() - before:.0f} s ago")
            except Exception as exc:  # noqa: BLE001 - checked again next second
                log.debug("inputs' positions not checked: %s", describe(exc))
            self._report_horizon(clock)

    def _client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments of the runtime's own clients (the admin client, the offset probe)."""
        return {"bootstrap_servers": self.settings.kafka_bootstrap_servers, "request_timeout_ms": 10000,
                **self.settings.kafka_security.client_options()}

    async def _admin_client(self) -> Any:
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._client_options())
            await admin.start()
            self._admin = admin
        return self._admin

    async def _start_offsets(self, tps: list[Any]) -> dict[current.Partition, int]:
        """Where this group starts on partitions with no stored position, as faust does: the broker's committed
        offset (a group started at the topics' ends, or positions committed before a replay), else the earliest.
        Neither moves before the partition's first record is applied, which stores a position. The gates start
        there too (`positions.py`): the first record that comes is not proof that none came before it."""
        from aiokafka.structs import TopicPartition

        committed = await (await self._admin_client()).list_consumer_group_offsets(
            self.group, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps])
        found = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items() if meta.offset >= 0}
        rest = [tp for tp in tps if (tp.topic, tp.partition) not in found]
        earliest = await self.app.consumer.earliest_offsets(*rest) if rest else {}
        return {**found, **{(tp.topic, tp.partition): offset for tp, offset in earliest.items()}}

    async def _input_partitions(self) -> list[Any]:
        """Every partition of every input topic."""
        known = await self._learn_partition_counts(sorted(self._consumed))
        if self._consumed - known.keys():
            return []  # a topic not known yet: no probe can cover every partition
        return [TP(topic, p) for topic in sorted(self._consumed) for p in range(known[topic])]

    def _report_horizon(self, clock: current.InputsClock) -> None:
        behind = clock.behind(time.time())
        if behind is not None:
            self.metrics.inputs_behind.set(behind)

    # --- housekeeping ---------------------------------------------------------------------------------------

    async def _commit_positions_to_broker(self) -> None:
        """The broker's committed offsets follow PostgreSQL's positions (lag tools read them); never lead them."""
        while not self.should_stop:
            await self.sleep(COMMIT_SECONDS)
            if not self._unsent or self.app.rebalancing:
                continue
            offsets, self._unsent = self._unsent, {}
            offsets = only_forward(offsets, self._broker_at)
            if not offsets:
                continue
            try:
                if await faust_adapter.commit(self.app, offsets):
                    self._broker_at.update(offsets)
                else:
                    log.debug("positions not committed to the broker (rebalancing)")
                    assigned = self.app.consumer.assignment()
                    for tp, offset in offsets.items():  # kept for the next try while this worker holds them
                        if tp in assigned:
                            self._unsent.setdefault(tp, offset)
            except Exception as exc:  # noqa: BLE001 - only lag figures depend on it; tried again next second
                log.info("positions not committed to the broker: %s", describe(exc))
                for tp, offset in offsets.items():
                    self._unsent.setdefault(tp, offset)

    async def _track_lag(self) -> None:
        """`orderflow_consumer_lag` of every assigned source partition, every LAG_SECONDS; the stall watchdog
        (`_unstall`) runs on its figures, so why it could not run is logged (at most every NOTE_SECONDS): a rebalance
        run once stalled a partition 150 s with no line saying why the watchdog did not act."""
        rebalancing_since: float | None = None
        while not self.should_stop:
            await self.sleep(LAG_SECONDS)
            if self.app.rebalancing:
                rebalancing_since = rebalancing_since or time.monotonic()
                if time.monotonic() - rebalancing_since >= NOTE_SECONDS:
                    self._note("rebalancing", "faust has said it is rebalancing for %.0f s: consumer lag not measured, "
                               "stalled partitions not read again", time.monotonic() - rebalancing_since)
                continue
            rebalancing_since = None
            try:
                await self._measure_lag()
            except Exception as exc:  # noqa: BLE001 - a figure only: measured again next time
                self._note("lag", "consumer lag not measured (stalled partitions not read again): %s", describe(exc))

    def _note(self, key: str, message: str, *args: Any) -> None:
        """An info line about why a safeguard could not act, at most once per NOTE_SECONDS per key."""
        now = time.monotonic()
        if now - self._noted.get(key, -NOTE_SECONDS) >= NOTE_SECONDS:
            self._noted[key] = now
            log.info(message, *args)

    async def _measure_lag(self) -> None:
        tps = [tp for tp in self.app.consumer.assignment() if tp.topic in self._consumed]
        if not tps:
            return
        ends = await self.app.consumer.highwaters(*tps)
        positions = {tp: gate.reached() for tp in tps if (gate := self._gates.get(tp)) is not None}
        unread = [tp for tp in tps if positions.get(tp) is None]
        for topic in {tp.topic for tp in unread if tp not in self._idle_positions}:
            wanted = [tp for tp in unread if tp.topic == topic and tp not in self._idle_positions]
            stored = await load_positions(await self.pool(), self.group, topic, [tp.partition for tp in wanted])
            # nothing stored: where the group starts (the broker's committed offset, else the earliest record)
            never = [tp for tp in wanted if tp.partition not in stored]
            starts = await self._start_offsets(never) if never else {}
            for tp in wanted:  # no record applied by this worker since the assignment
                self._idle_positions[tp] = stored.get(tp.partition, starts.get((tp.topic, tp.partition)))
        self._sync_broker(tps)
        for tp in tps:
            position = positions.get(tp)
            if position is None:
                position = self._idle_positions.get(tp)
            if position is not None and ends.get(tp) is not None:
                self.metrics.consumer_lag.labels(self.group, tp.topic, str(tp.partition)).set(
                    max(0, ends[tp] - position))
                await self._unstall(tp, position, ends[tp])

    def _sync_broker(self, tps: Sequence[Any]) -> None:
        """Each assigned partition's position goes to the broker once this worker holds it (until a commit is queued
        or made: `_unsent`, `_broker_at`): a record applied just before a rebalance may have had its broker commit
        dropped with the revocation, and no later record would carry it (lag tools saw 1 left for ever). Read now,
        with no await before `_unsent`: the gate's position is then the newest this worker committed."""
        for tp in tps:
            if tp in self._broker_at or tp in self._unsent:
                continue
            gate = self._gates.get(tp)
            position = gate.reached() if gate is not None else None
            if position is None:
                position = self._idle_positions.get(tp)
            if position is not None:
                self._unsent[tp] = position

    async def _unstall(self, tp: Any, position: int, end: int) -> None:
        """A partition with records waiting whose position has not moved for STALL_SECONDS is read again from it.

        faust drops records fetched around a rebalance or a seek; when they were the last ones of a partition, no
        later record shows the gap (`positions.py` seeks back on a jump), and the partition stalls until one comes.
        Not while a handler waits for a dependency, which holds positions on purpose."""
        now = time.monotonic()
        if position < end and self._waiting:
            self._note(f"waiting {tp.topic}[{tp.partition}]", "%s[%s]: %d record(s) waiting, not read again while "
                       "%s waits for a dependency", tp.topic, tp.partition, end - position, ", ".join(self._waiting))
        if position >= end or self._waiting:
            self._stalls.pop(tp, None)
            return
        seen = self._stalls.get(tp)
        if seen is None or seen[0] != position:
            self._stalls[tp] = (position, now)
        elif now - seen[1] >= STALL_SECONDS and self._has_records_in_hand():
            self._note(f"behind {tp.topic}[{tp.partition}]", "%s[%s]: %d record(s) waiting, not read again while "
                       "this worker works through what it has fetched", tp.topic, tp.partition, end - position)
        elif now - seen[1] >= STALL_SECONDS:
            log.info("%s[%s]: %d record(s) waiting and none applied for %.0f s; reading again from %s", tp.topic,
                     tp.partition, end - position, now - seen[1], position)
            self._stalls[tp] = (position, now)
            await self._seek(tp, position)

    def _has_records_in_hand(self) -> bool:
        """An agent is applying a batch, or a channel holds records for one: the worker is behind, not stalled.

        faust's fetcher waits while any agent's channel is full, so behind a backlog a partition's position can stand
        still for seconds with its records fetched and on their way. Reading it again then threw those away and
        fetched them once more: in the bench the cart sought back partitions of order.status and inventory.levels
        with ~1,000 records waiting, 6 to 126 times a run. A partition truly stalled (its last records dropped by
        faust around a rebalance or a seek) is read again once the worker has nothing in hand."""
        return self._in_hand > 0 or any(not channel.queue.empty() for channel in self.app.topics)

    async def _seek_watchdog(self) -> None:
        """A seek whose first record never came is made again (faust can drop the records read again)."""
        while not self.should_stop:
            await self.sleep(0.5)
            now = time.monotonic()
            for tp, gate in list(self._gates.items()):
                if (offset := gate.overdue(now)) is not None:
                    log.info("%s[%s]: nothing read since the seek to %s; seeking again", tp.topic, tp.partition,
                             offset)
                    await self._seek(tp, offset)


LINGER_SECONDS = 0.04
"""Under load, how long a batch may wait for more events once the stream's queue ran dry (producers' linger.ms).

Each unit pays BEGIN, the positions' UPDATE and COMMIT round trips (18 % of the cart's samples in a burst profile),
so fewer, fuller units are the cheapest events. `bench/run.py --orders 3000 --rate-seconds 10 --idle-seconds 20`,
two runs each on the same quiet machine: with 40 ms the cart used 40-44 CPU seconds per run against 55-61 with 10 ms,
PostgreSQL 29-33 against 47-51; bursts of 380 and 265 committed orders/s against 239 (rates vary ~40 % between
runs here). A lone event after a quiet spell never waits (see `natural_batches`)."""


async def natural_batches(stream: faust.StreamT, most: int,
                          linger: float = LINGER_SECONDS) -> AsyncIterator[list[faust.EventT]]:
    """The stream's events in batches of what has arrived: up to `most`, and whatever is buffered right now.

    Instead of faust's `take_events(n, within)`, whose loop wakes every `within` seconds on an idle stream (20 to
    50 wake-ups a second per agent, the largest part of an idle worker's CPU) and holds the first event of a quiet
    stream back until `within` runs out: here an idle stream waits on its queue without a timer, and a lone event
    after a quiet spell is handed over at once. Under load (the previous batch held more than one event), a batch
    whose queue ran dry waits up to `linger` from its first event for more: faust's fetcher hands a fetch over a
    few records at a time, and without it a replay or a burst went through in transactions of a few events each
    (the bench's replay: 735 events/s). The first event of a batch comes through the stream (`events()`); the rest
    are taken from its channel at once (`take_buffered`). `enable_acks` is off, as `take_events` does: positions,
    not faust's acks, say what was applied.
    """
    stream.enable_acks = False
    loop = asyncio.get_running_loop()
    busy = False
    async for event in stream.events():
        began = loop.time()
        batch = [event]
        still_open = take_buffered(stream, batch, most)
        if still_open and len(batch) < most:
            # a linger under load (as a producer's linger.ms), else one turn for a fetch being queued
            await asyncio.sleep(max(0.0, began + linger - loop.time()) if busy else 0)
            still_open = take_buffered(stream, batch, most)
        busy = len(batch) > 1
        yield batch
        if not still_open:
            return  # the channel was closed (the worker stops): as faust's stream, the iteration ends


def take_buffered(stream: faust.StreamT, batch: list[faust.EventT], most: int) -> bool:
    """Move the events the stream's channel holds right now into `batch`, up to `most` in all; False once the
    channel was closed (faust throws StopAsyncIteration into it when the worker stops; raised out of an async
    generator it became a RuntimeError that crashed the agent and held the worker's shutdown until it was killed).

    The faster path through faust the speed issue asks for: faust's stream spends an event-loop turn
    (`sleep(0)`), its sensors and a context variable on every event; taken here, an event costs 11-17 us instead
    of 30-36 (20,000 events through `agent.test_context()`, put included). The channel's queue is faust's own
    (`ChannelT.queue`, a ThrowableQueue: an error thrown into it is raised here as in the stream). As faust's
    stream does, an event fetched before the latest rebalance (another generation) or while flow control is off (a
    rebalance under way) is dropped: that partition is read again from its stored position by whoever holds it.
    """
    queue = stream.channel.queue
    app = stream.app
    generation = app.consumer_generation_id
    active = app.flow_control.is_active()
    while len(batch) < most and not queue.empty():
        try:
            event = queue.get_nowait()
        except StopAsyncIteration:
            return False
        if active and event.message.generation_id == generation:
            batch.append(event)
    return True


def _millis(timestamp: float | None) -> int | None:
    """faust's record timestamp (seconds) in milliseconds, as Kafka keeps it."""
    return int(timestamp * 1000) if timestamp is not None and timestamp >= 0 else None


def gate_jump(gate: PartitionGate) -> str:
    return str(gate.jump) if gate.jump is not None else "?"
