"""The orders service: order.placed, payment.confirmed, order.cancel_requested, shop.settings and
inventory.deductions in; order.status, order.message and shop.settings out; the back-office HTTP API.

Each handler: one transaction per event, keyed by the event id (`db.first_time`) and, for an order, under the
order's lock; the pure core decides; the repository writes the rows and stages the events in that transaction.
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

    async def place(self, conn: asyncpg.Connection, event: OrderPlaced) -> list[core.Decision]:
        if await repo.lock_order(conn, event.order_id) is not None:
            return []  # the same order placed again under another event id: the first one stands
        held = await repo.held_payments(conn, event.order_id)
        matching = [pid for pid, facts in held if core.payment_matches(facts, event.total_cents, event.currency)]
        decision = core.place(event.payment.method, await repo.shop_ignores_incomplete(conn, event.shop_id),
                              paid_already=bool(matching))
        if len(matching) < len(held):
            decision = replace(decision, payment_mismatch=True)
        order = await repo.insert_order(conn, event, decision.state)
        order = await repo.apply(conn, order, decision)
        for pid, facts in held:
            if pid in matching:
                applied = pid == matching[0]
                await repo.settle_payment(conn, event.order_id, pid, applied,
                                          "applied" if applied else "no change: already paid")
            else:
                mismatch = core.confirm_payment(order.state, facts, event.total_cents, event.currency)
                await repo.settle_payment(conn, event.order_id, pid, False, mismatch.refused or "mismatch")
        decisions = [decision]
        for request_id, reason in await repo.held_cancel_requests(conn, event.order_id):
            cancel = core.customer_cancel(order.state, reason)
            order = await repo.apply(conn, order, cancel)
            await repo.settle_cancel_request(conn, request_id, _outcome(cancel, "canceled"))
            decisions.append(cancel)
        return decisions

    async def confirm_payment(self, conn: asyncpg.Connection, event: PaymentConfirmed) -> list[core.Decision]:
        order = await repo.lock_order(conn, event.order_id)
        if not await repo.record_payment(conn, event) or order is None:
            return []  # a resend of a known payment, or held until its order arrives
        decision = core.confirm_payment(order.state, core.PaymentFacts(event.amount_cents, event.currency),
                                        order.total_cents, order.currency)
        await repo.apply(conn, order, decision)
        await repo.settle_payment(conn, event.order_id, event.payment_id, bool(decision.changes),
                                  _outcome(decision, "applied"))
        return [decision]

    async def cancel_requested(self, conn: asyncpg.Connection, event: OrderCancelRequested) -> list[core.Decision]:
        order = await repo.lock_order(conn, event.order_id)
        await repo.record_cancel_request(conn, event.event_id, event.order_id, event.reason)
        if order is None:
            return []  # held until the order arrives
        decision = core.customer_cancel(order.state, event.reason)
        await repo.apply(conn, order, decision)
        await repo.settle_cancel_request(conn, event.event_id, _outcome(decision, "canceled"))
        return [decision]


def _outcome(decision: core.Decision, done: str) -> str:
    if decision.refused:
        return f"refused: {decision.refused}"
    return done if decision.changes else "no change"


def build(settings: Settings) -> Runtime:
    from orderflow.runtime.app import Runtime
    from services.orders import api, web

    rt = Runtime(settings)
    orders = Orders(rt)

    async def each_in_transaction(batch: list[Incoming], topic: str, use_case) -> None:  # noqa: ANN001
        """One transaction per batch: a failure rolls it all back and the runtime retries event by event."""
        pool = await rt.pool()
        decided: list[core.Decision] = []
        async with pool.acquire() as conn, conn.transaction():
            fresh = await db.first_times(conn, [i.event.event_id for i in batch], topic)
            for incoming in batch:
                if incoming.event.event_id in fresh:
                    fresh.discard(incoming.event.event_id)  # a repeat inside the batch is a duplicate too
                    decided.extend(await use_case(conn, incoming.event) or [])
        orders.count(decided)

    @rt.consume(topics.ORDER_PLACED, batch=200)
    async def order_placed(batch: list[Incoming[OrderPlaced]]) -> None:
        await each_in_transaction(batch, topics.ORDER_PLACED.name, orders.place)

    @rt.consume(topics.PAYMENT_CONFIRMED, batch=200)
    async def payment_confirmed(batch: list[Incoming[PaymentConfirmed]]) -> None:
        await each_in_transaction(batch, topics.PAYMENT_CONFIRMED.name, orders.confirm_payment)

    @rt.consume(topics.ORDER_CANCEL_REQUESTED, batch=50)
    async def cancel_requested(batch: list[Incoming[OrderCancelRequested]]) -> None:
        await each_in_transaction(batch, topics.ORDER_CANCEL_REQUESTED.name, orders.cancel_requested)

    @rt.consume(topics.SHOP_SETTINGS, batch=100)
    async def shop_settings(batch: list[Incoming[ShopSettings]]) -> None:
        async def store(conn: asyncpg.Connection, event: ShopSettings) -> None:
            await repo.upsert_shop(conn, event)

        await each_in_transaction(batch, topics.SHOP_SETTINGS.name, store)

    @rt.consume(topics.INVENTORY_DEDUCTIONS, batch=500)
    async def inventory_deductions(batch: list[Incoming[InventoryDeduction]]) -> None:
        async def store(conn: asyncpg.Connection, event: InventoryDeduction) -> None:
            await repo.record_stock_outcome(conn, event)

        await each_in_transaction(batch, topics.INVENTORY_DEDUCTIONS.name, store)

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
