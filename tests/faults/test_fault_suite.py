"""The guarantees under faults, end to end: a simulated storefront load through the four real services while
something breaks, then every invariant of `tests/faults/invariants.py` checked against the simulator's oracle.

One set of workers (one per service, a fresh consumer group prefix) serves the whole module; each scenario plays
its own shop namespace, so its invariants are checked on its own rows, topics' keys and mails. Each load is a few
hundred sessions (one to two thousand events) paced over some seconds, with bad messages mixed in and the fault
injected a third of the way in:

1. a worker of every service SIGKILLed, then restarted;
2. the broker stopped and restarted (same ports, same data);
3. PostgreSQL stopped and restarted;
4. the mail sink down until notify has failed a few attempts, then back;
5. a second orders worker joining the group, then stopped mid-stream (two rebalances).

Then, once: every service replayed from offset 0 changes no row, sends no mail and emits no event.

Nothing here sleeps to synchronise: every wait polls the database, the sink or the broker until a condition or a
deadline; "settled" means no consumer lag, outboxes drained, no mail pending and no checkout still watched.

The abandon window (a shop setting) is chosen per fault. A checkout is judged abandoned on the wall clock from the
events' occurred_at, and the simulator stamps all of a scenario's events when it generates them (1 ms apart) while
the driver spreads them over the load's ~6 s: a paid cart is rightly reported abandoned when its order.status
reaches the cart service later than occurred_at + window. So each window covers the load's length plus that
fault's outage (kill, broker: 30 s; PostgreSQL, rebalance: 15 s; mail sink, which delays no order.status: 12 s).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka.errors import KafkaError

from contracts import topics
from contracts.events import CartCustomer, CartItem, CartUpdated
from contracts.producer import StorefrontProducer
from orderflow.ops.replay import GroupOffsets, ReplayTarget, replay, target_for
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
    end_offsets,
    observe,
    quiet,
    read_topics,
    snapshot_changes,
    snapshot_rows,
)
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

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
    mailsink: object
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


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, database_url: str, mailsink, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("faults")
    env = worker_env(kafka_bootstrap, database_url, app_prefix=f"faults-{uuid.uuid4().hex[:8]}",
                     ABANDON_AFTER_SECONDS="4", ABANDON_SCAN_MS="300", MAIL_LEASE_SECONDS="5",
                     MAIL_RETRY_BASE_MS="250", **mailsink.env)
    targets = {s: target_for(s, env) for s in SERVICES}
    await start_groups_at_end(kafka_bootstrap, list(targets.values()))
    fault_stack = FaultStack(kafka_bootstrap, database_url, mailsink, tmp, env, targets)
    fault_stack.workers = {s: make_worker(s, env, tmp) for s in SERVICES}
    try:
        await asyncio.to_thread(fault_stack.start_all)
        yield fault_stack
    finally:
        for worker in [*fault_stack.workers.values(), *fault_stack.extra]:
            worker.kill()
        print("\nfault suite timings: " + "; ".join(
            f"{r.name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in r.seconds.items()) for r in fault_stack.runs))


# --- the load -----------------------------------------------------------------------------------------------


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
               before_load: Callable[[], Awaitable[None]] | None = None) -> Run:
    """Setup, then the paced load with bad messages, the fault a third of the way in; then settle and check."""
    ns = f"{name}-{uuid.uuid4().hex[:6]}"
    scenario = Scenario.generate(seed, SESSIONS, Mix(shops=2, skus_per_shop=5, cancels=0.1,
                                                      abandon_after_seconds=abandon_after), namespace=ns)
    run = Run(name, scenario, bad_messages(ns), duplicates_allowed)
    stack.runs.append(run)
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
        if before_load is not None:
            await before_load()
        run.seconds["setup"] = time.monotonic() - began

        reached = asyncio.Event()

        def progress(report) -> None:  # noqa: ANN001
            if report.sessions_sent >= SESSIONS * FAULT_AT:
                reached.set()

        load = asyncio.create_task(drive(scenario, producer, Pace(rate=RATE), on_progress=progress,
                                         send_setup=False))
        started = time.monotonic()
        waiting = asyncio.create_task(reached.wait())
        await asyncio.wait([load, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        for bad in run.bad:
            await producer.send_raw(bad.topic, bad.key, bad.value)
        fault_began = time.monotonic()
        await fault()
        run.seconds["fault"] = time.monotonic() - fault_began
        report = await load
        run.seconds["load"] = time.monotonic() - started
    assert (report.sessions_sent, report.events_sent) == (SESSIONS, scenario.event_count - len(scenario.setup_events))
    settled = time.monotonic()
    run.observed = await settle(stack, run)
    run.seconds["settle"] = time.monotonic() - settled
    return run


async def settle(stack: FaultStack, run: Run, timeout: float = SETTLE_TIMEOUT) -> Observed:
    """Poll until the system is at rest (no lag, outboxes drained, mails sent, no checkout watched) and every
    invariant holds; then check the topics once. Fails with what still differs at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lag = await stack.lag()
            observed = await observe(stack.database_url, run.scenario.namespace, stack.mailsink.messages())
            problems = [f"consumer lag {lag}"] if lag else []  # lasting lag: a worker stuck on a partition
            problems += quiet(observed) + check(run.scenario, observed, duplicates_allowed=run.duplicates_allowed)
        except UNREACHABLE as exc:
            problems = [f"unreachable: {exc!r}"]
        if not problems:
            break
        if time.monotonic() >= deadline:
            raise AssertionError(f"{run.name}: invariants still violated after {timeout:.0f}s (workers dead: "
                                 f"{stack.dead()}):\n  " + "\n  ".join(problems[:25]))
        await asyncio.sleep(0.5)  # polling interval of a deadline loop
    ns = f"{run.scenario.namespace}-".encode()
    outputs = await read_topics(stack.bootstrap, OUTPUT_TOPICS, keep=lambda r: (r.key or b"").startswith(ns))
    letters = await read_topics(stack.bootstrap, DLQ_TOPICS, keep=lambda r: (r.key or b"").startswith(ns))
    problems = check_outputs(run.scenario, observed, outputs, run.bad)
    problems += check_dead_letters(run.bad, letters, stack.consumers)
    problems += await check_every_input_handled(stack.bootstrap, stack.database_url, run.scenario.namespace, run.bad)
    assert not problems, f"{run.name}:\n  " + "\n  ".join(problems[:25])
    assert not stack.dead(), f"workers died: {stack.dead()}"
    if observed.notes:
        print(f"\n{run.name}: " + "; ".join(observed.notes))
    return observed


