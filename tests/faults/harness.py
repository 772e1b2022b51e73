"""The fault suite's machinery, shared by `test_fault_suite.py` and the runtime fault tests of
`tests/integration/test_runtime_*.py`: a stack of real workers (one per service, a fresh consumer group prefix), a
paced simulated load with bad messages and a fault injected a third of the way in, and `settle`, which waits until
the system is at rest and then checks every invariant of `invariants.py` against the simulator's oracle.

Nothing here sleeps to synchronise: every wait polls the database, the sink, the broker or a worker's /health until
a condition or a deadline. The one timed wait, `hold`, *is* a fault's duration (a database down for 30 s), and it
polls every worker's /health meanwhile to record what they reported.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka.errors import KafkaError

from contracts import topics
from contracts.events import CartCustomer, CartItem, CartUpdated
from contracts.producer import StorefrontProducer
from orderflow.ops.replay import GroupOffsets, ReplayTarget, target_for
from orderflow.sim.driver import Pace, drive
from orderflow.sim.scenario import Mix, Scenario
from tests.faults.invariants import (
    DLQ_TOPICS,
    OUTPUT_TOPICS,
    BadMessage,
    Observed,
    check,
    check_dead_letters,
    check_every_input_handled,
    check_outputs,
    observe,
    quiet,
    read_topics,
)
from tests.workers import WorkerProcess, make_worker, worker_env

SERVICES = ("orders", "inventory", "cart", "notify")
SESSIONS = 250
RATE = 40.0
"""Sessions per second: 250 sessions (about 1200 events) take about 6 s to produce; the fault lands at a third."""
FAULT_AT = 0.35
SETTLE_TIMEOUT = 150.0
UNREACHABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, httpx.HTTPError, KafkaError, TimeoutError)


@dataclass
class Run:
    name: str
    scenario: Scenario
    bad: list[BadMessage]
    duplicates_allowed: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    observed: Observed | None = None


@dataclass
class FaultStack:
    bootstrap: str
    database_url: str
    """What the test reads the services' tables with (the workers' own URL is `env["DATABASE_URL"]`)."""
    mailsink: Any
    tmp: Path
    env: dict[str, str]
    targets: dict[str, ReplayTarget]
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    extra: list[WorkerProcess] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)

    @property
    def consumers(self) -> dict[str, set[str]]:
        """topic -> the services consuming it (they each dead-letter a bad message)."""
        out: dict[str, set[str]] = {}
        for service, target in self.targets.items():
            for topic in target.topics:
                out.setdefault(topic, set()).add(service)
        return out

    def live(self) -> list[WorkerProcess]:
        """Every worker started and still running, extra ones included."""
        return [w for w in [*self.workers.values(), *self.extra] if w.proc is not None and w.proc.poll() is None]

    def start_all(self) -> None:
        for worker in self.workers.values():
            worker.start()
        for worker in self.workers.values():
            worker.wait_ready(timeout=120)

    def kill_all(self) -> None:
        for worker in self.workers.values():
            worker.kill()

    def stop_all(self) -> None:
        for worker in [*self.workers.values(), *self.extra]:
            worker.stop()

    def dead(self) -> list[str]:
        return [w.service for w in self.workers.values() if w.proc is None or w.proc.poll() is not None]

    async def lag(self) -> dict[str, int]:
        """Events not yet committed by the module's consumer groups: `service topic[partition]` -> lag."""
        behind: dict[str, int] = {}
        async with GroupOffsets(self.bootstrap) as kafka:
            for service, target in self.targets.items():
                tps = await kafka.partitions(target.topics)
                committed = await kafka.committed(target.group_id, tps)
                ends = await kafka.ends(tps)
                behind.update({f"{service} {tp.topic}[{tp.partition}]": ends[tp] - committed[tp]
                               for tp in tps if ends[tp] > committed[tp]})
        return behind


async def start_groups_at_end(bootstrap: str, targets: list[ReplayTarget]) -> None:
    """The module's fresh groups start where the topics end now: earlier tests' events are not this module's
    load (the final replay goes back to offset 0 anyway)."""
    async with GroupOffsets(bootstrap) as kafka:
        for target in targets:
            tps = await kafka.partitions(target.topics)
            await kafka.commit(target.group_id, await kafka.ends(tps))


