"""The end-to-end invariants of DESIGN.md ("Guarantees the tests must prove"), checked for one simulated namespace.

Reusable by any test that drives a `Scenario` (orderflow/sim) through the real services:

    observed = await observe(database_url, scenario.namespace, mailsink.messages())
    problems = check(scenario, observed)                      # [] when every invariant holds
    mine = lambda r: (r.key or b"").startswith(f"{scenario.namespace}-".encode())
    problems += check_outputs(scenario, observed, await read_topics(bootstrap, OUTPUT_TOPICS, keep=mine), bad)
    problems += check_dead_letters(bad, await read_topics(bootstrap, DLQ_TOPICS, keep=mine), consumers)
    problems += await check_every_input_handled(bootstrap, database_url, scenario.namespace, bad, targets)

(`tests/faults/harness.py` `settle` does exactly this once the system is at rest.)

What is checked against the scenario's oracle (`Scenario.expected`):
- stock: exact per SKU (except `order_sensitive_skus`), never negative;
- deductions: for every committed order exactly one deduction, of exactly its lines; a return only for a committed
  order that was canceled, of exactly what was deducted; nothing for any other order; the inventory's per-order
  state agrees; the orders service recorded every inventory.deductions event (nothing lost on the way back);
- orders: every order exists, in exactly the status and payment status its events imply, with a history that is a
  valid path ending there; no order that was not placed;
- mails: one per (order or cart, kind) the rules imply, counted by Message-ID in the sink; never a Message-ID that
  no (ref, kind) implies; the same Message-ID twice only when `duplicates_allowed` (notify SIGKILLed: the SMTP
  window no client can close); every mail row sent, none failed;
- abandoned checkouts: exactly the expected carts, once each (cart.checkouts and the checkout.abandoned topic);
- output topics: one order.status event id per history row, one inventory.deductions event per ledger kind;
- dead letters: every bad message lands on `<topic>.dlq`, once per consuming service, bytes untouched, with headers;
- nothing skipped: every record of the namespace on every topic a service consumes lies below the consumer position
  its group stored in PostgreSQL (`<service>.consumer_positions`), and where a handler still records event ids,
  each valid event is in its processed_events.

Shops are tenants: orders are keyed by (shop_id, order_id) and carts by (shop_id, cart_id) throughout, so every
invariant holds per shop, also for a scenario whose shops reuse each other's ids (`Mix.shared_ids`).

One ordering the oracle cannot know: a customer's cancel and a payment confirmation travel on different topics, so
after a fault the orders service may see the cancel first. The order is then canceled before it was paid (gateway:
never committed, its checkout is reported abandoned; manual: committed at placement, payment stays awaiting). The
checker accepts exactly that alternative, derives its consequences for stock, mails and checkouts, and reports it in
`Observed.notes`; any other difference is a violation.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts import OrderStatus, PaymentStatus, decode, derived_event_id, topics
from contracts.events import OrderCancelRequested, OrderPlaced
from orderflow.ops.topics import partitions_of
from orderflow.runtime.dlq import HEADER_ERROR, HEADER_SERVICE, HEADER_TOPIC, read_headers
from orderflow.sim.scenario import Scenario
from services.notify.core import message_id, order_ref

DLQ_TOPICS = tuple(spec.dlq for spec in topics.ALL)

OUTPUT_TOPICS = (topics.ORDER_STATUS.name, topics.INVENTORY_DEDUCTIONS.name, topics.CHECKOUT_ABANDONED.name,
                 topics.INVENTORY_LEVELS.name, topics.ORDER_MESSAGE.name)
"""Topics the services write; a replay must add nothing to them."""

SCHEMAS = ("orders", "inventory", "cart", "notify")


# --- what the system holds ----------------------------------------------------------------------------------


@dataclass
class OrderRow:
    status: str
    payment_status: str
    shop_id: str
    cart_id: str | None
    payment_method: str


Key = tuple[str, str]
"""(shop_id, order_id) or (shop_id, cart_id): ids are unique within a shop only."""


def named(key: Key) -> str:
    return "/".join(key)


@dataclass
class Observed:
    """Everything the services hold about one namespace, read in one pass (a snapshot, not a transaction)."""

    namespace: str
    orders: dict[Key, OrderRow] = field(default_factory=dict)
    history: dict[Key, list[tuple]] = field(default_factory=dict)
    """(shop_id, order_id) -> [(seq, from_status, to_status, from_payment, to_payment)] in seq order."""
    stock: dict[tuple[str, str], int] = field(default_factory=dict)
    moves: dict[Key, dict[str, dict[str, tuple[int, int]]]] = field(default_factory=dict)
    """(shop_id, order_id) -> kind -> sku -> (asked, moved): inventory's ledger."""
    order_stock: dict[Key, str] = field(default_factory=dict)
    stock_outcomes: set[tuple[str, str, str]] = field(default_factory=set)
    """(shop_id, order_id, kind) recorded by orders."""
    checkouts: dict[Key, str] = field(default_factory=dict)
    carts: dict[Key, tuple[str, str | None]] = field(default_factory=dict)
    mail_rows: dict[tuple[str, str], tuple[str, str, str | None]] = field(default_factory=dict)
    """(ref, kind) -> (state, message_id, last_error)."""
    sink: list[tuple[str, str]] = field(default_factory=list)
    """(message_id, recipient) of every message the sink received for this namespace."""
    unpublished: dict[str, int] = field(default_factory=dict)
    """Per schema: outbox rows of this namespace not yet published."""
    notes: list[str] = field(default_factory=list)


