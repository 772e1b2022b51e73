"""The orders service's stream handlers: plain functions over a unit of work (`orderflow/runtime/unit.py`).

Each batch is one transaction under the locks of the orders it touches; the pure core decides event by event, in
offset order; `OrderBatch` writes each table once and stages the order.status events in that transaction.
Redelivery is harmless by position (the runtime) and by business key: an order is placed once per (shop, order
id), a payment applied once per (shop, order, payment id), a cancel request recorded once per (shop, event id).
Every look-up names the event's shop: a payment or cancel for an id only another shop has is held for this shop's
order (DESIGN.md, "Shops are tenants").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from prometheus_client import CollectorRegistry, Counter

from contracts import (
    ChangedBy,
    InventoryDeduction,
    InventoryLevel,
    MailStatusChanged,
    OrderCancelRequested,
    OrderPlaced,
    PaymentConfirmed,
    PaymentRefunded,
    ShopSettings,
)
from orderflow.runtime.unit import UnitOfWork
from services.orders import core
from services.orders import repository as repo
from services.orders.batch import OrderBatch, record_cancel_requests, record_payments


class OrdersMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.status_changes = Counter("orderflow_order_status_changes_total",
                                      "Real order status changes, by new status", ["status"], registry=registry)

    def count(self, decisions: list[core.Decision]) -> None:
        """Called after commit: one tick per real change."""
        for decision in decisions:
            for change in decision.changes:
                self.status_changes.labels(change.after.status.value).inc()


@dataclass(frozen=True)
class Context:
    metrics: OrdersMetrics | None = None


def _count_after_commit(uow: UnitOfWork, decisions: list[core.Decision]) -> None:
    metrics = getattr(uow.context, "metrics", None)
    if metrics is not None and decisions:
        uow.after_commit(lambda: metrics.count(decisions))


async def order_placed(uow: UnitOfWork, events: list[OrderPlaced]) -> None:
    """A new order's first state; the payments and cancels that came before it are settled now."""
    conn = uow.conn
    batch = await OrderBatch.lock(conn, [(e.shop_id, e.order_id) for e in events])
    await batch.load_held(conn)
    decisions: list[core.Decision] = []
    for event in events:
        key = (event.shop_id, event.order_id)
        if key in batch.orders:
            continue  # the same order placed again (a resend, a replay): the first one stands
        held = batch.held_payments.pop(key, [])
        placement = core.place_with_held(event.payment.method, batch.ignores_incomplete[event.shop_id],
                                         event.total_cents, event.currency, held)
        order = batch.apply(batch.add(event, placement.decision.state), placement.decision)
        for pid, applied, outcome in placement.settled:
            batch.settle_payment(key, pid, applied, outcome)
        decisions.append(placement.decision)
        for request_id, reason in batch.held_cancels.pop(key, []):
            cancel = core.customer_cancel(order.state, reason)
            order = batch.apply(order, cancel)
            batch.settle_cancel(event.shop_id, request_id, core.outcome_text(cancel, "canceled"))
            decisions.append(cancel)
    await batch.flush(conn)
    _count_after_commit(uow, decisions)


async def payment_confirmed(uow: UnitOfWork, events: list[PaymentConfirmed]) -> None:
    """Pay an order once per (shop, order, payment id); a payment for an order its shop has not placed (yet) is held
    for that shop's order."""
    conn = uow.conn
    batch = await OrderBatch.lock(conn, [(e.shop_id, e.order_id) for e in events])
    new = await record_payments(conn, events)
    decisions: list[core.Decision] = []
    for event in events:
        key = (event.shop_id, event.order_id)
        order = batch.orders.get(key)
        if (*key, event.payment_id) not in new or order is None:
            continue  # a resend of a known payment, or held until its order arrives
        new.discard((*key, event.payment_id))  # twice in one batch: the second is a resend
        decision = core.confirm_payment(order.state, core.PaymentFacts(event.amount_cents, event.currency),
                                        order.total_cents, order.currency)
        batch.apply(order, decision)
        batch.settle_payment(key, event.payment_id, bool(decision.changes),
                             core.outcome_text(decision, "applied"))
        decisions.append(decision)
    await batch.flush(conn)
    _count_after_commit(uow, decisions)


