"""SQL over asyncpg for the orders schema. Every write is keyed, so applying the same input twice changes nothing.

Shops are tenants: an order is the pair (shop_id, order_id) everywhere — keys, locks, look-ups, derived event ids
— since two shops number their orders alike (DESIGN.md, "Shops are tenants"). Nothing here reads by order id alone
except `find_orders`, the operator's look-up across shops.

Changes to one order are serialised by `lock_order` (a transaction-scoped advisory lock on the shop and order id,
then the row `FOR UPDATE`): the stream handlers and the HTTP API may touch the same order at once, and a payment may
race its own order.placed; the lock exists even before the row does, so a held payment is never missed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import asyncpg

from contracts import (
    Customer,
    InventoryDeduction,
    InventoryLevel,
    MailStatusChanged,
    OrderFlag,
    OrderFlagged,
    OrderItem,
    OrderStatus,
    OrderStatusChanged,
    Payment,
    PaymentStatus,
    ShopSettings,
    derived_event_id,
    now,
)
from orderflow.runtime import outbox
from services.orders import core
from services.orders.core import Decision, OrderState

DETAILS = ("shipping_address", "billing_address", "shipping", "discount_cents", "tax_cents", "note", "locale")
"""Contract v1.1's optional order.placed fields, each an `orders` column of the same name (migration 003); the
first three are jsonb."""
JSON_DETAILS = frozenset({"shipping_address", "billing_address", "shipping"})

OrderKey = tuple[str, str]
"""(shop_id, order_id): an order's identity."""

TABS: dict[str, tuple[str, ...]] = {
    "pending": (OrderStatus.PENDING.value, OrderStatus.PROCESSED.value),
    "closed": (OrderStatus.DELIVERED.value, OrderStatus.CANCELED.value),
    "incomplete": (OrderStatus.INCOMPLETE.value,),
}


@dataclass(frozen=True)
class Order:
    order_id: str
    shop_id: str
    cart_id: str | None
    customer: dict[str, Any]
    items: list[dict[str, Any]]
    total_cents: int
    currency: str
    payment_method: str
    payment_provider: str
    state: OrderState
    payment_mismatch: bool
    placed_at: datetime
    updated_at: datetime
    version: int
    details: dict[str, Any] = field(default_factory=dict)
    refunded_cents: int = 0
    """Contract v1.1's optional order.placed fields (`DETAILS`) the order was placed with; absent ones left out."""
    flags: frozenset[str] = frozenset()
    """Every flag the order ever raised (`core.raised_flags`), each alerted once; `current_flags` is what shows."""

    @property
    def key(self) -> OrderKey:
        return (self.shop_id, self.order_id)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Order:
        return cls(
            order_id=row["order_id"], shop_id=row["shop_id"], cart_id=row["cart_id"],
            customer=json.loads(row["customer"]), items=json.loads(row["items"]), total_cents=row["total_cents"],
            currency=row["currency"], payment_method=row["payment_method"],
            payment_provider=row["payment_provider"],
            state=OrderState(OrderStatus(row["status"]), PaymentStatus(row["payment_status"])),
            payment_mismatch=row["payment_mismatch"], placed_at=row["placed_at"], updated_at=row["updated_at"],
            version=row["version"], details=details_of(row), refunded_cents=row.get("refunded_cents") or 0,
            flags=frozenset(row.get("flags") or ()),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id, "shop_id": self.shop_id, "cart_id": self.cart_id, "customer": self.customer,
            "items": self.items, "total_cents": self.total_cents, "currency": self.currency,
            "payment": {"method": self.payment_method, "provider": self.payment_provider},
            "status": self.state.status.value, "payment_status": self.state.payment_status.value,
            "payment_mismatch": self.payment_mismatch, "placed_at": self.placed_at, "updated_at": self.updated_at,
            **{name: self.details.get(name) for name in DETAILS},
            "refunded_cents": self.refunded_cents, "refund_due_cents": self.refund_due_cents,
            "flags": {flag.value: flag in self.current_flags for flag in OrderFlag},
        }

    @property
    def current_flags(self) -> frozenset[OrderFlag]:
        return core.current_flags(self.flags, self.refund_due_cents)

    @property
    def refund_due_cents(self) -> int:
        return core.refund_due(self.state, self.total_cents, self.refunded_cents)