async def observe(database_url: str, namespace: str, sink_messages: Sequence[dict[str, Any]]) -> Observed:
    """Read the namespace's rows from every service schema, and its mails from the sink's message list."""
    prefix = f"{namespace}-"
    seen = Observed(namespace)
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        for r in await conn.fetch("SELECT order_id, status, payment_status, shop_id, cart_id, payment_method "
                                  "FROM orders.orders WHERE starts_with(shop_id, $1)", prefix):
            seen.orders[r["shop_id"], r["order_id"]] = OrderRow(r["status"], r["payment_status"], r["shop_id"],
                                                                r["cart_id"], r["payment_method"])
        for r in await conn.fetch("SELECT shop_id, order_id, seq, from_status, to_status, from_payment_status, "
                                  "to_payment_status FROM orders.order_history WHERE starts_with(shop_id, $1) "
                                  "ORDER BY shop_id, order_id, seq", prefix):
            seen.history.setdefault((r["shop_id"], r["order_id"]), []).append(
                (r["seq"], r["from_status"], r["to_status"], r["from_payment_status"], r["to_payment_status"]))
        seen.stock_outcomes = {(r["shop_id"], r["order_id"], r["kind"]) for r in await conn.fetch(
            "SELECT shop_id, order_id, kind FROM orders.stock_outcomes WHERE starts_with(shop_id, $1)", prefix)}
        for r in await conn.fetch("SELECT shop_id, sku, available FROM inventory.stock WHERE starts_with(shop_id, $1)",
                                  prefix):
            seen.stock[r["shop_id"], r["sku"]] = r["available"]
        for r in await conn.fetch("SELECT shop_id, order_id, kind, sku, asked, moved FROM inventory.stock_moves "
                                  "WHERE starts_with(shop_id, $1)", prefix):
            seen.moves.setdefault((r["shop_id"], r["order_id"]), {}).setdefault(r["kind"], {})[r["sku"]] = (
                r["asked"], r["moved"])
        seen.order_stock = {(r["shop_id"], r["order_id"]): r["state"] for r in await conn.fetch(
            "SELECT shop_id, order_id, state FROM inventory.order_stock WHERE starts_with(shop_id, $1)", prefix)}
        # a watch abandoned and later paid reads 'paid' but keeps abandoned_at: it was reported abandoned
        seen.checkouts = {(r["shop_id"], r["cart_id"]): "abandoned" if r["abandoned_at"] is not None else r["state"]
                          for r in await conn.fetch("SELECT shop_id, cart_id, state, abandoned_at FROM cart.checkouts "
                                                    "WHERE starts_with(shop_id, $1)", prefix)}
        seen.carts = {(r["shop_id"], r["cart_id"]): (r["status"], r["order_id"]) for r in await conn.fetch(
            "SELECT shop_id, cart_id, status, order_id FROM cart.carts WHERE starts_with(shop_id, $1)", prefix)}
        mails = await conn.fetch("SELECT ref, kind, state, message_id, last_error FROM notify.mails "
                                 "WHERE starts_with(shop_id, $1)", prefix)
        seen.mail_rows = {(r["ref"], r["kind"]): (r["state"], r["message_id"], r["last_error"]) for r in mails}
        # a mail's change the status feed has not staged yet (it looks once a second): mail.status still to come
        seen.unpublished["notify mail.status feed"] = await conn.fetchval(
            "SELECT count(*) FROM notify.mails WHERE starts_with(shop_id, $1) AND status_unpublished", prefix)
        for schema in SCHEMAS:
            seen.unpublished[schema] = await conn.fetchval(
                f'SELECT count(*) FROM "{schema}".outbox WHERE published_at IS NULL '
                "AND starts_with(convert_from(key, 'UTF8'), $1)", prefix)
    finally:
        await conn.close()
    marker = f".{namespace}@"
    for m in sink_messages:
        recipients = [*m.get("rcpt_to", []), m.get("to", "")]
        if any(marker in r for r in recipients):
            seen.sink.append((m["message_id"], recipients[0]))
    return seen


