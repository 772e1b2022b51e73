"""The inventory worker: order.status and stock.adjusted in, inventory.deductions and inventory.levels out.

Each batch is one transaction: lock the rows it touches, let the pure core decide, write levels, ledger and
order states, and stage the events to emit in the outbox. PostgreSQL is the source of truth for "once":
order.status needs no processed-event key because an order's row only moves forward (open -> deducted ->
returned, open -> closed), so a duplicate or a replay finds it past that step; stock.adjusted, whose deltas are
not idempotent, records its event ids in processed_events in the same transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from prometheus_client import Counter

from contracts import (
    DeductionKind,
    DeductionLine,
    InventoryDeduction,
    InventoryLevel,
    derived_event_id,
    now,
    topics,
)
from orderflow.runtime import outbox
from orderflow.runtime.app import Incoming, Runtime
from orderflow.runtime.db import first_times
from orderflow.services import ServiceSpec
from orderflow.settings import Settings
from services.inventory import api, core
from services.inventory import repository as repo

log = logging.getLogger(__name__)

T = TypeVar("T")

CONFLICTS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, repo.LostRace)
"""Two workers racing on the same rows during a rebalance: the losing transaction is simply run again."""


class InventoryMetrics:
    def __init__(self, rt: Runtime) -> None:
        r = rt.metrics.registry
        self.deductions = Counter("inventory_deductions_total", "Orders whose stock was deducted", registry=r)
        self.returns = Counter("inventory_returns_total", "Canceled orders whose stock was returned", registry=r)
        self.units_moved = Counter("inventory_units_moved_total", "Units deducted or returned", ["kind"], registry=r)
        self.restocks = Counter("inventory_adjustments_total", "stock.adjusted events applied", registry=r)
        self.shortfalls = Counter("inventory_shortfalls_total", "Order lines deducted short (moved < asked)",
                                  registry=r)
        self.rejected = Counter("inventory_rejected_total", "order.status events rejected (unknown SKU)", registry=r)


# The emitted events are built with model_construct: every field comes from validated input or our own rows,
# and validating thousands of them per batch would cost more than the database work.


def level_event(row: repo.LevelRow) -> InventoryLevel:
    return InventoryLevel.model_construct(
        event_id=derived_event_id("inventory.levels", row.shop_id, row.sku, row.version),
        occurred_at=row.updated_at, shop_id=row.shop_id, sku=row.sku, available=row.available,
        updated_at=row.updated_at,
    )


def deduction_event(order_id: str, shop_id: str, kind: DeductionKind, lines: list[core.Move]) -> InventoryDeduction:
    return InventoryDeduction.model_construct(
        event_id=derived_event_id("inventory.deductions", order_id, kind.value), occurred_at=now(),
        shop_id=shop_id, order_id=order_id, kind=kind,
        lines=[DeductionLine.model_construct(sku=m.sku, asked=m.asked, moved=m.moved) for m in lines],
    )


async def in_transaction(rt: Runtime, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` in one transaction, again if it lost a lock race to another worker."""
    pool = await rt.pool()
    for attempt in range(10):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except CONFLICTS as exc:
            log.info("inventory batch conflicted (%s); retrying (attempt %d)", exc, attempt + 1)
            await asyncio.sleep(0.05 * (attempt + 1))
    async with pool.acquire() as conn, conn.transaction():
        return await work(conn)


def build(settings: Settings) -> Runtime:
    rt = Runtime(settings)
    metrics = InventoryMetrics(rt)
    api.add_routes(rt)

    async def write(conn: asyncpg.Connection, outcome: core.Outcome, shops: dict[str, str]) -> None:
        rows = await repo.write_levels(conn, outcome.levels)
        await repo.insert_moves(conn, outcome.moves)
        await repo.save_order_states(conn, outcome.orders, shops)
        deductions = [deduction_event(*d) for d in outcome.deductions()]
        await outbox.stage(conn, [*deductions, *(level_event(r) for r in rows)])

    def count(outcome: core.Outcome) -> None:
        for order_id, _, kind, lines in outcome.deductions():
            (metrics.deductions if kind is DeductionKind.DEDUCTED else metrics.returns).inc()
            metrics.units_moved.labels(kind.value).inc(sum(m.moved for m in lines))
            metrics.shortfalls.inc(sum(1 for m in lines if m.shortfall))
            if kind is DeductionKind.DEDUCTED and any(m.shortfall for m in lines):
                log.info("order %s deducted short: %s", order_id, [(m.sku, m.asked, m.moved) for m in lines])
        metrics.restocks.inc(outcome.applied_adjustments)

    @rt.consume(topics.ORDER_STATUS, batch=1000, within=0.02)
    async def order_status(batch: list[Incoming[Any]]) -> None:
        commands = [core.command_for_status(i.event) for i in batch]
        orders = {c.order_id: c.shop_id for c in commands if c is not None}
        if not orders:
            return
        stock_keys = {(c.shop_id, sku) for c in commands if isinstance(c, core.CommitOrder) for sku, _ in c.lines}

        async def work(conn: asyncpg.Connection) -> core.Outcome:
            book = await repo.load_book(conn, orders, stock_keys)
            outcome = core.apply(book, commands)
            await write(conn, outcome, orders)
            return outcome

        outcome = await in_transaction(rt, work)
        count(outcome)
        # The rest of the batch is committed; only the rejected events go to the DLQ (before the offsets are acked).
        metrics.rejected.inc(len(outcome.rejected))
        await asyncio.gather(*(rt.dlq.send(batch[i].source, reason, "rejected")
                               for i, reason in outcome.rejected.items()))

    @rt.consume(topics.STOCK_ADJUSTED, batch=500, within=0.02)
    async def stock_adjusted(batch: list[Incoming[Any]]) -> None:
        async def work(conn: asyncpg.Connection) -> core.Outcome:
            fresh = await first_times(conn, [i.event.event_id for i in batch], topics.STOCK_ADJUSTED.name)
            commands: list[core.Command | None] = []
            for incoming in batch:
                applies = incoming.event.event_id in fresh
                fresh.discard(incoming.event.event_id)  # a duplicate inside the batch applies once
                commands.append(core.command_for_adjustment(incoming.event) if applies else None)
            keys = {(c.shop_id, c.sku) for c in commands if isinstance(c, core.AdjustStock)}
            created = await repo.create_missing_stock(conn, keys)
            levels = await repo.lock_levels(conn, keys)
            book = core.Book(levels={k: v for k, v in levels.items() if k not in created})
            outcome = core.apply(book, commands)
            await write(conn, outcome, {})
            return outcome

        count(await in_transaction(rt, work))

    return rt


SERVICE = ServiceSpec(
    name="inventory",
    port_env="INVENTORY_HTTP_PORT",
    default_port=8103,
    build=build,
    description="Stock per shop and SKU: deducted once per committed order, returned once on cancel.",
)
