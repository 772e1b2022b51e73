"""The orders service: order.placed, payment.confirmed, order.cancel_requested, shop.settings and
inventory.deductions in; order.status, order.message and shop.settings out; the back-office HTTP API.

Each handler: one transaction per batch, over the events not seen before (by event id), under the locks of the
orders they touch; the pure core decides event by event, in offset order; `OrderBatch` writes each table once and
stages the events in that transaction.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from prometheus_client import Counter

from contracts import (
    InventoryDeduction,
    OrderCancelRequested,
    OrderPlaced,
    PaymentConfirmed,
    ShopSettings,
    topics,
)
from orderflow.runtime import db
from orderflow.services import ServiceSpec
from services.orders import core
from services.orders import repository as repo
from services.orders.batch import OrderBatch, record_cancel_requests, record_payments

if TYPE_CHECKING:
    import asyncpg

    from orderflow.runtime.app import Incoming, Runtime
    from orderflow.settings import Settings


class Orders:
    """The use cases, shared by the stream handlers and the HTTP API."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.status_changes = Counter("orderflow_order_status_changes_total",
                                      "Real order status changes, by new status", ["status"],
                                      registry=rt.metrics.registry)

    def count(self, decisions: list[core.Decision]) -> None:
        """Called after commit: one tick per real change."""
        for decision in decisions:
            for change in decision.changes:
                self.status_changes.labels(change.after.status.value).inc()

    async def place(self, conn: asyncpg.Connection, events: list[OrderPlaced]) -> list[core.Decision]:
        batch = await OrderBatch.lock(conn, [e.order_id for e in events])
        await batch.load_held(conn, [e.shop_id for e in events])
        decisions: list[core.Decision] = []
        for event in events:
            if event.order_id in batch.orders:
                continue  # the same order placed again under another event id: the first one stands
            held = batch.held_payments.pop(event.order_id, [])
            matching = [pid for pid, facts in held if core.payment_matches(facts, event.total_cents, event.currency)]
            decision = core.place(event.payment.method, batch.ignores_incomplete[event.shop_id],
                                  paid_already=bool(matching))
            if len(matching) < len(held):
                decision = replace(decision, payment_mismatch=True)
            order = batch.apply(batch.add(event, decision.state), decision)
            for pid, facts in held:
                if pid in matching:
                    applied = pid == matching[0]
                    batch.settle_payment(event.order_id, pid, applied,
                                         "applied" if applied else "no change: already paid")
                else:
                    mismatch = core.confirm_payment(order.state, facts, event.total_cents, event.currency)
                    batch.settle_payment(event.order_id, pid, False, mismatch.refused or "mismatch")
            decisions.append(decision)
            for request_id, reason in batch.held_cancels.pop(event.order_id, []):
                cancel = core.customer_cancel(order.state, reason)
                order = batch.apply(order, cancel)
                batch.settle_cancel(request_id, _outcome(cancel, "canceled"))
                decisions.append(cancel)
        await batch.flush(conn)
        return decisions

    async def confirm_payments(self, conn: asyncpg.Connection, events: list[PaymentConfirmed]) -> list[core.Decision]:
        batch = await OrderBatch.lock(conn, [e.order_id for e in events])
        new = await record_payments(conn, events)
        decisions: list[core.Decision] = []
        for event in events:
            order = batch.orders.get(event.order_id)
            if (event.order_id, event.payment_id) not in new or order is None:
                continue  # a resend of a known payment, or held until its order arrives
            new.discard((event.order_id, event.payment_id))  # twice in one batch: the second is a resend
            decision = core.confirm_payment(order.state, core.PaymentFacts(event.amount_cents, event.currency),
                                            order.total_cents, order.currency)
            batch.apply(order, decision)
            batch.settle_payment(event.order_id, event.payment_id, bool(decision.changes),
                                 _outcome(decision, "applied"))
            decisions.append(decision)
        await batch.flush(conn)
        return decisions

    async def cancels_requested(self, conn: asyncpg.Connection,
                                events: list[OrderCancelRequested]) -> list[core.Decision]:
        batch = await OrderBatch.lock(conn, [e.order_id for e in events])
        await record_cancel_requests(conn, events)
        decisions: list[core.Decision] = []
        for event in events:
            order = batch.orders.get(event.order_id)
            if order is None:
                continue  # held until the order arrives
            decision = core.customer_cancel(order.state, event.reason)
            batch.apply(order, decision)
            batch.settle_cancel(event.event_id, _outcome(decision, "canceled"))
            decisions.append(decision)
        await batch.flush(conn)
        return decisions


def _outcome(decision: core.Decision, done: str) -> str:
    if decision.refused:
        return f"refused: {decision.refused}"
    return done if decision.changes else "no change"


def build(settings: Settings) -> Runtime:
    from orderflow.runtime.app import Runtime
    from services.orders import api, web

    rt = Runtime(settings)
    orders = Orders(rt)

    async def in_transaction(batch: list[Incoming], topic: str, use_case) -> None:  # noqa: ANN001
        """One transaction per batch over its new events (by event id, in offset order): a failure rolls it all back
        and the runtime retries event by event."""
        pool = await rt.pool()
        async with pool.acquire() as conn, conn.transaction():
            fresh = await db.first_times(conn, [i.event.event_id for i in batch], topic)
            events = []
            for incoming in batch:
                if incoming.event.event_id in fresh:
                    fresh.discard(incoming.event.event_id)  # a repeat inside the batch is a duplicate too
                    events.append(incoming.event)
            decided = await use_case(conn, events) if events else []
        orders.count(decided or [])

    @rt.consume(topics.ORDER_PLACED, batch=500)
    async def order_placed(batch: list[Incoming[OrderPlaced]]) -> None:
        await in_transaction(batch, topics.ORDER_PLACED.name, orders.place)

    @rt.consume(topics.PAYMENT_CONFIRMED, batch=500)
    async def payment_confirmed(batch: list[Incoming[PaymentConfirmed]]) -> None:
        await in_transaction(batch, topics.PAYMENT_CONFIRMED.name, orders.confirm_payments)

    @rt.consume(topics.ORDER_CANCEL_REQUESTED, batch=100)
    async def cancel_requested(batch: list[Incoming[OrderCancelRequested]]) -> None:
        await in_transaction(batch, topics.ORDER_CANCEL_REQUESTED.name, orders.cancels_requested)

    @rt.consume(topics.SHOP_SETTINGS, batch=100)
    async def shop_settings(batch: list[Incoming[ShopSettings]]) -> None:
        async def store(conn: asyncpg.Connection, events: list[ShopSettings]) -> None:
            for event in events:  # rare; each keeps the newest by occurred_at
                await repo.upsert_shop(conn, event)

        await in_transaction(batch, topics.SHOP_SETTINGS.name, store)

    @rt.consume(topics.INVENTORY_DEDUCTIONS, batch=500)
    async def inventory_deductions(batch: list[Incoming[InventoryDeduction]]) -> None:
        await in_transaction(batch, topics.INVENTORY_DEDUCTIONS.name, repo.record_stock_outcomes)

    api.add_routes(rt, orders)
    web.add_routes(rt, orders)  # the back-office pages under /backoffice
    return rt


SERVICE = ServiceSpec(
    name="orders",
    port_env="ORDERS_HTTP_PORT",
    default_port=8101,
    build=build,
    description="Order lifecycle and back office: order.placed/payment.confirmed in, order.status out.",
)