# --- the oracle, adjusted for the one ordering it cannot know -------------------------------------------------


@dataclass(frozen=True)
class OrderFacts:
    order_id: str
    shop_id: str
    cart_id: str
    method: str
    lines: dict[str, int]
    status: str
    payment_status: str
    committed: bool
    paid_after_cancel: bool = False
    """The cancel was applied before the payment: the payment is recorded and flags the order (one alert mail)."""

    @property
    def key(self) -> Key:
        return (self.shop_id, self.order_id)


def _facts(scenario: Scenario) -> tuple[dict[Key, OrderPlaced], set[Key]]:
    placed: dict[Key, OrderPlaced] = {}
    canceled_requested: set[Key] = set()
    for session in scenario.session_events:
        for event in session:
            if isinstance(event, OrderPlaced):
                placed[event.shop_id, event.order_id] = event
            elif isinstance(event, OrderCancelRequested):
                canceled_requested.add((event.shop_id, event.order_id))
    return placed, canceled_requested


def implied_orders(scenario: Scenario, observed: Observed) -> tuple[dict[Key, OrderFacts], set[Key], list[str]]:
    """Each order's implied final facts and the carts that must be reported abandoned, given the one ordering
    (cancel before payment) the oracle cannot know; returns also what differs from the oracle."""
    expected = scenario.expected
    placed, _ = _facts(scenario)
    abandoned = set(expected.abandoned_carts)
    notes: list[str] = []
    out: dict[Key, OrderFacts] = {}
    for key, exp in expected.orders.items():
        event = placed[key]
        lines: dict[str, int] = {}
        for item in event.items:
            lines[item.sku] = lines.get(item.sku, 0) + item.quantity
        status, payment, committed = exp.status.value, exp.payment_status.value, exp.committed
        paid_after_cancel = False
        row = observed.orders.get(key)
        before_payment = (PaymentStatus.INCOMPLETE if event.payment.method == "gateway"
                          else PaymentStatus.AWAITING).value
        if (row is not None and exp.status == OrderStatus.CANCELED and exp.payment_status == PaymentStatus.PAID
                and row.status == status and row.payment_status == before_payment):
            payment = before_payment
            paid_after_cancel = True
            cart = (event.shop_id, event.cart_id)
            if event.payment.method == "gateway":
                committed = False  # canceled while incomplete: never committed
                # cart closes the watch of a canceled unpaid order (no reminder for an order the shop no longer
                # takes); it is abandoned only if its due time came before the cancel did
                if observed.checkouts.get(cart) == "abandoned":
                    abandoned.add(cart)
            notes.append(f"{named(key)}: the cancel was applied before the payment ({event.payment.method})")
        out[key] = OrderFacts(event.order_id, event.shop_id, event.cart_id, event.payment.method, lines, status,
                                   payment, committed, paid_after_cancel)
    return out, abandoned, notes


def expected_mails(scenario: Scenario, orders: dict[Key, OrderFacts], abandoned: set[Key],
                   observed: Observed) -> dict[str, tuple[str, str]]:
    """Message-ID -> (ref, kind) of every mail the rules imply (notify/core.py)."""
    mails: dict[str, tuple[str, str]] = {}

    def add(ref: str, kind: str) -> None:
        mails[message_id(ref, kind)] = (ref, kind)

    for o in orders.values():
        ref = order_ref(o.shop_id, o.order_id)
        if o.committed:
            add(ref, "new_order")
            add(ref, "confirmation")
            if o.status == OrderStatus.CANCELED.value:
                add(ref, "canceled")
            deducted = observed.moves.get(o.key, {}).get("deducted", {})
            if any(moved < asked for asked, moved in deducted.values()):
                add(ref, "shortfall")
        # the merchant's alerts (services/notify/alerts.py): a canceled paid order owes a refund (the simulator
        # never refunds); a payment that came after the cancel is flagged
        if o.status == OrderStatus.CANCELED.value and o.payment_status == PaymentStatus.PAID.value:
            add(ref, "alert_refund_due")
        if o.paid_after_cancel:
            add(ref, "alert_payment_after_cancel")
    for shop_id, cart_id in abandoned:
        add(order_ref(shop_id, cart_id), "recovery")
    return mails


