"""A batch of stream events applied to the orders they touch with one statement per table, not per event.

Why: applying events one at a time cost about ten PostgreSQL round trips per order.placed (lock, held payments,
shop settings, insert, history, outbox, settlement), and those round trips were most of the orders worker's time
(README, "Where the time goes"). Here the batch locks and loads its orders, held payments, held cancel requests
and shop settings in a handful of statements, the pure core decides event by event in memory, in offset order,
and `flush` writes every table once. The back office's single-order changes keep using `repository.apply`; both
build their history rows and order.status events with `repository.changes_of`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from contracts import OrderCancelRequested, OrderPlaced, OrderStatusChanged, PaymentConfirmed, now
from orderflow.runtime import outbox
from services.orders.core import Decision, OrderState, PaymentFacts
from services.orders.repository import Order, changes_of, insert_history, lock_orders, update_orders, writes_nothing


class OrderBatch:
    """The orders of one batch, locked for its transaction; changed in memory; written back by `flush`."""

    def __init__(self, locked: list[str], orders: dict[str, Order]) -> None:
        self.locked = locked
        self.orders = orders
        self.held_payments: dict[str, list[tuple[str, PaymentFacts]]] = defaultdict(list)
        self.held_cancels: dict[str, list[tuple[Any, str | None]]] = defaultdict(list)
        self.ignores_incomplete: dict[str, bool] = {}
        self._inserted: set[str] = set()
        self._changed: set[str] = set()
        self._history: list[tuple] = []
        self._events: list[OrderStatusChanged] = []
        self._payment_outcomes: list[tuple[str, str, bool, str]] = []
        self._cancel_outcomes: list[tuple[Any, str]] = []

    @classmethod
    async def lock(cls, conn: asyncpg.Connection, order_ids: Iterable[str]) -> OrderBatch:
        """Take every order's lock and load them (`repository.lock_orders`)."""
        ids = sorted(set(order_ids))
        return cls(ids, await lock_orders(conn, ids))

    async def load_held(self, conn: asyncpg.Connection, shop_ids: Iterable[str]) -> None:
        """What order.placed needs besides the orders: payments and cancels that came first, the shops' setting."""
        ids = self.locked
        for r in await conn.fetch(
                "SELECT order_id, payment_id, amount_cents, currency FROM payments "
                "WHERE order_id = ANY($1::text[]) AND outcome IS NULL ORDER BY received_at, payment_id", ids):
            self.held_payments[r["order_id"]].append((r["payment_id"], PaymentFacts(r["amount_cents"], r["currency"])))
        for r in await conn.fetch(
                "SELECT order_id, event_id, reason FROM cancel_requests "
                "WHERE order_id = ANY($1::text[]) AND outcome IS NULL ORDER BY received_at, event_id", ids):
            self.held_cancels[r["order_id"]].append((r["event_id"], r["reason"]))
        shops = list(set(shop_ids))
        found = {r["shop_id"]: r["ignore_incomplete_orders"] for r in await conn.fetch(
            "SELECT shop_id, ignore_incomplete_orders FROM shops WHERE shop_id = ANY($1::text[])", shops)}
        self.ignores_incomplete = {shop: found.get(shop, True) for shop in shops}

    # --- changes in memory ---------------------------------------------------------------------------------------

    def add(self, event: OrderPlaced, state: OrderState) -> Order:
        at = now()
        order = Order(
            order_id=event.order_id, shop_id=event.shop_id, cart_id=event.cart_id,
            customer=event.customer.model_dump(mode="json", exclude_none=True),
            items=[i.model_dump(mode="json") for i in event.items], total_cents=event.total_cents,
            currency=event.currency, payment_method=event.payment.method, payment_provider=event.payment.provider,
            state=state, payment_mismatch=False, placed_at=event.occurred_at, updated_at=at, version=0,
        )
        self.orders[order.order_id] = order
        self._inserted.add(order.order_id)
        return order

    def apply(self, order: Order, decision: Decision) -> Order:
        """The batch's `repository.apply`: same rows and events, written by `flush`."""
        if writes_nothing(order, decision):
            return order
        history, events, version = changes_of(order, decision, now())
        self._history.extend(history)
        self._events.extend(events)
        changed = replace(order, state=decision.state, version=version,
                          payment_mismatch=order.payment_mismatch or decision.payment_mismatch, updated_at=now())
        self.orders[order.order_id] = changed
        self._changed.add(order.order_id)
        return changed

    def settle_payment(self, order_id: str, payment_id: str, applied: bool, outcome: str) -> None:
        self._payment_outcomes.append((order_id, payment_id, applied, outcome[:500]))

    def settle_cancel(self, event_id: Any, outcome: str) -> None:
        self._cancel_outcomes.append((event_id, outcome[:500]))

    # --- writing back ------------------------------------------------------------------------------------------

    async def flush(self, conn: asyncpg.Connection) -> None:
        """One statement per table, in foreign-key order; the order.status events staged in the same transaction."""
        inserted = [self.orders[o] for o in sorted(self._inserted)]
        if inserted:
            await conn.executemany(
                """INSERT INTO orders (order_id, shop_id, cart_id, customer, customer_email, customer_name, items,
                                       total_cents, currency, payment_method, payment_provider, status,
                                       payment_status, payment_mismatch, placed_at, version)
                   VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16)""",
                [(o.order_id, o.shop_id, o.cart_id, json.dumps(o.customer), o.customer.get("email"),
                  o.customer.get("name"), json.dumps(o.items), o.total_cents, o.currency, o.payment_method,
                  o.payment_provider, o.state.status.value, o.state.payment_status.value, o.payment_mismatch,
                  o.placed_at, o.version) for o in inserted])
        updated = [self.orders[o] for o in sorted(self._changed - self._inserted)]
        if updated:
            await update_orders(conn, updated)
        if self._history:
            await insert_history(conn, self._history)
        if self._payment_outcomes:
            await conn.executemany(
                "UPDATE payments SET applied = $3, outcome = $4 WHERE order_id = $1 AND payment_id = $2",
                self._payment_outcomes)
        if self._cancel_outcomes:
            await conn.executemany("UPDATE cancel_requests SET outcome = $2 WHERE event_id = $1",
                                   self._cancel_outcomes)
        await outbox.stage(conn, self._events)


async def record_payments(conn: asyncpg.Connection, events: Sequence[PaymentConfirmed]) -> set[tuple[str, str]]:
    """Keep every payment by its gateway id; returns the (order_id, payment_id) pairs not recorded before."""
    rows = await conn.fetch(
        """INSERT INTO payments (order_id, payment_id, shop_id, amount_cents, currency, provider)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
           ON CONFLICT DO NOTHING RETURNING order_id, payment_id""",
        [e.order_id for e in events], [e.payment_id for e in events], [e.shop_id for e in events],
        [e.amount_cents for e in events], [e.currency for e in events], [e.provider for e in events])
    return {(r["order_id"], r["payment_id"]) for r in rows}


async def record_cancel_requests(conn: asyncpg.Connection, events: Sequence[OrderCancelRequested]) -> None:
    await conn.execute(
        """INSERT INTO cancel_requests (event_id, order_id, reason)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING""",
        [e.event_id for e in events], [e.order_id for e in events], [e.reason for e in events])
