"""A batch of stream events applied to the orders they touch with one statement per table, not per event.

Why: applying events one at a time cost about ten PostgreSQL round trips per order.placed (lock, held payments,
shop settings, insert, history, outbox, settlement), and those round trips were most of the orders worker's time
(README, "Where the time goes"). Here the batch locks and loads its orders, held payments, held cancel requests
and shop settings in a handful of statements, the pure core decides event by event in memory, in offset order,
and `flush` writes every table once. The back office's single-order changes keep using `repository.apply`; both
build their history rows and order.status events with `repository.changes_of`.

Every order, held payment and held cancel is keyed by (shop_id, order_id): a payment or cancel whose shop has no
such order is held for that shop's order, never matched to another shop's order with the same id.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from contracts import OrderCancelRequested, OrderFlagged, OrderPlaced, OrderStatusChanged, PaymentConfirmed, now
from orderflow.runtime import outbox
from services.orders.core import Decision, OrderState, PaymentFacts
from services.orders.repository import (
    DETAILS,
    Order,
    OrderKey,
    changes_of,
    details_params,
    flagged,
    insert_history,
    lock_orders,
    update_orders,
    writes_nothing,
)


class OrderBatch:
    """The orders of one batch, locked for its transaction; changed in memory; written back by `flush`."""

    def __init__(self, locked: list[OrderKey], orders: dict[OrderKey, Order]) -> None:
        self.locked = locked
        self.orders = orders
        self.held_payments: dict[OrderKey, list[tuple[str, PaymentFacts]]] = defaultdict(list)
        self.held_cancels: dict[OrderKey, list[tuple[Any, str | None]]] = defaultdict(list)
        self.ignores_incomplete: dict[str, bool] = {}
        self._inserted: set[OrderKey] = set()
        self._changed: set[OrderKey] = set()
        self._history: list[tuple] = []
        self._events: list[OrderStatusChanged | OrderFlagged] = []
        self._payment_outcomes: list[tuple[str, str, str, bool, str]] = []
        self._cancel_outcomes: list[tuple[str, Any, str]] = []

    @classmethod
    async def lock(cls, conn: asyncpg.Connection, keys: Iterable[OrderKey]) -> OrderBatch:
        """Take every order's lock and load them (`repository.lock_orders`); keys are (shop_id, order_id)."""
        ordered = sorted(set(keys))
        return cls(ordered, await lock_orders(conn, ordered))

    async def load_held(self, conn: asyncpg.Connection) -> None:
        """What order.placed needs besides the orders: the payments and cancels that came first for the same shop's
        order, and the shops' setting."""
        shops, ids = [k[0] for k in self.locked], [k[1] for k in self.locked]
        for r in await conn.fetch(
                "SELECT p.shop_id, p.order_id, p.payment_id, p.amount_cents, p.currency FROM payments p "
                "JOIN unnest($1::text[], $2::text[]) AS k(s, id) ON p.shop_id = k.s AND p.order_id = k.id "
                "WHERE p.outcome IS NULL ORDER BY p.received_at, p.payment_id", shops, ids):
            self.held_payments[r["shop_id"], r["order_id"]].append(
                (r["payment_id"], PaymentFacts(r["amount_cents"], r["currency"])))
        for r in await conn.fetch(
                "SELECT c.shop_id, c.order_id, c.event_id, c.reason FROM cancel_requests c "
                "JOIN unnest($1::text[], $2::text[]) AS k(s, id) ON c.shop_id = k.s AND c.order_id = k.id "
                "WHERE c.outcome IS NULL ORDER BY c.received_at, c.event_id", shops, ids):
            self.held_cancels[r["shop_id"], r["order_id"]].append((r["event_id"], r["reason"]))
        shops = list(set(shops))
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
            details=event.model_dump(mode="json", include=set(DETAILS), exclude_none=True),
        )
        self.orders[order.key] = order
        self._inserted.add(order.key)
        return order

    def apply(self, order: Order, decision: Decision) -> Order:
        """The batch's `repository.apply`: same rows and events, written by `flush`."""
        if writes_nothing(order, decision):
            return order
        history, events, version = changes_of(order, decision, now())
        self._history.extend(history)
        self._events.extend(events)
        changed = replace(order, state=decision.state, version=version, flags=flagged(order, decision),
                          payment_mismatch=order.payment_mismatch or decision.payment_mismatch, updated_at=now())
        self.orders[order.key] = changed
        self._changed.add(order.key)
        return changed

    def settle_payment(self, key: OrderKey, payment_id: str, applied: bool, outcome: str) -> None:
        self._payment_outcomes.append((key[0], key[1], payment_id, applied, outcome[:500]))

    def settle_cancel(self, shop_id: str, event_id: Any, outcome: str) -> None:
        self._cancel_outcomes.append((shop_id, event_id, outcome[:500]))

    # --- writing back ------------------------------------------------------------------------------------------

    async def flush(self, conn: asyncpg.Connection) -> None:
        """One statement per table, in foreign-key order; the order.status events staged in the same transaction."""
        inserted = [self.orders[o] for o in sorted(self._inserted)]
        if inserted:
            await conn.executemany(
                """INSERT INTO orders (order_id, shop_id, cart_id, customer, customer_email, customer_name, items,
                                       total_cents, currency, payment_method, payment_provider, status,
                                       payment_status, payment_mismatch, placed_at, version, shipping_address,
                                       billing_address, shipping, discount_cents, tax_cents, note, locale, flags)
                   VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                           $17::jsonb, $18::jsonb, $19::jsonb, $20, $21, $22, $23, $24::text[])""",
                [(o.order_id, o.shop_id, o.cart_id, json.dumps(o.customer), o.customer.get("email"),
                  o.customer.get("name"), json.dumps(o.items), o.total_cents, o.currency, o.payment_method,
                  o.payment_provider, o.state.status.value, o.state.payment_status.value, o.payment_mismatch,
                  o.placed_at, o.version, *details_params(o.details), sorted(o.flags)) for o in inserted])
        updated = [self.orders[o] for o in sorted(self._changed - self._inserted)]
        if updated:
            await update_orders(conn, updated)
        if self._history:
            await insert_history(conn, self._history)
        if self._payment_outcomes:
            await conn.executemany(
                "UPDATE payments SET applied = $4, outcome = $5 "
                "WHERE shop_id = $1 AND order_id = $2 AND payment_id = $3", self._payment_outcomes)
        if self._cancel_outcomes:
            await conn.executemany("UPDATE cancel_requests SET outcome = $3 WHERE shop_id = $1 AND event_id = $2",
                                   self._cancel_outcomes)
        await outbox.stage(conn, self._events)


async def record_payments(conn: asyncpg.Connection,
                          events: Sequence[PaymentConfirmed]) -> set[tuple[str, str, str]]:
    """Keep every payment by (shop, order, gateway id); returns the (shop_id, order_id, payment_id) not recorded
    before."""
    rows = await conn.fetch(
        """INSERT INTO payments (order_id, payment_id, shop_id, amount_cents, currency, provider)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
           ON CONFLICT DO NOTHING RETURNING shop_id, order_id, payment_id""",
        [e.order_id for e in events], [e.payment_id for e in events], [e.shop_id for e in events],
        [e.amount_cents for e in events], [e.currency for e in events], [e.provider for e in events])
    return {(r["shop_id"], r["order_id"], r["payment_id"]) for r in rows}


async def record_cancel_requests(conn: asyncpg.Connection, events: Sequence[OrderCancelRequested]) -> None:
    await conn.execute(
        """INSERT INTO cancel_requests (shop_id, event_id, order_id, reason)
           SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING""",
        [e.shop_id for e in events], [e.event_id for e in events], [e.order_id for e in events],
        [e.reason for e in events])