# --- the checks ---------------------------------------------------------------------------------------------


def quiet(observed: Observed) -> list[str]:
    """What still moves: unpublished outbox rows, mails not yet sent, checkouts still watched."""
    waiting = [f"{n} unpublished outbox rows in {s}" for s, n in observed.unpublished.items() if n]
    busy = Counter(state for state, _, _ in observed.mail_rows.values() if state in {"pending", "sending"})
    waiting += [f"{n} mails {state}" for state, n in busy.items()]
    open_watches = sum(1 for state in observed.checkouts.values() if state == "open")
    if open_watches:
        waiting.append(f"{open_watches} checkouts still open")
    return waiting


def check(scenario: Scenario, observed: Observed, *, duplicates_allowed: bool = False) -> list[str]:
    """Every database and mail invariant for the scenario; [] when all hold. Fills `observed.notes`."""
    expected = scenario.expected
    orders, abandoned, notes = implied_orders(scenario, observed)
    observed.notes = notes
    problems: list[str] = []

    # stock: exact per SKU, never negative
    for key, level in observed.stock.items():
        if level < 0:
            problems.append(f"stock {key} is negative: {level}")
    for key, want in expected.stock.items():
        if key in expected.order_sensitive_skus:
            continue
        if observed.stock.get(key) != want:
            problems.append(f"stock {key}: {observed.stock.get(key)} != expected {want}")
    if extra := set(observed.stock) - set(expected.stock):
        problems.append(f"stock rows nobody created: {sorted(extra)}")

    # orders: each in exactly its implied state, with a valid history; nothing that was not placed
    if extra := set(observed.orders) - set(orders):
        problems.append(f"orders that were never placed: {sorted(extra)[:5]}")
    for o in orders.values():
        row = observed.orders.get(o.key)
        if row is None:
            problems.append(f"order {named(o.key)} lost")
            continue
        if (row.status, row.payment_status) != (o.status, o.payment_status):
            problems.append(f"order {named(o.key)} ({o.method}) is {row.status}/{row.payment_status}, "
                            f"its events imply {o.status}/{o.payment_status}")
        problems += _history_problems(named(o.key), observed.history.get(o.key, []), row)

    # deductions: exactly one per committed order, returns only for canceled ones, nothing for the others
    if extra := set(observed.moves) - set(orders):
        problems.append(f"stock moves for orders never placed: {sorted(extra)[:5]}")
    for o in orders.values():
        problems += _deduction_problems(o, observed, scarce=scenario.mix.scarcity > 0)

    # checkouts: exactly the expected set abandoned, once (the row's state is terminal)
    got_abandoned = {c for c, state in observed.checkouts.items() if state == "abandoned"}
    if got_abandoned != abandoned:
        problems.append(f"abandoned checkouts differ: missing {sorted(abandoned - got_abandoned)[:5]}, "
                        f"unexpected {sorted(got_abandoned - abandoned)[:5]}")
    for o in orders.values():
        status, order_id = observed.carts.get((o.shop_id, o.cart_id), (None, None))
        if (status, order_id) != ("ordered", o.order_id):
            problems.append(f"cart {o.shop_id}/{o.cart_id} is {status}/{order_id}, expected ordered by {o.order_id}")

    # mails: one per (ref, kind) by Message-ID; nothing unexpected; every row sent
    wanted = expected_mails(scenario, orders, abandoned, observed)
    counts = Counter(mid for mid, _ in observed.sink)
    if missing := [wanted[m] for m in wanted if m not in counts]:
        problems.append(f"{len(missing)} mails never arrived, e.g. {missing[:4]}")
    if unexpected := [m for m in counts if m not in wanted]:
        known = {mid: key for key, (_, mid, _) in observed.mail_rows.items()}
        problems.append(f"{len(unexpected)} mails no rule implies: {[known.get(m, m) for m in unexpected[:4]]}")
    twice = {wanted.get(m, m): n for m, n in counts.items() if n > 1}
    if twice and (not duplicates_allowed or any(n > 2 for n in twice.values())):
        problems.append(f"mails delivered more than once: {dict(list(twice.items())[:4])}")
    rows = {message_id(ref, kind): state for (ref, kind), (state, _, _) in observed.mail_rows.items()}
    if set(rows) != set(wanted):
        extra = [key for key, (_, mid, _) in observed.mail_rows.items() if mid not in wanted]
        problems.append(f"notify.mails rows differ from the mails implied: missing "
                        f"{[wanted[m] for m in set(wanted) - set(rows)][:3]}, extra {extra[:4]}")
    for (ref, kind), (state, mid, error) in observed.mail_rows.items():
        if mid != message_id(ref, kind):
            problems.append(f"mail {ref}/{kind} carries Message-ID {mid}, not the one its key derives")
        if state == "failed":
            problems.append(f"mail {ref}/{kind} failed: {error}")
    return problems


