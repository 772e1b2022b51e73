"""SQL of the cart service (schema "cart"; the pool's search_path points there).

Carts and checkout watches are keyed by (shop_id, cart_id): two shops may use the same cart id (DESIGN.md, "Shops
are tenants"), and nothing here reads or writes a cart by its id alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.cart.core import CartKey, Checkout, CheckoutState, RecoveryPolicy

# --- carts ---------------------------------------------------------------------------------------------------


async def save_snapshots(conn: asyncpg.Connection, snapshots: Sequence[tuple[str, str, dict, list, datetime]]) -> int:
    """(cart_id, shop_id, customer, items, occurred_at): the newer snapshot wins, ties keep the first one seen."""
    if not snapshots:
        return 0
    await conn.executemany(
        """
        INSERT INTO carts (cart_id, shop_id, customer, items, status, order_id, updated_at)
        VALUES ($1, $2, $3::jsonb, $4::jsonb, 'open', NULL, $5)
        ON CONFLICT (shop_id, cart_id) DO UPDATE
           SET customer = EXCLUDED.customer, items = EXCLUDED.items,
               status = 'open', order_id = NULL, updated_at = EXCLUDED.updated_at, written_at = now()
         WHERE carts.updated_at < EXCLUDED.updated_at
        """,
        [(c, s, json.dumps(cu), json.dumps(it), at) for c, s, cu, it, at in snapshots],
    )
    return len(snapshots)


async def mark_ordered(conn: asyncpg.Connection,
                       orders: Sequence[tuple[str, str, str, datetime, list[dict[str, Any]], dict[str, Any]]]) -> None:
    """(cart_id, shop_id, order_id, occurred_at, items, customer): the cart is emptied by its order unless a newer
    snapshot exists. A cart first known from its order (its order.placed read before its cart.updated: the topics
    are consumed apart, and the older snapshot is then ignored) holds the order's lines and customer, so that what
    it held is still shown (`ordered_items`)."""
    await conn.executemany(
        """
        INSERT INTO carts (cart_id, shop_id, status, order_id, updated_at, items, customer)
        VALUES ($1, $2, 'ordered', $3, $4, $5::jsonb, $6::jsonb)
        ON CONFLICT (shop_id, cart_id) DO UPDATE
           SET status = 'ordered', order_id = EXCLUDED.order_id, updated_at = EXCLUDED.updated_at, written_at = now()
         WHERE carts.updated_at <= EXCLUDED.updated_at
           AND (carts.status, carts.order_id) IS DISTINCT FROM ('ordered', EXCLUDED.order_id)
        """,
        [(c, s, o, at, json.dumps(items), json.dumps(customer)) for c, s, o, at, items, customer in orders],
    )


async def load_cart(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, cart_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM carts WHERE shop_id = $1 AND cart_id = $2", shop_id, cart_id)
    return _cart(row) if row else None


async def shops_with_cart(conn: asyncpg.Connection | asyncpg.Pool, cart_id: str, limit: int = 20) -> list[str]:
    """The shops that have a cart with this id (the operator's look-up; a storefront names its shop)."""
    rows = await conn.fetch("SELECT shop_id FROM carts WHERE cart_id = $1 ORDER BY shop_id LIMIT $2", cart_id, limit)
    return [r["shop_id"] for r in rows]


def _cart(row: asyncpg.Record) -> dict[str, Any]:
    cart = dict(row)
    cart["customer"] = json.loads(cart["customer"])
    cart["items"] = json.loads(cart["items"])
    return cart


async def count_carts(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM carts WHERE status = 'open'")


# --- stock and shop settings ---------------------------------------------------------------------------------


async def save_levels(conn: asyncpg.Connection, levels: Sequence[tuple[str, str, int, datetime]]) -> None:
    """(shop_id, sku, available, updated_at): a level older than the one kept is ignored."""
    await conn.executemany(
        """
        INSERT INTO stock_levels (shop_id, sku, available, updated_at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (shop_id, sku) DO UPDATE SET available = EXCLUDED.available, updated_at = EXCLUDED.updated_at
         WHERE stock_levels.updated_at < EXCLUDED.updated_at
        """,
        levels,
    )


async def levels_for(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, skus: Iterable[str]) -> dict[str, int]:
    rows = await conn.fetch("SELECT sku, available FROM stock_levels WHERE shop_id = $1 AND sku = ANY($2::text[])",
                            shop_id, list(skus))
    return {r["sku"]: r["available"] for r in rows}


async def save_shop_settings(conn: asyncpg.Connection,
                             settings: Sequence[tuple[str, int | None, list[int] | None, bool, datetime]]) -> None:
    """(shop_id, abandon_after_seconds, recovery_reminders_seconds, recovery_requires_consent, occurred_at)."""
    await conn.executemany(
        """
        INSERT INTO shop_settings (shop_id, abandon_after_seconds, recovery_reminders_seconds,
                                   recovery_requires_consent, updated_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (shop_id) DO UPDATE
           SET abandon_after_seconds = EXCLUDED.abandon_after_seconds,
               recovery_reminders_seconds = EXCLUDED.recovery_reminders_seconds,
               recovery_requires_consent = EXCLUDED.recovery_requires_consent, updated_at = EXCLUDED.updated_at
         WHERE shop_settings.updated_at < EXCLUDED.updated_at
        """,
        settings,
    )


async def abandon_after_by_shop(conn: asyncpg.Connection, shop_ids: Iterable[str]) -> dict[str, int]:
    """Each shop's abandon delay: its first recovery reminder when it lists any (contract v1.1), else
    abandon_after_seconds; shops with neither are left out (the deployment's default applies)."""
    rows = await conn.fetch(
        "SELECT shop_id, COALESCE(recovery_reminders_seconds[1], abandon_after_seconds) AS seconds "
        "FROM shop_settings WHERE shop_id = ANY($1::text[])",
        list(set(shop_ids)),
    )
    return {r["shop_id"]: r["seconds"] for r in rows if r["seconds"] is not None}


async def recovery_policies(conn: asyncpg.Connection, shop_ids: Iterable[str],
                            default_after: timedelta) -> dict[str, RecoveryPolicy]:
    """Every named shop's reminders and consent rule; a shop without settings gets one reminder at the default."""
    wanted = list(set(shop_ids))
    rows = await conn.fetch(
        "SELECT shop_id, abandon_after_seconds, recovery_reminders_seconds, recovery_requires_consent "
        "FROM shop_settings WHERE shop_id = ANY($1::text[])", wanted)
    found = {r["shop_id"]: RecoveryPolicy.of(
        r["recovery_reminders_seconds"],
        timedelta(seconds=r["abandon_after_seconds"]) if r["abandon_after_seconds"] else default_after,
        r["recovery_requires_consent"]) for r in rows}
    return {shop: found.get(shop) or RecoveryPolicy.of(None, default_after, False) for shop in wanted}


# --- unsubscribes --------------------------------------------------------------------------------------------


async def record_unsubscribe(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, email: str, via: str) -> bool:
    """Record that `email` wants no more reminders from this shop; False when it was recorded before."""
    inserted = await conn.fetchval(
        "INSERT INTO unsubscribes (shop_id, email, via) VALUES ($1, $2, $3) "
        "ON CONFLICT (shop_id, email) DO NOTHING RETURNING true", shop_id, email, via)
    return bool(inserted)


async def is_unsubscribed(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, email: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM unsubscribes WHERE shop_id = $1 AND email = $2",
                                    shop_id, email))


async def unsubscribed(conn: asyncpg.Connection, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (shop_id, normalized e-mail) pairs among `pairs` that unsubscribed."""
    wanted = sorted(set(pairs))
    rows = await conn.fetch(
        "SELECT u.shop_id, u.email FROM unsubscribes u JOIN unnest($1::text[], $2::text[]) AS k(s, e) "
        "ON u.shop_id = k.s AND u.email = k.e", [p[0] for p in wanted], [p[1] for p in wanted])
    return {(r["shop_id"], r["email"]) for r in rows}


# --- checkouts -----------------------------------------------------------------------------------------------


def _checkout(row: asyncpg.Record) -> Checkout:
    return Checkout(
        cart_id=row["cart_id"], shop_id=row["shop_id"], state=CheckoutState(row["state"]),
        customer=json.loads(row["customer"]), items=json.loads(row["items"]),
        started_event_id=row["started_event_id"], started_at=row["started_at"], due_at=row["due_at"],
        order_id=row["order_id"], order_at=row["order_at"], marketing_consent=row["marketing_consent"],
        reminders_sent=row["reminders_sent"], reminders_stopped=row["reminders_stopped"],
        order_closed=row["order_closed"],
    )


async def lock_checkouts(conn: asyncpg.Connection, keys: Iterable[CartKey]) -> dict[CartKey, Checkout]:
    """Lock the carts' watches for this transaction (rows that do not exist yet too, by advisory lock on
    `cart-checkout/<shop>/<cart>`; a shop id has no slash) and load them; keys are (shop_id, cart_id).

    The row lock makes a handler wait for a scanner that is abandoning the same row, then see its result.
    """
    ordered = sorted(set(keys))
    shops, ids = [k[0] for k in ordered], [k[1] for k in ordered]
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('cart-checkout/' || s || '/' || id, 0)) "
                       "FROM unnest($1::text[], $2::text[]) AS k(s, id) ORDER BY s, id", shops, ids)
    rows = await conn.fetch(
        "SELECT c.* FROM checkouts c JOIN unnest($1::text[], $2::text[]) AS k(s, id) "
        "ON c.shop_id = k.s AND c.cart_id = k.id ORDER BY c.shop_id, c.cart_id FOR UPDATE OF c", shops, ids)
    return {(r["shop_id"], r["cart_id"]): _checkout(r) for r in rows}


async def save_checkouts(conn: asyncpg.Connection, checkouts: Iterable[Checkout]) -> None:
    await conn.executemany(
        """
        INSERT INTO checkouts (cart_id, shop_id, state, customer, items, started_event_id, started_at, due_at,
                               order_id, order_at, marketing_consent, reminders_sent, reminders_stopped,
                               order_closed)
        VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT (shop_id, cart_id) DO UPDATE
           SET state = EXCLUDED.state, customer = EXCLUDED.customer,
               items = EXCLUDED.items, started_event_id = EXCLUDED.started_event_id,
               started_at = EXCLUDED.started_at, due_at = EXCLUDED.due_at, order_id = EXCLUDED.order_id,
               order_at = EXCLUDED.order_at, marketing_consent = EXCLUDED.marketing_consent,
               reminders_sent = EXCLUDED.reminders_sent, reminders_stopped = EXCLUDED.reminders_stopped,
               order_closed = EXCLUDED.order_closed,
               abandoned_at = CASE WHEN EXCLUDED.state = 'abandoned' OR EXCLUDED.reminders_sent > 0
                                   THEN COALESCE(checkouts.abandoned_at, now()) END,
               updated_at = now()
        """,
        [(c.cart_id, c.shop_id, c.state.value, json.dumps(c.customer), json.dumps(c.items), c.started_event_id,
          c.started_at, c.due_at, c.order_id, c.order_at, c.marketing_consent, c.reminders_sent,
          c.reminders_stopped, c.order_closed) for c in checkouts],
    )


async def claim_due_checkouts(conn: asyncpg.Connection, limit: int = 500,
                              keys: Iterable[CartKey] | None = None, overdue: timedelta = timedelta(0),
                              due_by: datetime | None = None) -> list[Checkout]:
    """Lock open watches past due (all of them up to `limit`, or only those of `keys`; due for `overdue` at least,
    and not after `due_by`, the inputs' horizon) and return them as they were; rows another transaction holds are
    skipped. The caller saves what each became
    (`save_checkouts`).

    Run inside the transaction that stages their checkout.abandoned, so the reminder count and the event commit
    together: each (checkout, reminder) is claimed once, whatever the number of workers, restarts or replays.
    """
    if keys is None:
        rows = await conn.fetch(
            "SELECT * FROM checkouts WHERE state = 'open' AND due_at <= now() - $2::interval "
            "AND ($3::timestamptz IS NULL OR due_at <= $3) "
            "ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED", limit, overdue, due_by)
    else:
        wanted = sorted(set(keys))
        rows = await conn.fetch(
            "SELECT c.* FROM checkouts c JOIN unnest($1::text[], $2::text[]) AS k(s, id) "
            "ON c.shop_id = k.s AND c.cart_id = k.id WHERE c.state = 'open' AND c.due_at <= now() "
            "AND ($4::timestamptz IS NULL OR c.due_at <= $4) "
            "ORDER BY c.shop_id, c.cart_id LIMIT $3 FOR UPDATE OF c SKIP LOCKED",
            [k[0] for k in wanted], [k[1] for k in wanted], limit, due_by)
    return [_checkout(r) for r in rows]


async def record_payments(conn: asyncpg.Connection, payments: Sequence[tuple[str, str]]) -> None:
    """(shop_id, order_id) of gateway payments seen; one row per order, the first kept."""
    if payments:
        await conn.execute(
            "INSERT INTO payments_seen (shop_id, order_id) SELECT * FROM unnest($1::text[], $2::text[]) "
            "ON CONFLICT DO NOTHING", [p[0] for p in payments], [p[1] for p in payments])


async def paid_orders(conn: asyncpg.Connection, orders: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which of these (shop_id, order_id) have a payment seen."""
    wanted = sorted(set(orders))
    if not wanted:
        return set()
    rows = await conn.fetch(
        "SELECT p.shop_id, p.order_id FROM payments_seen p JOIN unnest($1::text[], $2::text[]) AS k(s, id) "
        "ON p.shop_id = k.s AND p.order_id = k.id", [w[0] for w in wanted], [w[1] for w in wanted])
    return {(r["shop_id"], r["order_id"]) for r in rows}


async def forget_payments(conn: asyncpg.Connection, older_than: timedelta, limit: int = 10_000) -> int:
    """Drop payments seen longer ago than any watch can still be due; a bounded batch per call."""
    status = await conn.execute(
        "DELETE FROM payments_seen WHERE ctid IN (SELECT ctid FROM payments_seen "
        "WHERE seen_at < now() - $1::interval LIMIT $2)", older_than, limit)
    return int(status.rsplit(" ", 1)[-1])


async def load_checkout(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, cart_id: str) -> Checkout | None:
    row = await conn.fetchrow("SELECT * FROM checkouts WHERE shop_id = $1 AND cart_id = $2", shop_id, cart_id)
    return _checkout(row) if row else None


async def park_checkout(conn: asyncpg.Connection, shop_id: str, cart_id: str, reason: str) -> None:
    """A claimed checkout whose event could not be built: kept, with the reason, for an operator to look at."""
    await conn.execute("UPDATE checkouts SET parked_reason = $3, updated_at = now() "
                       "WHERE shop_id = $1 AND cart_id = $2", shop_id, cart_id, reason[:1000])