def details_of(row: asyncpg.Record) -> dict[str, Any]:
    """The v1.1 details of an `orders` row, decoded; a column that is null is left out."""
    out: dict[str, Any] = {}
    for name in DETAILS:
        value = row.get(name)
        if value is not None:
            out[name] = json.loads(value) if name in JSON_DETAILS else value
    return out


def details_params(details: dict[str, Any]) -> list[Any]:
    """The `DETAILS` columns' values in order, jsonb ones as JSON text."""
    return [None if (v := details.get(name)) is None else json.dumps(v) if name in JSON_DETAILS else v
            for name in DETAILS]


# --- orders and their changes ----------------------------------------------------------------------------------


def _pairs(keys: list[OrderKey]) -> tuple[list[str], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys]


async def lock_orders(conn: asyncpg.Connection, keys: list[OrderKey]) -> dict[OrderKey, Order]:
    """Take the orders' locks for this transaction, in sorted order (two transactions never wait on each other in a
    circle), and load those that exist. The advisory lock exists before the row does; its key names the shop (a
    slash cannot occur in a shop id, so `shop/order` is unambiguous)."""
    shops, ids = _pairs(sorted(set(keys)))
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('orders.order:' || s || '/' || o, 0)) "
                       "FROM unnest($1::text[], $2::text[]) AS k(s, o) ORDER BY s, o", shops, ids)
    rows = await conn.fetch(
        "SELECT o.* FROM orders o JOIN unnest($1::text[], $2::text[]) AS k(s, id) "
        "ON o.shop_id = k.s AND o.order_id = k.id ORDER BY o.shop_id, o.order_id FOR UPDATE OF o", shops, ids)
    return {(r["shop_id"], r["order_id"]): Order.from_row(r) for r in rows}


async def lock_order(conn: asyncpg.Connection, shop_id: str, order_id: str) -> Order | None:
    """Take the order's lock for this transaction and load it (None when it was not placed yet)."""
    return (await lock_orders(conn, [(shop_id, order_id)])).get((shop_id, order_id))


async def get_order(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, order_id: str) -> Order | None:
    row = await conn.fetchrow("SELECT * FROM orders WHERE shop_id = $1 AND order_id = $2", shop_id, order_id)
    return Order.from_row(row) if row else None


async def find_orders(conn: asyncpg.Connection | asyncpg.Pool, order_id: str, limit: int = 20) -> list[Order]:
    """The orders of every shop that use this id (the operator's look-up; a merchant's goes through `get_order`)."""
    rows = await conn.fetch("SELECT * FROM orders WHERE order_id = $1 ORDER BY shop_id LIMIT $2", order_id, limit)
    return [Order.from_row(r) for r in rows]


def changes_of(order: Order, decision: Decision,
               at: datetime) -> tuple[list[tuple], list[OrderStatusChanged | OrderFlagged], int]:
    """A decision's order_history rows, its order.status events (ids derived from shop, order and seq), then one
    order.flagged per flag it raises (id derived from shop, order and flag: once per order and flag), and the new
    version."""
    seq = order.version
    rows: list[tuple] = []
    events: list[OrderStatusChanged | OrderFlagged] = []
    for change in decision.changes:
        seq += 1
        before = change.before
        rows.append((order.shop_id, order.order_id, seq, before.status.value if before else None,
                     change.after.status.value, before.payment_status.value if before else None,
                     change.after.payment_status.value, change.changed_by.value, change.reason, at))
        events.append(OrderStatusChanged(
            event_id=derived_event_id("order.status", order.shop_id, order.order_id, seq), occurred_at=at,
            shop_id=order.shop_id,
            order_id=order.order_id, cart_id=order.cart_id, status=change.after.status,
            payment_status=change.after.payment_status, previous_status=before.status if before else None,
            previous_payment_status=before.payment_status if before else None, changed_by=change.changed_by,
            reason=change.reason[:500], customer=Customer.model_validate(order.customer),
            items=[OrderItem.model_validate(i) for i in order.items], total_cents=order.total_cents,
            currency=order.currency,
            payment=Payment(method=order.payment_method, provider=order.payment_provider),  # type: ignore[arg-type]
            refunded_cents=order.refunded_cents,
            refund_due_cents=core.refund_due(change.after, order.total_cents, order.refunded_cents),
            refund_id=change.refund_id, refund_cents=change.refund_cents,
            **order.details,
        ))
    due = core.refund_due(decision.state, order.total_cents, order.refunded_cents)
    for flag in sorted(new_flags(order, decision)):
        detail = decision.refused or (decision.changes[-1].reason if decision.changes else None)
        if flag == OrderFlag.REFUND_DUE:
            detail = f"canceled after payment: {due} {order.currency} to pay back to the customer"
        events.append(OrderFlagged(
            event_id=derived_event_id("order.flagged", order.shop_id, order.order_id, flag.value), occurred_at=at,
            shop_id=order.shop_id, order_id=order.order_id, flag=flag, detail=detail[:500] if detail else None,
            status=decision.state.status, payment_status=decision.state.payment_status,
            customer=Customer.model_validate(order.customer), total_cents=order.total_cents,
            currency=order.currency, refund_due_cents=due,
        ))
    return rows, events, seq