async def payment_refunded(uow: UnitOfWork, events: list[PaymentRefunded]) -> None:
    """A gateway's refund, once per (shop, order, refund id): applied, or refused with its reason (both recorded).
    A refund for an order its shop has not placed (yet) is recorded and left held (outcome null)."""
    conn = uow.conn
    batch = await OrderBatch.lock(conn, [(e.shop_id, e.order_id) for e in events])
    new = await repo.record_refunds(conn, [(e.shop_id, e.order_id, e.refund_id, e.amount_cents, e.currency,
                                            e.provider, e.reason) for e in events])
    decisions: list[core.Decision] = []
    outcomes: list[tuple[str, str, str, bool, str]] = []
    for event in events:
        key = (event.shop_id, event.order_id)
        order = batch.orders.get(key)
        if (*key, event.refund_id) not in new or order is None:
            continue  # a resend of a known refund, or held
        new.discard((*key, event.refund_id))
        decided = core.refund(order.state, order.total_cents, order.currency, order.refunded_cents,
                              event.amount_cents, event.currency, ChangedBy.SYSTEM, event.refund_id)
        if decided.decision.changes:
            batch.apply(replace(order, refunded_cents=decided.refunded_cents), decided.decision)
        outcomes.append((*key, event.refund_id, bool(decided.decision.changes),
                         core.outcome_text(decided.decision, "applied")))
        decisions.append(decided.decision)
    await batch.flush(conn)
    if outcomes:
        await repo.settle_refunds(conn, outcomes)
    _count_after_commit(uow, decisions)


async def cancel_requested(uow: UnitOfWork, events: list[OrderCancelRequested]) -> None:
    """A customer's cancel, honoured while the order is pending; held when the order is not there yet."""
    events = await uow.fresh(events)  # a storefront may resend a request under its event id at a new offset
    if not events:
        return
    conn = uow.conn
    batch = await OrderBatch.lock(conn, [(e.shop_id, e.order_id) for e in events])
    await record_cancel_requests(conn, events)
    decisions: list[core.Decision] = []
    for event in events:
        order = batch.orders.get((event.shop_id, event.order_id))
        if order is None:
            continue  # held until this shop's order arrives
        decision = core.customer_cancel(order.state, event.reason)
        batch.apply(order, decision)
        batch.settle_cancel(event.shop_id, event.event_id, core.outcome_text(decision, "canceled"))
        decisions.append(decision)
    await batch.flush(conn)
    _count_after_commit(uow, decisions)


async def shop_settings(uow: UnitOfWork, events: list[ShopSettings]) -> None:
    """Each shop keeps its newest settings by occurred_at (a replay or a resend changes nothing)."""
    for event in events:
        await repo.upsert_shop(uow.conn, event)
        await repo.store_shop_locale(uow.conn, event)


async def inventory_deductions(uow: UnitOfWork, events: list[InventoryDeduction]) -> None:
    """What inventory did for each order, once per (shop, order, kind), shown on the order."""
    await repo.record_stock_outcomes(uow.conn, events)


async def inventory_levels(uow: UnitOfWork, events: list[InventoryLevel]) -> None:
    """The back office's stock read model: each (shop, SKU) keeps its newest level by updated_at (a compacted topic
    read again from the start, or a redelivery, changes nothing)."""
    await repo.store_stock_levels(uow.conn, events)


async def mail_states(uow: UnitOfWork, events: list[MailStatusChanged]) -> None:
    """The back office's read model of notify's mails: each mail keeps its newest state (an older one, redelivered
    or replayed, changes nothing)."""
    await repo.store_mail_states(uow.conn, events)
