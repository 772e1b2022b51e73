"""Inventory's handlers: plain functions over a unit of work (`orderflow/runtime/unit.py`).

Each batch is one transaction: lock the rows it touches, let the pure core decide, write levels, ledger and order
states, and emit the events. PostgreSQL is the source of truth for "once": order.status needs no event-id key
because an order's row only moves forward (open -> deducted -> returned, open -> closed), so a duplicate or a
replay finds it past that step; stock.adjusted, whose deltas are not idempotent and which a producer may resend
under the same event id at a new offset, is deduplicated by event id (`uow.fresh`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from contracts import (
    DeductionKind,
    DeductionLine,
    InventoryDeduction,
    InventoryLevel,
    OrderStatusChanged,
    StockAdjusted,
    derived_event_id,
    now,
)
from orderflow.runtime.unit import UnitOfWork
from services.inventory import core
from services.inventory import repository as repo

log = logging.getLogger(__name__)


class InventoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.deductions = Counter("inventory_deductions_total", "Orders whose stock was deducted", registry=r)
        self.returns = Counter("inventory_returns_total", "Canceled orders whose stock was returned", registry=r)
        self.units_moved = Counter("inventory_units_moved_total", "Units deducted or returned", ["kind"], registry=r)
        self.restocks = Counter("inventory_adjustments_total", "stock.adjusted events applied", registry=r)
        self.shortfalls = Counter("inventory_shortfalls_total", "Order lines deducted short (moved < asked)",
                                  registry=r)
        self.rejected = Counter("inventory_rejected_total", "order.status events rejected (unknown SKU)", registry=r)

    def count(self, outcome: core.Outcome) -> None:
        for order_id, _, kind, lines in outcome.deductions():
            (self.deductions if kind is DeductionKind.DEDUCTED else self.returns).inc()
            self.units_moved.labels(kind.value).inc(sum(m.moved for m in lines))
            self.shortfalls.inc(sum(1 for m in lines if m.shortfall))
            if kind is DeductionKind.DEDUCTED and any(m.shortfall for m in lines):
                log.info("order %s deducted short: %s", order_id, [(m.sku, m.asked, m.moved) for m in lines])
        self.restocks.inc(outcome.applied_adjustments)
        self.rejected.inc(len(outcome.rejected))


@dataclass(frozen=True)
class Context:
    metrics: InventoryMetrics | None = None


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
        event_id=derived_event_id("inventory.deductions", shop_id, order_id, kind.value), occurred_at=now(),
        shop_id=shop_id, order_id=order_id, kind=kind,
        lines=[DeductionLine.model_construct(sku=m.sku, asked=m.asked, moved=m.moved) for m in lines],
    )


async def _write(uow: UnitOfWork, outcome: core.Outcome) -> None:
    rows = await repo.write_levels(uow.conn, outcome.levels)
    await repo.insert_moves(uow.conn, outcome.moves)
    await repo.save_order_states(uow.conn, outcome.orders)
    uow.emit([*(deduction_event(*d) for d in outcome.deductions()), *(level_event(r) for r in rows)])
    metrics = getattr(uow.context, "metrics", None)
    if metrics is not None:
        uow.after_commit(lambda: metrics.count(outcome))


async def order_status(uow: UnitOfWork, events: list[OrderStatusChanged]) -> None:
    """Deduct a committed order's stock once, return a canceled one's once; refuse unknown SKUs (DLQ)."""
    commands = [core.command_for_status(e) for e in events]
    orders = {c.key for c in commands if c is not None}  # (shop_id, order_id): one shop's 1001 is not another's
    if not orders:
        return
    stock_keys = {(c.shop_id, sku) for c in commands if isinstance(c, core.CommitOrder) for sku, _ in c.lines}
    book = await repo.load_book(uow.conn, orders, stock_keys)
    outcome = core.apply(book, commands)
    await _write(uow, outcome)
    for index, reason in outcome.rejected.items():
        uow.reject(events[index], reason)


async def stock_adjusted(uow: UnitOfWork, events: list[StockAdjusted]) -> None:
    """Apply each adjustment once per event id (a delta applied twice would be wrong)."""
    fresh = {id(e) for e in await uow.fresh(events)}
    commands: list[core.Command | None] = [core.command_for_adjustment(e) if id(e) in fresh else None
                                           for e in events]
    keys = {(c.shop_id, c.sku) for c in commands if isinstance(c, core.AdjustStock)}
    created = await repo.create_missing_stock(uow.conn, keys)
    levels = await repo.lock_levels(uow.conn, keys)
    book = core.Book(levels={k: v for k, v in levels.items() if k not in created})
    await _write(uow, core.apply(book, commands))