def new_flags(order: Order, decision: Decision) -> frozenset[OrderFlag]:
    return core.raised_flags(order.flags, decision, order.total_cents, order.refunded_cents)


def flagged(order: Order, decision: Decision) -> frozenset[str]:
    """The order's flags once the decision is written."""
    return order.flags | {f.value for f in new_flags(order, decision)}


def writes_nothing(order: Order, decision: Decision) -> bool:
    """No change and no new flag: nothing to write, nothing to emit."""
    return not decision.changes and not new_flags(order, decision)


async def insert_history(conn: asyncpg.Connection, rows: list[tuple]) -> None:
    """`changes_of` rows."""
    await conn.executemany(
        """INSERT INTO order_history (shop_id, order_id, seq, from_status, to_status, from_payment_status,
                                      to_payment_status, changed_by, reason, at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""", rows)


async def update_orders(conn: asyncpg.Connection, orders: list[Order]) -> None:
    """Write each order's state, version, refunded amount and flags (flags are never cleared here)."""
    await conn.executemany(
        """UPDATE orders SET status = $3, payment_status = $4, version = $5,
                             payment_mismatch = payment_mismatch OR $6, refunded_cents = $7, updated_at = now(),
                             flags = ARRAY(SELECT DISTINCT f FROM unnest(flags || $8::text[]) AS f ORDER BY f)
           WHERE shop_id = $1 AND order_id = $2""",
        [(o.shop_id, o.order_id, o.state.status.value, o.state.payment_status.value, o.version, o.payment_mismatch,
          o.refunded_cents, sorted(o.flags)) for o in orders])


async def apply(conn: asyncpg.Connection, order: Order, decision: Decision) -> Order:
    """Write a decision: one history row and one staged `order.status` per change; a no-op writes nothing."""
    if writes_nothing(order, decision):
        return order
    rows, events, seq = changes_of(order, decision, now())
    await insert_history(conn, rows)
    changed = replace(order, state=decision.state, version=seq, flags=flagged(order, decision),
                      payment_mismatch=order.payment_mismatch or decision.payment_mismatch)
    await update_orders(conn, [changed])
    await outbox.stage(conn, events)
    return await get_order(conn, order.shop_id, order.order_id)


async def history(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT seq, from_status, to_status, from_payment_status, to_payment_status, changed_by, reason, at
           FROM order_history WHERE shop_id = $1 AND order_id = $2 ORDER BY seq""", shop_id, order_id)
    return [dict(r) for r in rows]


# --- payments ---------------------------------------------------------------------------------------------------


async def payments(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT payment_id, amount_cents, currency, provider, received_at, applied, outcome
           FROM payments WHERE shop_id = $1 AND order_id = $2 ORDER BY received_at, payment_id""", shop_id, order_id)
    return [dict(r) for r in rows]


# --- refunds ----------------------------------------------------------------------------------------------------