def _history_problems(order_id: str, history: list[tuple], row: OrderRow) -> list[str]:
    if not history:
        return [f"order {order_id} has no history"]
    problems = []
    seqs = [h[0] for h in history]
    if seqs != list(range(1, len(history) + 1)):
        problems.append(f"order {order_id} history seqs {seqs}")
    if history[0][1] is not None:
        problems.append(f"order {order_id} history does not start at placement")
    for before, after in zip(history, history[1:], strict=False):
        if (after[1], after[3]) != (before[2], before[4]):
            problems.append(f"order {order_id} history jumps from {before[2:]} to {after[1:]}")
    states = [(h[2], h[4]) for h in history]
    if len(set(states)) != len(states):
        problems.append(f"order {order_id} history repeats a state: {states}")
    if states[-1] != (row.status, row.payment_status):
        problems.append(f"order {order_id} history ends at {states[-1]}, the row says {row.status}")
    return problems


def _deduction_problems(o: OrderFacts, observed: Observed, *, scarce: bool) -> list[str]:
    moves = observed.moves.get(o.key, {})
    canceled = o.status == OrderStatus.CANCELED.value
    problems = []
    if not o.committed:
        if moves:
            problems.append(f"order {named(o.key)} was never committed but moved stock: {moves}")
        want_state = "closed" if canceled else None
    else:
        deducted = moves.get("deducted")
        if deducted is None:
            problems.append(f"committed order {named(o.key)} was never deducted")
        else:
            if {sku: asked for sku, (asked, _) in deducted.items()} != o.lines:
                problems.append(f"order {named(o.key)} deducted {deducted}, its lines are {o.lines}")
            if not scarce and any(moved != asked for asked, moved in deducted.values()):
                problems.append(f"order {named(o.key)} deducted short without scarcity: {deducted}")
        returned = moves.get("returned")
        if canceled and deducted is not None:
            if returned is None:
                problems.append(f"canceled order {named(o.key)} never got its stock back")
            elif {s: m for s, (_, m) in returned.items()} != {s: m for s, (_, m) in deducted.items()}:
                problems.append(f"order {named(o.key)} returned {returned}, it had deducted {deducted}")
        if not canceled and returned is not None:
            problems.append(f"order {named(o.key)} is not canceled but stock was returned: {returned}")
        want_state = "returned" if canceled else "deducted"
        for kind in ("deducted", "returned") if canceled else ("deducted",):
            if (o.shop_id, o.order_id, kind) not in observed.stock_outcomes:
                problems.append(f"orders never recorded inventory.deductions {kind} for {named(o.key)}")
    if observed.order_stock.get(o.key) != want_state:
        problems.append(f"inventory.order_stock of {named(o.key)} is {observed.order_stock.get(o.key)}, "
                        f"expected {want_state}")
    return problems


# --- topics -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadMessage:
    topic: str
    key: bytes
    value: bytes
    why: str


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


async def _partitions(bootstrap: str, names: Iterable[str]) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await partitions_of(admin, names)
    finally:
        await admin.close()


READ_TIMEOUT = 120.0


