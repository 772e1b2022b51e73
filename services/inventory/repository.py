"""SQL of the inventory, set-based: a batch costs a handful of round trips whatever its size.

Every function takes a connection inside the caller's transaction. Stock rows, shared by every partition, are
locked in a stable (shop_id, sku) order so concurrent batches wait for each other instead of deadlocking. Orders
are not locked: one order's events live on one partition, so only a rebalance can make two workers apply the same
event at once, and the ledger's primary key catches that (`insert_moves`).

Orders are keyed by (shop_id, order_id) in every table and look-up: two shops' order 1001 are two orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from orderflow.runtime import failures
from services.inventory.core import Book, Move, OrderKey, OrderState, StockKey


@dataclass(frozen=True)
class LevelRow:
    shop_id: str
    sku: str
    available: int
    version: int
    updated_at: datetime


def _columns(keys: Iterable[StockKey]) -> tuple[list[str], list[str]]:
    ordered = sorted(set(keys))
    return [k[0] for k in ordered], [k[1] for k in ordered]


async def order_states(conn: asyncpg.Connection, orders: Iterable[OrderKey]) -> dict[OrderKey, OrderState]:
    """States of these (shop, order) the inventory has seen; read without locking (see `insert_moves`)."""
    shops, ids = _columns(orders)
    rows = await conn.fetch(
        "SELECT o.shop_id, o.order_id, o.state FROM order_stock o "
        "JOIN unnest($1::text[], $2::text[]) AS k(s, id) ON o.shop_id = k.s AND o.order_id = k.id", shops, ids)
    return {(r["shop_id"], r["order_id"]): OrderState(r["state"]) for r in rows}


async def deducted_lines(conn: asyncpg.Connection, orders: Sequence[OrderKey]) -> dict[OrderKey, dict[str, int]]:
    """What each of these orders had deducted, per SKU (what a cancel gives back)."""
    if not orders:
        return {}
    shops, ids = _columns(orders)
    rows = await conn.fetch(
        "SELECT m.shop_id, m.order_id, m.sku, m.moved FROM stock_moves m "
        "JOIN unnest($1::text[], $2::text[]) AS k(s, id) ON m.shop_id = k.s AND m.order_id = k.id "
        "WHERE m.kind = 'deducted'", shops, ids)
    lines: dict[OrderKey, dict[str, int]] = {}
    for r in rows:
        lines.setdefault((r["shop_id"], r["order_id"]), {})[r["sku"]] = r["moved"]
    return lines


async def create_missing_stock(conn: asyncpg.Connection, keys: Iterable[StockKey]) -> set[StockKey]:
    """Create rows at 0 for SKUs an adjustment is about to set, so they can be locked like the others.

    Returns the keys created now: for the rules they are still unknown (the adjustment creates them).
    """
    shops, skus = _columns(keys)
    if not shops:
        return set()
    rows = await conn.fetch(
        "INSERT INTO stock (shop_id, sku, available) SELECT s, k, 0 FROM unnest($1::text[], $2::text[]) AS t(s, k) "
        "ON CONFLICT DO NOTHING RETURNING shop_id, sku",
        shops, skus,
    )
    return {(r["shop_id"], r["sku"]) for r in rows}


async def lock_levels(conn: asyncpg.Connection, keys: Iterable[StockKey]) -> dict[StockKey, int]:
    """Lock and read the existing stock rows among `keys`; a key absent from the answer is an unknown SKU."""
    shops, skus = _columns(keys)
    if not shops:
        return {}
    rows = await conn.fetch(
        "SELECT s.shop_id, s.sku, s.available FROM stock s "
        "JOIN unnest($1::text[], $2::text[]) AS k(shop_id, sku) ON s.shop_id = k.shop_id AND s.sku = k.sku "
        "ORDER BY s.shop_id, s.sku FOR UPDATE OF s",
        shops, skus,
    )
    return {(r["shop_id"], r["sku"]): r["available"] for r in rows}


async def write_levels(conn: asyncpg.Connection, levels: dict[StockKey, int]) -> list[LevelRow]:
    """Set the new levels (one version step per row) and return the rows as now stored."""
    if not levels:
        return []
    ordered = sorted(levels)
    rows = await conn.fetch(
        "UPDATE stock s SET available = v.available, version = s.version + 1, updated_at = now() "
        "FROM unnest($1::text[], $2::text[], $3::bigint[]) AS v(shop_id, sku, available) "
        "WHERE s.shop_id = v.shop_id AND s.sku = v.sku "
        "RETURNING s.shop_id, s.sku, s.available, s.version, s.updated_at",
        [k[0] for k in ordered], [k[1] for k in ordered], [levels[k] for k in ordered],
    )
    return [LevelRow(r["shop_id"], r["sku"], r["available"], r["version"], r["updated_at"]) for r in rows]


class LostRace(failures.LostRace):
    """Another transaction wrote a ledger line this batch meant to write: roll back and run the batch again."""


async def insert_moves(conn: asyncpg.Connection, moves: Sequence[Move]) -> None:
    """Write the ledger lines; the primary key (shop_id, order_id, kind, sku) makes a deduction happen once.

    Order states are read without locks, so two workers replaying the same events during a rebalance may both
    decide the same move: the second insert waits for the first transaction and then finds its row. Raising
    LostRace rolls that batch back, and its retry reads the state the winner committed.
    """
    if not moves:
        return
    status = await conn.execute(
        "INSERT INTO stock_moves (order_id, kind, shop_id, sku, asked, moved) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[]) "
        "ON CONFLICT DO NOTHING",
        [m.order_id for m in moves], [m.kind.value for m in moves], [m.shop_id for m in moves],
        [m.sku for m in moves], [m.asked for m in moves], [m.moved for m in moves],
    )
    if int(status.split()[-1]) != len(moves):
        raise LostRace(f"{len(moves) - int(status.split()[-1])} ledger lines already written by another worker")


async def save_order_states(conn: asyncpg.Connection, states: dict[OrderKey, OrderState]) -> None:
    if not states:
        return
    keys = sorted(states)
    await conn.execute(
        "INSERT INTO order_stock (order_id, shop_id, state) SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
        "ON CONFLICT (shop_id, order_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
        [k[1] for k in keys], [k[0] for k in keys], [states[k].value for k in keys],
    )


async def load_book(conn: asyncpg.Connection, orders: Iterable[OrderKey], stock_keys: set[StockKey]) -> Book:
    """Load what a batch of order commands needs: order states, their deducted lines, and the levels (locked)."""
    states = await order_states(conn, orders)
    deducted = await deducted_lines(conn, [o for o, s in states.items() if s is OrderState.DEDUCTED])
    keys = set(stock_keys)
    for (shop_id, _order_id), lines in deducted.items():
        keys.update((shop_id, sku) for sku in lines)
    levels = await lock_levels(conn, keys)
    return Book(levels=levels, orders=states, deducted=deducted)


# --- reads for the HTTP API --------------------------------------------------------------------------------


async def get_level(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, sku: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT shop_id, sku, available, updated_at FROM stock WHERE shop_id = $1 AND sku = $2", shop_id, sku
    )


async def list_levels(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, *, page: int, per_page: int,
                      out_of_stock_first: bool) -> tuple[int, list[asyncpg.Record]]:
    order = "(available > 0), sku" if out_of_stock_first else "sku"
    total = await conn.fetchval("SELECT count(*) FROM stock WHERE shop_id = $1", shop_id)
    rows = await conn.fetch(
        f"SELECT shop_id, sku, available, updated_at FROM stock WHERE shop_id = $1 ORDER BY {order} "  # noqa: S608
        "LIMIT $2 OFFSET $3",
        shop_id, per_page, (page - 1) * per_page,
    )
    return total, rows