async def record_refunds(conn: asyncpg.Connection, rows: list[tuple[str, str, str, int, str, str, str | None]]
                         ) -> set[tuple[str, str, str]]:
    """Keep every refund by (shop, order, refund id): rows of (shop_id, order_id, refund_id, amount_cents, currency,
    provider, reason); returns the keys not recorded before."""
    found = await conn.fetch(
        """INSERT INTO refunds (shop_id, order_id, refund_id, amount_cents, currency, provider, reason)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[])
           ON CONFLICT DO NOTHING RETURNING shop_id, order_id, refund_id""",
        *(list(column) for column in zip(*rows, strict=True)))
    return {(r["shop_id"], r["order_id"], r["refund_id"]) for r in found}


async def settle_refunds(conn: asyncpg.Connection, outcomes: list[tuple[str, str, str, bool, str]]) -> None:
    """(shop_id, order_id, refund_id, applied, outcome) for each refund decided."""
    await conn.executemany("UPDATE refunds SET applied = $4, outcome = $5 "
                           "WHERE shop_id = $1 AND order_id = $2 AND refund_id = $3",
                           [(*o[:4], o[4][:500]) for o in outcomes])


async def refund_row(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, order_id: str,
                     refund_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM refunds WHERE shop_id = $1 AND order_id = $2 AND refund_id = $3",
                              shop_id, order_id, refund_id)
    return dict(row) if row else None


async def refunds(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT refund_id, amount_cents, currency, provider, reason, received_at, applied, outcome
           FROM refunds WHERE shop_id = $1 AND order_id = $2 ORDER BY received_at, refund_id""", shop_id, order_id)
    return [dict(r) for r in rows]


# --- cancel requests --------------------------------------------------------------------------------------------


async def cancel_requests(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str,
                          order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT event_id, reason, received_at, outcome FROM cancel_requests WHERE shop_id = $1 AND order_id = $2 "
        "ORDER BY received_at", shop_id, order_id)
    return [dict(r) for r in rows]


# --- shops ------------------------------------------------------------------------------------------------------


async def upsert_shop(conn: asyncpg.Connection, event: ShopSettings, *, bump_version: bool = False) -> int:
    """Store settings unless newer ones are already there; returns the shop's settings version (0: nothing changed).

    The same settings again (a redelivery, a replay) change nothing, not even updated_at: since positions replaced
    event-id dedupe here, a replay re-reads every shop.settings record."""
    return await conn.fetchval(
        """INSERT INTO shops (shop_id, name, merchant_email, abandon_after_seconds, ignore_incomplete_orders,
                              version, occurred_at, expire_unpaid_after_seconds)
           VALUES ($1, $2, $3, $4, $5, CASE WHEN $7 THEN 1 ELSE 0 END, $6, $8)
           ON CONFLICT (shop_id) DO UPDATE SET
               name = EXCLUDED.name, merchant_email = EXCLUDED.merchant_email,
               abandon_after_seconds = EXCLUDED.abandon_after_seconds,
               ignore_incomplete_orders = EXCLUDED.ignore_incomplete_orders, occurred_at = EXCLUDED.occurred_at,
               expire_unpaid_after_seconds = EXCLUDED.expire_unpaid_after_seconds,
               version = shops.version + CASE WHEN $7 THEN 1 ELSE 0 END, updated_at = now()
           WHERE shops.occurred_at < EXCLUDED.occurred_at
              OR (shops.occurred_at = EXCLUDED.occurred_at
                  AND (shops.name, shops.merchant_email, shops.abandon_after_seconds, shops.ignore_incomplete_orders,
                       shops.expire_unpaid_after_seconds)
                      IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.merchant_email, EXCLUDED.abandon_after_seconds,
                                        EXCLUDED.ignore_incomplete_orders, EXCLUDED.expire_unpaid_after_seconds))
           RETURNING version""",
        event.shop_id, event.name, event.merchant_email, event.abandon_after_seconds,
        event.ignore_incomplete_orders, event.occurred_at, bump_version, event.expire_unpaid_after_seconds,
    ) or 0


async def store_shop_locale(conn: asyncpg.Connection, event: ShopSettings) -> None:
    """The shop's language (the back office's pages) from the settings `upsert_shop` kept: only when they are this
    event's, so older settings arriving late change nothing."""
    await conn.execute("UPDATE shops SET locale = $2 WHERE shop_id = $1 AND occurred_at = $3 "
                       "AND locale IS DISTINCT FROM $2", event.shop_id, event.locale, event.occurred_at)


