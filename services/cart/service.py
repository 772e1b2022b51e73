"""The cart service: persistent carts, their view against stock, and abandoned-checkout detection.

Inputs: cart.updated, checkout.started, order.placed, order.status, inventory.levels, shop.settings.
Output: checkout.abandoned, through the outbox.

State lives twice. A faust table keyed by cart_id (RocksDB in workers, changelogged, partitioned like
cart.updated) holds each cart's newest snapshot in memory; PostgreSQL holds the durable copy that any worker can
serve and that survives losing the broker's changelog. Checkout watches live only in PostgreSQL (see
`build`'s note on the windowed table).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

import asyncpg
import faust
from faust.exceptions import PartitionsMismatch
from prometheus_client import Counter, Gauge

from contracts import CartUpdated, CheckoutStarted, ContractError, decode, now, topics
from orderflow.runtime import outbox
from orderflow.runtime.app import Incoming, Runtime
from orderflow.runtime.db import first_times
from orderflow.services import ServiceSpec
from orderflow.settings import Settings
from services.cart import core, repository
from services.cart.api import cart_view_handler

log = logging.getLogger(__name__)

TABLE_READY_SECONDS = 15.0


def add_one(table: faust.types.tables.WindowWrapperT, key: str) -> None:
    table[key] += 1


async def write_table(write: Callable[[], object], what: str) -> None:
    """faust checks a table's changelog partition count on its first write; a changelog created moments ago can
    still show 0 partitions in the consumer's metadata. Wait for the metadata rather than let the agent crash (a
    crash acks and skips the event)."""
    deadline = time.monotonic() + TABLE_READY_SECONDS
    while True:
        try:
            write()
            return
        except PartitionsMismatch as exc:
            if time.monotonic() >= deadline:
                log.error("%s not written: %s", what, str(exc).replace("\n", " "))
                return
            await asyncio.sleep(0.25)


class CartMetrics:
    def __init__(self, rt: Runtime) -> None:
        r = rt.metrics.registry
        self.snapshots = Counter("orderflow_cart_snapshots_total", "Cart snapshots applied", registry=r)
        self.open_carts = Gauge("orderflow_cart_open_carts", "Carts not yet turned into an order", registry=r)
        self.abandoned = Counter("orderflow_cart_abandoned_checkouts_total", "Abandoned checkouts detected",
                                 registry=r)
        self.out_of_stock_shown = Counter("orderflow_cart_out_of_stock_items_shown_total",
                                          "Cart lines shown as out of stock by GET /carts", registry=r)
        self.repeat_checkouts = Counter(
            "orderflow_cart_repeat_checkouts_total",
            "checkout.started for a cart that already started one in the same window (windowed table)", registry=r)


def _checkout_facts(e: CheckoutStarted) -> core.Started:
    return core.Started(e.cart_id, e.shop_id, e.event_id, e.customer.model_dump(mode="json", exclude_none=True),
                        [i.model_dump(mode="json", exclude_none=True) for i in e.items], e.occurred_at)


def build(settings: Settings) -> Runtime:
    """Wires handlers, the two faust tables, the abandon scanner and GET /carts/{cart_id}.

    Why the windowed table is only a metric and the abandon decision lives in PostgreSQL: in faust 0.15.3 a
    window-close callback silently skips keys on tables with more than one partition, does not fire for windows
    that were open across a restart or rebalance, and fires again when a replay rebuilds the table. A row per
    checkout with a due time, claimed by `UPDATE ... WHERE state = 'open'` in the transaction that stages the
    event, has none of those holes: exactly one checkout.abandoned across 8 partitions, restarts and replays.
    """
    rt = Runtime(settings)
    metrics = CartMetrics(rt)
    default_after = timedelta(seconds=settings.abandon_after_seconds)
    partitions = settings.topic_partitions

    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    carts_table = rt.app.Table("carts", default=None, partitions=partitions, schema=json_schema)
    checkouts_in_window = rt.app.Table("checkouts-started", default=int, partitions=partitions, schema=json_schema,
                                       ).tumbling(default_after, expires=default_after * 2)

    # --- faust tables: plain agents, so each write goes to the changelog partition of its source event ------

    @rt.app.agent(rt.topic(topics.CART_UPDATED), name="cart.carts-table")
    async def keep_carts_table(stream: faust.StreamT) -> None:
        async for value in stream:
            try:
                cart = decode(CartUpdated, value)
            except ContractError:
                continue  # the PostgreSQL handler dead-letters it
            kept = carts_table.get(cart.cart_id)
            if kept is None or datetime.fromisoformat(kept["occurred_at"]) < cart.occurred_at:
                await write_table(partial(carts_table.__setitem__, cart.cart_id, cart.model_dump(mode="json")),
                                  f"cart {cart.cart_id} (carts table)")

    @rt.app.agent(rt.topic(topics.CHECKOUT_STARTED), name="cart.checkouts-window")
    async def count_checkouts(stream: faust.StreamT) -> None:
        async for value in stream:
            try:
                started = decode(CheckoutStarted, value)
            except ContractError:
                continue
            await write_table(partial(add_one, checkouts_in_window, started.cart_id),
                              f"checkout of cart {started.cart_id} (checkouts window)")
            if checkouts_in_window[started.cart_id].current() > 1:
                metrics.repeat_checkouts.inc()

    # --- PostgreSQL: the durable cart, stock, settings and checkout watches -----------------------------------

    @rt.consume(topics.CART_UPDATED, batch=200, within=0.05)
    async def carts_updated(batch: list[Incoming[CartUpdated]]) -> None:
        snapshots = [(e.cart_id, e.shop_id, e.customer.model_dump(mode="json", exclude_none=True),
                      [i.model_dump(mode="json", exclude_none=True) for i in e.items], e.occurred_at)
                     for e in (i.event for i in batch)]
        pool = await rt.pool()
        async with pool.acquire() as conn, conn.transaction():
            await repository.save_snapshots(conn, snapshots)
        metrics.snapshots.inc(len(snapshots))

    @rt.consume(topics.INVENTORY_LEVELS, batch=500, within=0.05)
    async def levels_reported(batch: list[Incoming]) -> None:
        pool = await rt.pool()
        async with pool.acquire() as conn, conn.transaction():
            await repository.save_levels(conn, [(e.shop_id, e.sku, e.available, e.updated_at)
                                                for e in (i.event for i in batch)])

    @rt.consume(topics.SHOP_SETTINGS, batch=100, within=0.05)
    async def shop_settings_changed(batch: list[Incoming]) -> None:
        pool = await rt.pool()
        async with pool.acquire() as conn, conn.transaction():
            await repository.save_shop_settings(conn, [(e.shop_id, e.abandon_after_seconds, e.occurred_at)
                                                       for e in (i.event for i in batch)])

    async def watch(conn: asyncpg.Connection, spec: topics.TopicSpec, facts: list, decide) -> None:  # noqa: ANN001
        """Apply checkout transitions (`decide` is a core.on_* rule) for new events, in offset order."""
        new = await first_times(conn, [event_id for event_id, _ in facts], spec.name)
        fresh = [f for event_id, f in facts if event_id in new]
        if not fresh:
            return
        current = await repository.lock_checkouts(conn, [f.cart_id for f in fresh])
        after = await repository.abandon_after_by_shop(conn, [f.shop_id for f in fresh])
        changed: dict[str, core.Checkout] = {}
        for f in fresh:
            seconds = after.get(f.shop_id)
            decided = decide(current.get(f.cart_id), f, timedelta(seconds=seconds) if seconds else default_after)
            if decided is not None:
                current[f.cart_id] = changed[f.cart_id] = decided
        await repository.save_checkouts(conn, changed.values())

    async def in_transaction(fn, *args) -> None:  # noqa: ANN001
        pool = await rt.pool()
        async with pool.acquire() as conn, conn.transaction():
            await fn(conn, *args)

    @rt.consume(topics.CHECKOUT_STARTED, batch=200, within=0.05)
    async def checkouts_started(batch: list[Incoming[CheckoutStarted]]) -> None:
        await in_transaction(watch, topics.CHECKOUT_STARTED,
                             [(i.event.event_id, _checkout_facts(i.event)) for i in batch], core.on_checkout_started)

    @rt.consume(topics.ORDER_PLACED, batch=200, within=0.05)
    async def orders_placed(batch: list[Incoming]) -> None:
        events = [i.event for i in batch]
        pool = await rt.pool()
        async with pool.acquire() as conn, conn.transaction():
            await repository.mark_ordered(conn, [(e.cart_id, e.shop_id, e.order_id, e.occurred_at) for e in events])
            await watch(conn, topics.ORDER_PLACED, [(e.event_id, core.Placed(
                e.cart_id, e.shop_id, e.order_id, e.customer.model_dump(mode="json", exclude_none=True),
                [i.model_dump(mode="json") for i in e.items], e.occurred_at, e.payment.method == "gateway"))
                for e in events], core.on_order_placed)

    @rt.consume(topics.ORDER_STATUS, batch=200, within=0.05)
    async def order_status_changed(batch: list[Incoming]) -> None:
        await in_transaction(watch, topics.ORDER_STATUS, [(e.event_id, core.StatusChanged(
            e.cart_id, e.shop_id, e.order_id, e.status.value, e.payment_status.value,
            e.customer.model_dump(mode="json", exclude_none=True), [i.model_dump(mode="json") for i in e.items],
            e.occurred_at)) for e in (i.event for i in batch) if e.cart_id], core.on_order_status)

    # --- the abandon scanner --------------------------------------------------------------------------------

    @rt.background
    async def abandon_scanner() -> None:
        """Every ABANDON_SCAN_MS: claim watches past due and stage one checkout.abandoned each, atomically."""
        next_count = 0.0
        while True:
            pool = await rt.pool()
            async with pool.acquire() as conn, conn.transaction():
                claimed = await repository.claim_due_checkouts(conn)
                at = now()
                await outbox.stage(conn, [core.abandoned_event(c, settings.public_store_url, at) for c in claimed])
            if claimed:
                metrics.abandoned.inc(len(claimed))
                rt.outbox.wake()
                log.info("abandoned checkouts: %s", ", ".join(c.cart_id for c in claimed))
            if time.monotonic() >= next_count:
                metrics.open_carts.set(await repository.count_carts(pool))
                next_count = time.monotonic() + 10.0
            await asyncio.sleep(settings.abandon_scan_seconds)

    rt.http.route("GET", "/carts/{cart_id}", cart_view_handler(rt.pool, metrics.out_of_stock_shown), auth=False)
    return rt


SERVICE = ServiceSpec(
    name="cart", port_env="CART_HTTP_PORT", default_port=8102, build=build,
    description="persistent carts, out-of-stock display, abandoned checkouts",
)