async def read_topics(bootstrap: str, names: Iterable[str], *, since: dict[TopicPartition, int] | None = None,
                      keep=lambda record: True, timeout: float = READ_TIMEOUT) -> list[Record]:  # noqa: ANN001
    """Every record of `names` from `since` (or the beginning) up to their ends as of now, filtered by `keep`.

    Starts no lower than each partition's earliest offset (records deleted by retention or DeleteRecords are gone;
    a fetch below it would reset to the end and read nothing), and checks every partition's position after each
    fetch, not only those that returned records: one already at its end never returns any. Fails naming the
    partitions still short of their end after `timeout` seconds rather than hang."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_bytes=8 << 20,
                                max_partition_fetch_bytes=4 << 20, auto_offset_reset="earliest")
    await consumer.start()
    out: list[Record] = []
    try:
        tps = await _partitions(bootstrap, names)
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
        start = {tp: max((since or {}).get(tp, 0), firsts[tp]) for tp in tps}
        todo = {tp for tp in tps if ends[tp] > start[tp]}
        if not todo:
            return out
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, start[tp])
        deadline = time.monotonic() + timeout
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in batches.items():
                for r in records:
                    if r.offset < ends[tp]:
                        record = Record(r.topic, r.partition, r.offset, r.key, r.value,
                                        read_headers(list(r.headers or [])))
                        if keep(record):
                            out.append(record)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
            if todo and time.monotonic() >= deadline:
                short = {f"{tp.topic}[{tp.partition}]": (await consumer.position(tp), ends[tp])
                         for tp in sorted(todo)[:5]}
                raise AssertionError(f"reading {len(todo)} partitions did not reach their ends in {timeout:.0f}s: "
                                     f"(position, end) {short}")
    finally:
        await consumer.stop()
    return out


async def end_offsets(bootstrap: str, names: Iterable[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.end_offsets(await _partitions(bootstrap, names))
    finally:
        await consumer.stop()


def check_outputs(scenario: Scenario, observed: Observed, records: Sequence[Record],
                  injected: Sequence[BadMessage] = ()) -> list[str]:
    """The services' output topics against their databases: nothing lost, nothing emitted twice (by event id).
    `injected`: bad messages a test put on these topics itself (skipped here; see `check_dead_letters`)."""
    ns = f"{scenario.namespace}-"
    skip = {(b.topic, b.key) for b in injected}
    problems: list[str] = []
    status_ids: dict[Key, set[uuid.UUID]] = defaultdict(set)
    deductions: dict[tuple[str, str, str], set[uuid.UUID]] = defaultdict(set)
    abandoned: dict[Key, set[uuid.UUID]] = defaultdict(set)
    for r in records:
        if r.key is None or not r.key.decode(errors="replace").startswith(ns) or (r.topic, r.key) in skip:
            continue
        if r.topic == topics.ORDER_STATUS.name:
            e = decode(topics.ORDER_STATUS.model, r.value)
            status_ids[e.shop_id, e.order_id].add(e.event_id)
        elif r.topic == topics.INVENTORY_DEDUCTIONS.name:
            e = decode(topics.INVENTORY_DEDUCTIONS.model, r.value)
            deductions[e.shop_id, e.order_id, e.kind.value].add(e.event_id)
            ledger = observed.moves.get((e.shop_id, e.order_id), {}).get(e.kind.value, {})
            if {line.sku: (line.asked, line.moved) for line in e.lines} != ledger:
                problems.append(f"inventory.deductions {e.shop_id}/{e.order_id}/{e.kind.value} says {e.lines}, "
                                f"ledger {ledger}")
        elif r.topic == topics.CHECKOUT_ABANDONED.name:
            e = decode(topics.CHECKOUT_ABANDONED.model, r.value)
            abandoned[e.shop_id, e.cart_id].add(e.event_id)
    for key, history in observed.history.items():
        want = {derived_event_id("order.status", *key, h[0]) for h in history}
        if status_ids.get(key, set()) != want:
            problems.append(f"order.status of {named(key)}: {len(status_ids.get(key, ()))} event ids on the "
                            f"topic, {len(want)} history rows")
    if extra := set(status_ids) - set(observed.history):
        problems.append(f"order.status events for orders without history: {sorted(extra)[:5]}")
    ledger_kinds = {(*o, k) for o, kinds in observed.moves.items() for k in kinds}
    if set(deductions) != ledger_kinds:
        problems.append(f"inventory.deductions events {len(deductions)} != ledger kinds {len(ledger_kinds)}: "
                        f"{sorted(set(deductions) ^ ledger_kinds)[:5]}")
    if several := {k: len(v) for k, v in deductions.items() if len(v) > 1}:
        problems.append(f"inventory.deductions emitted under several event ids: {several}")
    got = {c for c, state in observed.checkouts.items() if state == "abandoned"}
    if set(abandoned) != got:
        problems.append(f"checkout.abandoned events for {len(abandoned)} carts, {len(got)} abandoned watches: "
                        f"{sorted(set(abandoned) ^ got)[:5]}")
    if several := {k: len(v) for k, v in abandoned.items() if len(v) > 1}:
        problems.append(f"a checkout abandoned twice (different event ids): {several}")
    return problems


# --- dead letters -------------------------------------------------------------------------------------------


EVENT_ID_DEDUPED: dict[str, tuple[str, ...]] = {
    "cart": (topics.CHECKOUT_STARTED.name, topics.ORDER_PLACED.name, topics.ORDER_STATUS.name),
    "orders": (topics.ORDER_CANCEL_REQUESTED.name,),
    "inventory": (topics.STOCK_ADJUSTED.name,),
}
"""The few (service, topic) pairs whose handler still records each valid event in `processed_events` (topic,
event_id), because a producer may resend one fact at a new offset (cart: order.status only when the order came from
a cart). Everything else is deduplicated by consumer position alone."""


class Consumed(Protocol):
    """What a service consumes through the runtime: its consumer group (= the worker's app id, the `consumer`
    column of `<service>.consumer_positions`) and its input topics; `orderflow.ops.replay.target_for` builds one."""

    group_id: str
    topics: tuple[str, ...]


async def check_every_input_handled(bootstrap: str, database_url: str, namespace: str, bad: Sequence[BadMessage],
                                    consumed: Mapping[str, Consumed]) -> list[str]:
    """No record of the namespace was skipped by any service, proved on consumer positions.

    `consumed`: service -> its group and input topics (a `ReplayTarget` has both). For every service and every topic
    it consumes, every record of the namespace (key prefix) must lie below the `next_offset` that service's group
    stored for the record's partition in `<service>.consumer_positions`: the position moves only in the transaction
    that applied (or dead-lettered) every record before it, so a record at or beyond it was never handled. Records
    that break the contract are checked the same way (their position moves past them once they are in the DLQ; that
    they are in it is `check_dead_letters`). Then, where a handler still records event ids (`EVENT_ID_DEDUPED`),
    every valid event must be in that service's processed_events under its topic: the handler itself saw it.
    """
    prefix = f"{namespace}-".encode()
    names = sorted({t for c in consumed.values() for t in c.topics})
    injected = {(b.topic, b.key, b.value) for b in bad}
    records = await read_topics(bootstrap, names, keep=lambda r: (r.key or b"").startswith(prefix))
    by_topic: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_topic[r.topic].append(r)
    problems: list[str] = []
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        for service, c in sorted(consumed.items()):
            rows = await conn.fetch(f'SELECT topic, partition, next_offset FROM "{service}".consumer_positions '
                                    "WHERE consumer = $1", c.group_id)
            positions = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            for topic in c.topics:
                beyond = [r for r in by_topic.get(topic, ())
                          if r.offset >= positions.get((topic, r.partition), 0)]
                if not beyond:
                    continue
                bad_ones = [r for r in beyond if (r.topic, r.key, r.value) in injected]
                where = sorted({(r.partition, positions.get((topic, r.partition))) for r in beyond})[:4]
                problems.append(
                    f"{service} ({c.group_id}) never handled {len(beyond)} of {len(by_topic[topic])} {topic} records "
                    f"of the namespace ({len(bad_ones)} of them contract breakers): at or beyond its stored "
                    f"position; (partition, next_offset) e.g. {where}, offsets e.g. "
                    f"{[(r.partition, r.offset) for r in beyond[:4]]}")
        for service, inputs in EVENT_ID_DEDUPED.items():
            if service not in consumed:
                continue
            for topic in inputs:
                wanted: set[uuid.UUID] = set()
                for r in by_topic.get(topic, ()):
                    if (r.topic, r.key, r.value) in injected:
                        continue
                    event = decode(topics.spec_for(r.topic).model, r.value)
                    if service == "cart" and topic == topics.ORDER_STATUS.name and not event.cart_id:
                        continue
                    wanted.add(event.event_id)
                if not wanted:
                    continue
                seen = {r["event_id"] for r in await conn.fetch(
                    f'SELECT event_id FROM "{service}".processed_events WHERE topic = $1 '
                    "AND event_id = ANY($2::uuid[])", topic, list(wanted))}
                if missing := wanted - seen:
                    problems.append(f"{service} has no processed_events row for {len(missing)} of {len(wanted)} "
                                    f"{topic} events (its handler never saw them), e.g. "
                                    f"{sorted(map(str, missing))[:3]}")
    finally:
        await conn.close()
    return problems


def check_dead_letters(bad: Sequence[BadMessage], letters: Sequence[Record],
                       consumers: dict[str, set[str]]) -> list[str]:
    """Each bad message is on `<topic>.dlq` once per service consuming `topic`, bytes untouched, with headers;
    and nothing else of the namespace is in any dead-letter topic (a valid event there was lost to its service)."""
    problems = []
    injected = {(f"{b.topic}.dlq", b.key) for b in bad}
    if stray := [r for r in letters if (r.topic, r.key) not in injected]:
        problems.append(f"{len(stray)} valid events dead-lettered, e.g. "
                        f"{[(r.topic, r.key, r.headers.get(HEADER_ERROR)) for r in stray[:3]]}")
    for b in bad:
        found = [r for r in letters if r.topic == f"{b.topic}.dlq" and r.key == b.key]
        services = Counter(r.headers.get(HEADER_SERVICE) for r in found)
        if set(services) != consumers[b.topic]:
            problems.append(f"{b.why} on {b.topic}: dead-lettered by {dict(services)}, consumers "
                            f"{sorted(consumers[b.topic])}")
        for r in found:
            if r.value != b.value:
                problems.append(f"{b.why}: the dead letter's bytes differ from the original")
            if not r.headers.get(HEADER_ERROR) or r.headers.get(HEADER_TOPIC) != b.topic:
                problems.append(f"{b.why}: headers {r.headers} lack the error or the source topic")
    return problems


# --- replay: nothing changes --------------------------------------------------------------------------------

SNAPSHOT_TABLES = {
    "orders.orders": "shop_id", "orders.order_history": "order_id", "orders.payments": "shop_id",
    "orders.stock_outcomes": "order_id", "orders.cancel_requests": "order_id", "orders.shops": "shop_id",
    "orders.stock_levels": "shop_id",
    "inventory.stock": "shop_id", "inventory.order_stock": "shop_id", "inventory.stock_moves": "shop_id",
    "cart.carts": "shop_id", "cart.checkouts": "shop_id", "cart.stock_levels": "shop_id",
    "cart.shop_settings": "shop_id", "notify.shops": "shop_id", "notify.mails": "shop_id",
}
"""Every read-model table, with the column whose prefix names the namespace."""

SNAPSHOT_COLUMNS = {"orders.stock_levels": "shop_id, sku, available"}
"""Tables compared on some columns only. orders.stock_levels: not `updated_at`, since a rebuild of inventory
publishes every level again, stamped anew (same quantities), and the back office's copy takes the newer stamp."""