async def shop_locale(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str) -> str | None:
    return await conn.fetchval("SELECT locale FROM shops WHERE shop_id = $1", shop_id)


# --- stock outcomes ---------------------------------------------------------------------------------------------


async def record_stock_outcomes(conn: asyncpg.Connection, events: list[InventoryDeduction]) -> None:
    """What inventory did for each order, once per (shop, order, kind)."""
    await conn.executemany(
        "INSERT INTO stock_outcomes (shop_id, order_id, kind, lines) VALUES ($1, $2, $3, $4::jsonb) "
        "ON CONFLICT DO NOTHING",
        [(e.shop_id, e.order_id, e.kind.value, json.dumps([line.model_dump(mode="json") for line in e.lines]))
         for e in events])


async def stock_outcomes(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str,
                         order_id: str) -> dict[str, list[dict[str, Any]]]:
    rows = await conn.fetch("SELECT kind, lines FROM stock_outcomes WHERE shop_id = $1 AND order_id = $2",
                            shop_id, order_id)
    return {r["kind"]: json.loads(r["lines"]) for r in rows}


# --- stock levels (read model of inventory.levels) ------------------------------------------------------------


async def store_stock_levels(conn: asyncpg.Connection, events: list[InventoryLevel]) -> None:
    """Each (shop, SKU) keeps its newest level; an older one (a replay, a late copy) changes nothing."""
    await conn.executemany(
        """INSERT INTO stock_levels (shop_id, sku, available, updated_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (shop_id, sku) DO UPDATE SET available = EXCLUDED.available, updated_at = EXCLUDED.updated_at
           WHERE stock_levels.updated_at < EXCLUDED.updated_at""",
        [(e.shop_id, e.sku, e.available, e.updated_at) for e in events])


async def list_stock_levels(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str,
                            limit: int) -> tuple[int, list[asyncpg.Record]]:
    """One shop's SKUs, out of stock first then by SKU (at most `limit`), and how many it has in all."""
    total = await conn.fetchval("SELECT count(*) FROM stock_levels WHERE shop_id = $1", shop_id)
    rows = await conn.fetch(
        "SELECT sku, available, updated_at FROM stock_levels WHERE shop_id = $1 ORDER BY (available > 0), sku "
        "LIMIT $2", shop_id, limit)
    return total, rows


# --- the back-office list ---------------------------------------------------------------------------------------


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


REFUND_DUE_SQL = ("(status = 'canceled' AND payment_status = ANY('{paid,partially_refunded,refunded}'::text[]) "
                  "AND total_cents > refunded_cents)")
"""`core.refund_due` > 0, in SQL: the `refund_due` filter shows what is owed now, not every order that once owed."""


async def list_orders(pool: asyncpg.Pool, tab: str, q: str | None, shop_id: str | None, page: int,
                      per_page: int, payment_status: PaymentStatus | None = None,
                      flag: OrderFlag | None = None) -> tuple[list[Order], int, dict[str, int]]:
    """One page of a tab, newest first, and how many orders each tab holds under the same search (text, payment
    status and flag filters combine with AND)."""
    where = ["($1::text IS NULL OR shop_id = $1)"]
    if q:
        where.append("""(order_id ILIKE $2 OR customer_email ILIKE $2 OR customer_name ILIKE $2
                         OR EXISTS (SELECT 1 FROM jsonb_array_elements(items) AS i WHERE i->>'sku' ILIKE $2))""")
    else:
        where.append("$2::text IS NULL")
    where.append("($3::text IS NULL OR payment_status = $3)")
    if flag == OrderFlag.REFUND_DUE:
        where.append(f"($4::text IS NOT NULL AND {REFUND_DUE_SQL})")
    else:
        where.append("($4::text IS NULL OR flags @> ARRAY[$4::text])")
    filters = " AND ".join(where)
    pattern = _like(q) if q else None
    args = (shop_id, pattern, payment_status.value if payment_status else None, flag.value if flag else None)
    counts_rows = await pool.fetch(f"SELECT status, count(*) AS n FROM orders WHERE {filters} GROUP BY status",
                                   *args)
    by_status = {r["status"]: r["n"] for r in counts_rows}
    counts = {name: sum(by_status.get(s, 0) for s in statuses) for name, statuses in TABS.items()}
    rows = await pool.fetch(
        f"""SELECT * FROM orders WHERE {filters} AND status = ANY($5::text[])
            ORDER BY placed_at DESC, order_id DESC LIMIT $6 OFFSET $7""",
        *args, list(TABS[tab]), per_page, (page - 1) * per_page)
    return [Order.from_row(r) for r in rows], counts[tab], counts