@asynccontextmanager
async def fault_stack(kafka_bootstrap: str, database_url: str, mailsink: Any, tmp: Path, *, name: str = "faults",
                      worker_database_url: str | None = None,
                      worker_settings: dict[str, str] | None = None) -> AsyncIterator[FaultStack]:
    """One worker per service on a fresh consumer group prefix; yields the FaultStack, kills every worker after.
    `worker_database_url`: what the workers connect with, when not `database_url` (e.g. a password role);
    `worker_settings`: more environment for the workers (e.g. TOPIC_REPLICATION_FACTOR on a cluster)."""
    env = worker_env(kafka_bootstrap, worker_database_url or database_url,
                     app_prefix=f"{name}-{uuid.uuid4().hex[:8]}",
                     ABANDON_AFTER_SECONDS="4", ABANDON_SCAN_MS="300", MAIL_LEASE_SECONDS="5",
                     MAIL_RETRY_BASE_MS="250", **mailsink.env, **(worker_settings or {}))
    targets = {s: target_for(s, env) for s in SERVICES}
    await start_groups_at_end(kafka_bootstrap, list(targets.values()))
    stack = FaultStack(kafka_bootstrap, database_url, mailsink, tmp, env, targets)
    stack.workers = {s: make_worker(s, env, tmp) for s in SERVICES}
    try:
        await asyncio.to_thread(stack.start_all)
        yield stack
    finally:
        for worker in [*stack.workers.values(), *stack.extra]:
            worker.kill()
        print(f"\n{name} timings: " + "; ".join(
            f"{r.name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items()) for r in stack.runs))


# --- the load -----------------------------------------------------------------------------------------------


class StampedAtSend:
    """The storefront producer as `drive` uses it, with each session event's occurred_at set to the moment it is
    sent (strictly increasing; a repeat of an event id, a redelivery, keeps its first stamp).

    The simulator stamps all of a scenario's events when it generates them, 1 ms apart, and the abandon window
    counts from occurred_at. A fault that holds the storefront's own sends back (a broker restart blocks the
    producer; a machine shared with other test runs slows the pacing) then sends a session's checkout and payment
    after its window has already passed, and the cart service rightly reports it abandoned: the oracle's premise,
    not the system, fails. Stamped at send time, as a storefront does, a window only has to cover the services'
    own delay (the fault's outage and the catch-up after it)."""

    def __init__(self, producer: StorefrontProducer) -> None:
        self._producer = producer
        self._stamps: dict[uuid.UUID, datetime] = {}
        self._last: datetime | None = None

    async def send_soon(self, event: Any):  # noqa: ANN201 - the delivery future of StorefrontProducer.send_soon
        stamp = self._stamps.get(event.event_id)
        if stamp is None:
            stamp = datetime.now(UTC)
            if self._last is not None and stamp <= self._last:
                stamp = self._last + timedelta(microseconds=1)
            self._last = self._stamps[event.event_id] = stamp
        return await self._producer.send_soon(event.model_copy(update={"occurred_at": stamp}))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


def bad_messages(ns: str) -> list[BadMessage]:
    """Invalid JSON, a negative quantity, a 1 MB value, a negative stock level, an unknown status."""
    cart = CartUpdated(event_id=uuid.uuid4(), occurred_at="2024-05-01T12:00:00Z", shop_id=f"{ns}-shop0",
                       cart_id=f"{ns}-bad-negative", customer=CartCustomer(email=f"bad.{ns}@customer.example"),
                       items=[CartItem(sku="mug-0", quantity=1)]).model_dump(mode="json")
    cart["items"][0]["quantity"] = -1
    envelope = {"event_id": str(uuid.uuid4()), "occurred_at": "2024-05-01T12:00:00Z", "shop_id": f"{ns}-shop0"}
    status = {**envelope, "order_id": f"{ns}-bad-status", "status": "shipped", "payment_status": "paid",
              "changed_by": "system", "customer": {"email": f"bad.{ns}@customer.example"}, "items": [],
              "total_cents": 0, "currency": "EUR", "payment": {"method": "manual", "provider": "cheque"}}
    huge = json.dumps({**envelope, "cart_id": f"{ns}-bad-huge", "padding": "x" * 1_000_000}).encode()
    return [
        BadMessage(topics.ORDER_PLACED.name, f"{ns}-bad-json".encode(),
                   f'{{"order_id": "{ns}-bad-json", "items": ['.encode(), "invalid JSON"),
        BadMessage(topics.CART_UPDATED.name, f"{ns}-bad-negative".encode(), json.dumps(cart).encode(),
                   "negative quantity"),
        BadMessage(topics.CHECKOUT_STARTED.name, f"{ns}-bad-huge".encode(), huge, "1 MB value"),
        BadMessage(topics.STOCK_ADJUSTED.name, f"{ns}-shop0/bad-sku".encode(),
                   json.dumps({**envelope, "sku": "bad-sku", "set_to": -5}).encode(), "negative stock level"),
        BadMessage(topics.ORDER_STATUS.name, f"{ns}-bad-status".encode(), json.dumps(status).encode(),
                   "unknown status"),
    ]


async def wait_db(stack: FaultStack, query: str, *args: object, at_least: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(stack.database_url, timeout=5)
            try:
                if await conn.fetchval(query, *args) >= at_least:
                    return
            finally:
                await conn.close()
        except UNREACHABLE:
            pass
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)  # polling interval of a deadline loop


async def play(stack: FaultStack, name: str, seed: int, fault: Callable[[], Awaitable[None]], *,
               abandon_after: int, duplicates_allowed: bool = False,
               before_load: Callable[[], Awaitable[None]] | None = None,
               bad: Callable[[str], list[BadMessage]] | None = bad_messages) -> Run:
    """`before_load` (e.g. more workers joining), the scenario's setup, then the paced load with bad messages
    (`bad(namespace)`; None: none at all), the fault a third of the way in; then settle and check.

    The scenario is generated after `before_load`: its events' occurred_at are stamped when it is generated, and
    the abandon window counts from them, so a slow `before_load` must not eat into the window."""
    began = time.monotonic()
    if before_load is not None:
        await before_load()
    prepared = time.monotonic() - began
    ns = f"{name}-{uuid.uuid4().hex[:6]}"
    scenario = Scenario.generate(seed, SESSIONS, Mix(shops=2, skus_per_shop=5, cancels=0.1,
                                                      abandon_after_seconds=abandon_after), namespace=ns)
    run = Run(name, scenario, bad(ns) if bad is not None else [], duplicates_allowed)
    stack.runs.append(run)
    if before_load is not None:
        run.seconds["before load"] = prepared
    began = time.monotonic()
    async with StorefrontProducer(stack.bootstrap, linger_ms=5) as producer:
        for event in scenario.setup_events:
            await producer.send(event)
        skus = sum(1 for k in scenario.expected.initial_stock)
        await wait_db(stack, "SELECT count(*) FROM inventory.stock WHERE starts_with(shop_id, $1)", f"{ns}-",
                      at_least=skus, timeout=60, what="the scenario's SKUs in inventory")
        for table in ("orders.shops", "notify.shops", "cart.shop_settings"):
            await wait_db(stack, f"SELECT count(*) FROM {table} WHERE starts_with(shop_id, $1)", f"{ns}-",
                          at_least=len(scenario.shops), timeout=60, what=f"the scenario's shops in {table}")
        run.seconds["setup"] = time.monotonic() - began

        reached = asyncio.Event()

        def progress(report) -> None:  # noqa: ANN001
            if report.sessions_sent >= SESSIONS * FAULT_AT:
                reached.set()

        load = asyncio.create_task(drive(scenario, StampedAtSend(producer), Pace(rate=RATE),  # type: ignore[arg-type]
                                         on_progress=progress, send_setup=False))
        started = time.monotonic()
        waiting = asyncio.create_task(reached.wait())
        await asyncio.wait([load, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        for message in run.bad:
            await producer.send_raw(message.topic, message.key, message.value)
        fault_began = time.monotonic()
        try:
            await fault()
        finally:
            run.seconds["fault"] = time.monotonic() - fault_began
            report = await load
            run.seconds["load"] = time.monotonic() - started
    assert (report.sessions_sent, report.events_sent) == (SESSIONS, scenario.event_count - len(scenario.setup_events))
    settled = time.monotonic()
    run.observed = await settle(stack, run)
    run.seconds["settle"] = time.monotonic() - settled
    return run


async def settle(stack: FaultStack, run: Run, timeout: float = SETTLE_TIMEOUT) -> Observed:
    """Poll until the system is at rest (no lag, outboxes drained, mails sent and their states published, no
    checkout watched) and every invariant holds; then check the topics once. Fails with what still differs at the
    deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            # quiet first, then the lag: an event staged and relayed between the two readings is then counted as
            # lag (read the other way round, it would be in neither, its consumer not yet past it)
            observed = await observe(stack.database_url, run.scenario.namespace, stack.mailsink.messages())
            lag = await stack.lag()
            problems = [f"consumer lag {lag}"] if lag else []  # lasting lag: a worker stuck on a partition
            problems += quiet(observed) + check(run.scenario, observed, duplicates_allowed=run.duplicates_allowed)
        except UNREACHABLE as exc:
            problems = [f"unreachable: {exc!r}"]
        if not problems:
            break
        if time.monotonic() >= deadline:
            for worker in stack.live():  # where each one is, in its log, before the workers are stopped
                await asyncio.to_thread(worker.dump_stacks)
            phases = ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items())
            raise AssertionError(f"{run.name}: invariants still violated after {timeout:.0f}s (workers dead: "
                                 f"{stack.dead()}; {phases}):\n  " + "\n  ".join(problems[:25]))
        await asyncio.sleep(0.5)  # polling interval of a deadline loop
    ns = f"{run.scenario.namespace}-".encode()
    outputs = await read_topics(stack.bootstrap, OUTPUT_TOPICS, keep=lambda r: (r.key or b"").startswith(ns))
    letters = await read_topics(stack.bootstrap, DLQ_TOPICS, keep=lambda r: (r.key or b"").startswith(ns))
    problems = check_outputs(run.scenario, observed, outputs, run.bad)
    problems += check_dead_letters(run.bad, letters, stack.consumers)
    problems += await check_every_input_handled(stack.bootstrap, stack.database_url, run.scenario.namespace,
                                                run.bad, stack.targets)
    assert not problems, f"{run.name}:\n  " + "\n  ".join(problems[:25])
    assert not stack.dead(), f"workers died: {stack.dead()}"
    if observed.notes:
        print(f"\n{run.name}: " + "; ".join(observed.notes))
    return observed


# --- during a fault ---------------------------------------------------------------------------------------------


@dataclass
class HealthLog:
    """What each worker's /health answered while a fault lasted: `service` -> [(seconds into it, report)]."""

    reports: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)

    def not_ready(self, service: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, r) for t, r in self.reports.get(service, []) if r.get("ready") is False]

    def summary(self) -> str:
        parts = []
        for service, seen in sorted(self.reports.items()):
            down = self.not_ready(service)
            first = f"first at {down[0][0]:.1f}s: {down[0][1].get('database') or down[0][1].get('paused')}" if down \
                else "never"
            parts.append(f"{service}: {len(down)}/{len(seen)} answers ready=false ({first})")
        return "; ".join(parts)


async def health_of(worker: WorkerProcess) -> dict[str, Any] | None:
    """The worker's /health report (200 or 503 both carry one), or None when it does not answer."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{worker.url}/health")
        return response.json()
    except (httpx.HTTPError, ValueError):
        return None


async def hold(stack: FaultStack, seconds: float, *, during: Callable[[], Awaitable[None]] | None = None,
               every: float = 0.5) -> HealthLog:
    """Keep a fault in place for `seconds` (the fault's duration is the point of this wait), asking every live
    worker's /health (and running `during`, if given) every `every` seconds meanwhile."""
    log = HealthLog()
    began = time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        workers = stack.live()
        answers = await asyncio.gather(*(health_of(w) for w in workers))
        for worker, report in zip(workers, answers, strict=True):
            if report is not None:
                log.reports.setdefault(worker.service, []).append((elapsed, report))
        if during is not None:
            await during()
        await asyncio.sleep(max(0.0, min(every, seconds - (time.monotonic() - began))))  # the fault's duration
    return log


async def wait_all_ready(workers: Iterable[WorkerProcess], timeout: float) -> None:
    """Until every worker answers /health with ready: true (after a fault, before the checks)."""
    deadline = time.monotonic() + timeout
    pending: Sequence[WorkerProcess] = list(workers)
    while pending:
        answers = await asyncio.gather(*(health_of(w) for w in pending))
        pending = [w for w, r in zip(pending, answers, strict=True) if not (r or {}).get("ready")]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"not ready {timeout:.0f}s after the fault: {[w.service for w in pending]}")
        await asyncio.sleep(0.2)  # polling interval of a deadline loop