KEY_TEXT = "convert_from(key, 'UTF8')"


async def snapshot_rows(database_url: str, namespaces: Sequence[str],
                        event_ids: Sequence[uuid.UUID] = ()) -> dict[str, list[tuple]]:
    """Every row of the namespaces in every service table (all columns), the outbox rows they staged, and how
    many of the namespaces' input events (`event_ids`) each service has recorded as processed: a replay must leave
    all of it as it was. (Other modules' events on the same session broker are not counted: a replay from offset 0
    hands them to these workers for the first time.)"""
    prefixes = [f"{ns}-" for ns in namespaces]
    match = "EXISTS (SELECT 1 FROM unnest($1::text[]) AS p WHERE starts_with({col}, p))"
    snap: dict[str, list[tuple]] = {}
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        for table, col in SNAPSHOT_TABLES.items():
            columns = SNAPSHOT_COLUMNS.get(table, "*")
            rows = await conn.fetch(f"SELECT {columns} FROM {table} WHERE {match.format(col=col)}", prefixes)
            snap[table] = sorted(tuple(str(v) for v in r.values()) for r in rows)
        for schema in SCHEMAS:
            rows = await conn.fetch(f'SELECT id, topic, key, value FROM "{schema}".outbox '
                                    f"WHERE {match.format(col=KEY_TEXT)}", prefixes)
            snap[f"{schema}.outbox"] = sorted((str(r["id"]), r["topic"], bytes(r["key"]).decode(),
                                               str(hash(bytes(r["value"])))) for r in rows)
            snap[f"{schema}.processed_events (count)"] = [(str(await conn.fetchval(
                f'SELECT count(*) FROM "{schema}".processed_events WHERE event_id = ANY($1::uuid[])',
                list(event_ids))),)]
    finally:
        await conn.close()
    return snap


def snapshot_changes(before: dict[str, list[tuple]], after: dict[str, list[tuple]]) -> list[str]:
    problems = []
    for table in before:
        gone = sorted(set(before[table]) - set(after.get(table, [])))
        new = sorted(set(after.get(table, [])) - set(before[table]))
        if gone or new:
            problems.append(f"{table}: {len(new)} rows new or changed, {len(gone)} gone or changed; "
                            f"e.g. now {new[:2]}, was {gone[:2]}")
    return problems