# --- the scenarios ------------------------------------------------------------------------------------------


async def test_every_service_sigkilled_and_restarted_mid_load(stack: FaultStack) -> None:
    async def fault() -> None:
        await asyncio.to_thread(stack.kill_all)
        await asyncio.to_thread(stack.start_all)

    # notify itself is SIGKILLed: a mail accepted by the sink just before the kill may come again (same Message-ID)
    await play(stack, "kill", 101, fault, abandon_after=30, duplicates_allowed=True)


async def test_broker_stopped_and_restarted_mid_load(stack: FaultStack, kafka_broker) -> None:
    if kafka_broker.handle is None:
        pytest.skip("the broker is external; only a local broker can be restarted")

    async def fault() -> None:
        await asyncio.to_thread(kafka_broker.restart)

    await play(stack, "broker", 202, fault, abandon_after=30)


async def test_postgres_stopped_and_restarted_mid_load(stack: FaultStack, postgres_server) -> None:
    if postgres_server is None:
        pytest.skip("the database is external; only the local cluster can be restarted")

    async def fault() -> None:
        await asyncio.to_thread(postgres_server.restart)

    await play(stack, "postgres", 303, fault, abandon_after=15)


async def test_mail_sink_down_for_a_while_mid_load(stack: FaultStack) -> None:
    sink = stack.mailsink.handle
    if sink is None:
        pytest.skip("the mail server is external; only the local sink can be stopped")

    async def fault() -> None:
        await asyncio.to_thread(sink.stop)
        try:
            # down until notify has failed to deliver several of this load's mails
            await wait_db(stack, "SELECT count(*) FROM notify.mails WHERE starts_with(shop_id, $1) "
                          "AND last_error IS NOT NULL AND state = 'pending'", f"{stack.runs[-1].scenario.namespace}-",
                          at_least=10, timeout=60, what="failed deliveries while the mail sink is down")
        finally:
            await asyncio.to_thread(sink.start)

    await play(stack, "mailsink", 404, fault, abandon_after=12)


async def test_two_orders_workers_one_stopped_mid_load(stack: FaultStack) -> None:
    second = make_worker("orders", stack.env, stack.tmp, index=1)
    stack.extra.append(second)

    async def join() -> None:
        await asyncio.to_thread(lambda: second.start().wait_ready(timeout=120))

        async def both_assigned() -> bool:
            for worker in (stack.workers["orders"], second):
                if httpx.get(f"{worker.url}/health", timeout=3).status_code != 200:
                    return False
            return True

        deadline = time.monotonic() + 60
        while not await both_assigned():
            assert time.monotonic() < deadline, "two orders workers never assigned together"
            await asyncio.sleep(0.2)  # polling interval of a deadline loop

    async def fault() -> None:
        await asyncio.to_thread(second.stop)  # SIGTERM: leaves the group, its partitions move mid-stream

    await play(stack, "rebalance", 505, fault, abandon_after=15, before_load=join)


# --- and then a full replay ---------------------------------------------------------------------------------


async def test_full_replay_of_every_service_changes_nothing(stack: FaultStack) -> None:
    runs = [r for r in stack.runs if r.observed is not None]
    if not runs:
        pytest.skip("no scenario completed")
    namespaces = [r.scenario.namespace for r in runs]
    rows_before = await snapshot_rows(stack.database_url, namespaces)
    ends_before = await end_offsets(stack.bootstrap, OUTPUT_TOPICS)
    mails_before = len(stack.mailsink.messages())

    began = time.monotonic()
    progress = await replay(stack.bootstrap, list(stack.targets.values()), database_url=stack.database_url,
                            stop_workers=stack.stop_all, start_workers=stack.start_all,
                            catch_up_timeout=240, poll=0.5)
    replayed = sum(p.goal - p.start for p in progress)
    assert replayed > sum(r.scenario.event_count for r in runs), "the replay went back to offset 0"
    for run in runs:
        await settle(stack, run)
    print(f"\nreplay: {replayed} events in {time.monotonic() - began:.1f}s")

    problems = snapshot_changes(rows_before, await snapshot_rows(stack.database_url, namespaces))
    ends_after = await end_offsets(stack.bootstrap, OUTPUT_TOPICS)
    if ends_after != ends_before:
        new = await read_topics(stack.bootstrap, OUTPUT_TOPICS, since=ends_before)
        problems.append(f"{len(new)} new events on the output topics, e.g. "
                        f"{[(r.topic, r.key) for r in new[:5]]}")
    if (mails_after := len(stack.mailsink.messages())) != mails_before:
        problems.append(f"{mails_after - mails_before} new mails")
    assert not problems, "the replay changed things:\n  " + "\n  ".join(problems)