# --- expiry -----------------------------------------------------------------------------------------------------


async def claim_expired(conn: asyncpg.Connection, at: datetime, limit: int) -> list[tuple[Order, int]]:
    """Incomplete orders placed at least their shop's `expire_unpaid_after_seconds` before `at` (the contract's
    default for a shop without settings), oldest first, each with that setting; locked for this transaction.

    `SKIP LOCKED`: an order another transaction holds (the other orders worker's sweep, or a handler applying its
    payment) is left to it, never waited for; the status test is checked again on the row as committed, so an order
    a payment committed meanwhile is not claimed. The caller cancels them in the same transaction, which is what
    makes each expiry happen once across workers and restarts."""
    rows = await conn.fetch(
        """SELECT o.*, coalesce(s.expire_unpaid_after_seconds, $3) AS expire_after
           FROM orders o LEFT JOIN shops s ON s.shop_id = o.shop_id
           WHERE o.status = 'incomplete'
             AND o.placed_at <= $1::timestamptz - make_interval(secs => coalesce(s.expire_unpaid_after_seconds, $3))
           ORDER BY o.placed_at LIMIT $2 FOR UPDATE OF o SKIP LOCKED""",
        at, limit, core.DEFAULT_EXPIRE_UNPAID_AFTER_SECONDS)
    return [(Order.from_row(r), r["expire_after"]) for r in rows]


# --- mail states (read model of mail.status) --------------------------------------------------------------------

MAIL_COLUMNS = ("subject", "subject_id", "kind", "audience", "state", "attempts", "reply", "message_id", "changed_at")


async def store_mail_states(conn: asyncpg.Connection, events: list[MailStatusChanged]) -> None:
    """Keep each mail's newest state: an older one (redelivered, replayed, out of order) changes nothing."""
    await conn.executemany(
        """INSERT INTO mail_states (shop_id, subject, subject_id, kind, audience, state, attempts, reply, message_id,
                                    changed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           ON CONFLICT (shop_id, subject, subject_id, kind) DO UPDATE SET
               audience = EXCLUDED.audience, state = EXCLUDED.state, attempts = EXCLUDED.attempts,
               reply = EXCLUDED.reply, message_id = EXCLUDED.message_id, changed_at = EXCLUDED.changed_at
           WHERE mail_states.changed_at < EXCLUDED.changed_at""",
        [(e.shop_id, e.subject, e.subject_id, e.kind, e.audience, e.state.value, e.attempts, e.reply, e.message_id,
          e.changed_at) for e in events],
    )


async def order_mails(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, order_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {', '.join(MAIL_COLUMNS)} FROM mail_states WHERE shop_id = $1 AND subject = 'order' "
        "AND subject_id = $2 ORDER BY changed_at, kind", shop_id, order_id)
    return [dict(r) for r in rows]


async def list_mail_states(conn: asyncpg.Connection | asyncpg.Pool, shop_ids: Sequence[str] | None,
                           state: str | None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest mails first, of the given shops (None: every shop, for the operator), optionally in one state."""
    rows = await conn.fetch(
        f"SELECT shop_id, {', '.join(MAIL_COLUMNS)} FROM mail_states "
        "WHERE ($1::text[] IS NULL OR shop_id = ANY($1::text[])) AND ($2::text IS NULL OR state = $2) "
        "ORDER BY changed_at DESC, shop_id, subject_id, kind LIMIT $3",
        list(shop_ids) if shop_ids is not None else None, state, limit)
    return [dict(r) for r in rows]
