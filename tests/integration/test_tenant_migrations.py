"""The "shops are tenants" migrations on a database filled by the previous schema (real PostgreSQL).

Each test makes a fresh schema, applies only the migration files that existed before (the runtime's and the
service's, by the same names `orderflow migrate` records), inserts rows as the previous release wrote them, then
runs the real migration (`orderflow.runtime.db.migrate`, which applies only what is new) and checks that every row
was carried over, child rows got their order's shop, and the new keys let two shops use the same ids.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from orderflow.runtime.db import RUNTIME_MIGRATIONS, migrate, service_migrations

NEW = {"orders": "002_tenants.sql", "inventory": "002_tenants.sql", "cart": "003_tenants.sql",
       "notify": "004_tenants.sql"}
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def previous_release(tmp_path: Path, service: str) -> list[Path]:
    """Migration folders holding only the files before the tenants migration, named as the real ones."""
    runtime = tmp_path / "runtime" / "migrations"
    own = tmp_path / service / "migrations"
    runtime.mkdir(parents=True)
    own.mkdir(parents=True)
    for path in RUNTIME_MIGRATIONS.glob("*.sql"):
        shutil.copy(path, runtime / path.name)
    for path in service_migrations(service).glob("*.sql"):
        if path.name < NEW[service]:
            shutil.copy(path, own / path.name)
    return [runtime, own]


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    name = f"mig_{uuid.uuid4().hex[:10]}"
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def upgrade(database_url: str, schema: str, service: str, tmp_path: Path,
                  fill: str, *args: object) -> asyncpg.Connection:
    """Previous schema, `fill` (SQL run in it), then the real migrations; returns a connection in the schema."""
    conn = await asyncpg.connect(database_url)
    await migrate(conn, schema, previous_release(tmp_path, service))
    await conn.execute(f'SET search_path TO "{schema}"')
    await conn.execute(fill, *args)
    applied = await migrate(conn, schema, [RUNTIME_MIGRATIONS, service_migrations(service)])
    # The tenants migration first; later ones of the same service (e.g. orders' order details, refunds) follow it.
    assert applied[:1] == [f"{service}/{NEW[service]}"], applied
    assert all(name.startswith(f"{service}/") for name in applied), applied
    return conn


async def primary_key(conn: asyncpg.Connection, schema: str, table: str) -> list[str]:
    return [r["attname"] for r in await conn.fetch(
        """SELECT a.attname FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
           WHERE i.indrelid = $1::regclass AND i.indisprimary
           ORDER BY array_position(i.indkey::int[], a.attnum::int)""", f'"{schema}".{table}')]


ORDERS_FILL = """
INSERT INTO orders (order_id, shop_id, cart_id, customer, customer_email, customer_name, items, total_cents, currency,
                    payment_method, payment_provider, status, payment_status, placed_at, version)
VALUES ('1001', 'shop-a', 'cart-1', '{"email": "ada@example.com"}', 'ada@example.com', NULL,
        '[{"sku": "MUG", "name": "Mug", "quantity": 1, "unit_price_cents": 900}]', 900, 'EUR', 'gateway', 'paypal',
        'pending', 'paid', '2026-11-01T12:00:00Z', 2),
       ('2002', 'shop-b', NULL, '{"email": "bo@example.com"}', 'bo@example.com', NULL,
        '[{"sku": "MUG", "name": "Mug", "quantity": 2, "unit_price_cents": 900}]', 1800, 'EUR', 'manual', 'cheque',
        'pending', 'awaiting', '2026-11-01T12:00:00Z', 1);
INSERT INTO order_history (order_id, seq, from_status, to_status, from_payment_status, to_payment_status, changed_by,
                           reason)
VALUES ('1001', 1, NULL, 'incomplete', NULL, 'incomplete', 'system', 'placed'),
       ('1001', 2, 'incomplete', 'pending', 'incomplete', 'paid', 'system', 'paid'),
       ('2002', 1, NULL, 'pending', NULL, 'awaiting', 'system', 'placed');
INSERT INTO payments (order_id, payment_id, shop_id, amount_cents, currency, provider, applied, outcome)
VALUES ('1001', 'pay-1', 'shop-a', 900, 'EUR', 'paypal', true, 'applied'),
       ('3003', 'pay-9', 'shop-b', 500, 'EUR', 'paypal', false, NULL);
INSERT INTO stock_outcomes (order_id, kind, lines)
VALUES ('1001', 'deducted', '[{"sku": "MUG", "asked": 1, "moved": 1}]'),
       ('gone', 'deducted', '[]');
INSERT INTO cancel_requests (event_id, order_id, reason, outcome)
VALUES ('00000000-0000-0000-0000-000000000001', '2002', 'changed my mind', 'refused: too late'),
       ('00000000-0000-0000-0000-000000000002', '4004', NULL, NULL);
"""


async def test_orders_rows_get_their_shop_and_keys_name_it(database_url: str, schema: str, tmp_path: Path) -> None:
    from services.orders import repository as repo

    conn = await upgrade(database_url, schema, "orders", tmp_path, ORDERS_FILL)
    try:
        assert await primary_key(conn, schema, "orders") == ["shop_id", "order_id"]
        assert await primary_key(conn, schema, "order_history") == ["shop_id", "order_id", "seq"]
        assert await primary_key(conn, schema, "payments") == ["shop_id", "order_id", "payment_id"]
        assert await primary_key(conn, schema, "stock_outcomes") == ["shop_id", "order_id", "kind"]
        assert await primary_key(conn, schema, "cancel_requests") == ["shop_id", "event_id"]

        # every row carried over, each child row with its order's shop
        assert [(h["seq"], h["to_status"]) for h in await repo.history(conn, "shop-a", "1001")] == [
            (1, "incomplete"), (2, "pending")]
        assert len(await repo.history(conn, "shop-b", "2002")) == 1
        assert [p["payment_id"] for p in await repo.payments(conn, "shop-a", "1001")] == ["pay-1"]
        assert await repo.payments(conn, "shop-b", "1001") == []
        assert await repo.stock_outcomes(conn, "shop-a", "1001") == {
            "deducted": [{"sku": "MUG", "asked": 1, "moved": 1}]}
        assert [c["outcome"] for c in await repo.cancel_requests(conn, "shop-b", "2002")] == ["refused: too late"]
        # a held payment keeps the shop it was sent for; rows whose order was never stored get no shop
        assert await conn.fetchval("SELECT shop_id FROM payments WHERE payment_id = 'pay-9'") == "shop-b"
        assert await conn.fetchval("SELECT shop_id FROM stock_outcomes WHERE order_id = 'gone'") == ""
        assert await conn.fetchval("SELECT shop_id FROM cancel_requests WHERE order_id = '4004'") == ""
        assert await conn.fetchval("SELECT count(*) FROM order_history") == 3

        # shop-b may now place its own 1001, with history, payment and outcomes of its own
        await conn.execute(ORDERS_FILL.split(";")[0].replace("'2002', 'shop-b'", "'1001', 'shop-b'")
                           .replace("'1001', 'shop-a'", "'1002', 'shop-a'"))
        await conn.execute("INSERT INTO order_history (shop_id, order_id, seq, to_status, to_payment_status, "
                           "changed_by, reason) VALUES ('shop-b', '1001', 1, 'pending', 'awaiting', 'system', 'x')")
        found = await repo.find_orders(conn, "1001")
        assert [(o.shop_id, o.total_cents) for o in found] == [("shop-a", 900), ("shop-b", 1800)]
        assert (await repo.get_order(conn, "shop-b", "1001")).customer == {"email": "bo@example.com"}
        with pytest.raises(asyncpg.ForeignKeyViolationError):  # history still needs its (shop's) order
            await conn.execute("INSERT INTO order_history (shop_id, order_id, seq, to_status, to_payment_status, "
                               "changed_by, reason) VALUES ('shop-c', '1001', 1, 'pending', 'paid', 'system', 'x')")
    finally:
        await conn.close()


INVENTORY_FILL = """
INSERT INTO stock (shop_id, sku, available, version) VALUES ('shop-a', 'MUG', 7, 3);
INSERT INTO order_stock (order_id, shop_id, state) VALUES ('1001', 'shop-a', 'returned'), ('1002', 'shop-a', 'closed');
INSERT INTO stock_moves (order_id, kind, shop_id, sku, asked, moved)
VALUES ('1001', 'deducted', 'shop-a', 'MUG', 3, 3), ('1001', 'returned', 'shop-a', 'MUG', 3, 3);
"""


async def test_inventory_ledger_and_order_states_are_keyed_by_shop(database_url: str, schema: str,
                                                                    tmp_path: Path) -> None:
    from services.inventory import repository as repo
    from services.inventory.core import DeductionKind, Move, OrderState

    conn = await upgrade(database_url, schema, "inventory", tmp_path, INVENTORY_FILL)
    try:
        assert await primary_key(conn, schema, "order_stock") == ["shop_id", "order_id"]
        assert await primary_key(conn, schema, "stock_moves") == ["shop_id", "order_id", "kind", "sku"]
        assert await repo.order_states(conn, [("shop-a", "1001"), ("shop-a", "1002"), ("shop-b", "1001")]) == {
            ("shop-a", "1001"): OrderState.RETURNED, ("shop-a", "1002"): OrderState.CLOSED}
        assert await repo.deducted_lines(conn, [("shop-a", "1001"), ("shop-b", "1001")]) == {
            ("shop-a", "1001"): {"MUG": 3}}
        assert (await repo.get_level(conn, "shop-a", "MUG"))["available"] == 7

        async with conn.transaction():  # shop-b's 1001 is another order: its own state and ledger lines
            await repo.save_order_states(conn, {("shop-b", "1001"): OrderState.DEDUCTED})
            await repo.insert_moves(conn, [Move("1001", DeductionKind.DEDUCTED, "shop-b", "MUG", 2, 2)])
        assert await repo.order_states(conn, [("shop-a", "1001"), ("shop-b", "1001")]) == {
            ("shop-a", "1001"): OrderState.RETURNED, ("shop-b", "1001"): OrderState.DEDUCTED}
        with pytest.raises(repo.LostRace):  # the same shop's line twice is still refused
            async with conn.transaction():
                await repo.insert_moves(conn, [Move("1001", DeductionKind.DEDUCTED, "shop-a", "MUG", 3, 3)])
    finally:
        await conn.close()


CART_FILL = """
INSERT INTO carts (cart_id, shop_id, customer, items, status, updated_at)
VALUES ('cart-1', 'shop-a', '{"email": "ada@example.com"}', '[{"sku": "MUG", "quantity": 2}]', 'open',
        '2026-11-01T12:00:00Z');
INSERT INTO checkouts (cart_id, shop_id, state, customer, items, started_at, due_at)
VALUES ('cart-1', 'shop-a', 'open', '{"email": "ada@example.com"}', '[{"sku": "MUG", "quantity": 2}]',
        '2026-11-01T12:00:00Z', '2026-11-01T13:00:00Z');
"""


async def test_carts_and_checkout_watches_are_keyed_by_shop(database_url: str, schema: str, tmp_path: Path) -> None:
    from services.cart import repository as repo

    conn = await upgrade(database_url, schema, "cart", tmp_path, CART_FILL)
    try:
        assert await primary_key(conn, schema, "carts") == ["shop_id", "cart_id"]
        assert await primary_key(conn, schema, "checkouts") == ["shop_id", "cart_id"]
        assert (await repo.load_cart(conn, "shop-a", "cart-1"))["items"] == [{"sku": "MUG", "quantity": 2}]

        # shop-b reuses the cart id: a cart and a watch of its own; shop-a's stay as they were
        await repo.save_snapshots(conn, [("cart-1", "shop-b", {"email": "bo@example.com"},
                                          [{"sku": "TEE", "quantity": 1}], T0)])
        async with conn.transaction():
            watches = await repo.lock_checkouts(conn, [("shop-a", "cart-1"), ("shop-b", "cart-1")])
            assert list(watches) == [("shop-a", "cart-1")]
            await repo.mark_ordered(conn, [("cart-1", "shop-b", "1001", T0, [{"sku": "TEE", "quantity": 1}],
                                            {"email": "bo@example.com"})])
        assert (await repo.load_cart(conn, "shop-a", "cart-1"))["customer"] == {"email": "ada@example.com"}
        assert (await repo.load_cart(conn, "shop-a", "cart-1"))["status"] == "open"
        assert (await repo.load_cart(conn, "shop-b", "cart-1"))["status"] == "ordered"
        assert await repo.shops_with_cart(conn, "cart-1") == ["shop-a", "shop-b"]
    finally:
        await conn.close()


async def test_a_cart_first_known_from_its_order_shows_what_was_ordered(database_url: str, schema: str,
                                                                         tmp_path: Path) -> None:
    """order.placed and cart.updated are consumed apart: when the order is read first, the cart's older snapshot
    is ignored when it comes, so the cart holds the order's lines (seen in a clean-clone run: an ordered cart with
    no `ordered_items`). A cart known before its order keeps its own snapshot."""
    from datetime import timedelta

    from services.cart import repository as repo

    conn = await upgrade(database_url, schema, "cart", tmp_path, CART_FILL)
    try:
        ordered = [{"sku": "TEE", "quantity": 5, "name": "Tee", "unit_price_cents": 1500}]
        await repo.mark_ordered(conn, [("cart-7", "shop-c", "1001", T0, ordered, {"email": "bo@example.com"})])
        await repo.save_snapshots(conn, [("cart-7", "shop-c", {"email": "bo@example.com"},
                                          [{"sku": "TEE", "quantity": 5}], T0 - timedelta(seconds=1))])
        cart = await repo.load_cart(conn, "shop-c", "cart-7")
        assert (cart["status"], cart["order_id"], cart["items"]) == ("ordered", "1001", ordered)

        await repo.mark_ordered(conn, [("cart-1", "shop-a", "1002", T0 + timedelta(days=400), ordered, {})])
        cart = await repo.load_cart(conn, "shop-a", "cart-1")
        assert (cart["status"], cart["items"]) == ("ordered", [{"sku": "MUG", "quantity": 2}])
    finally:
        await conn.close()


NOTIFY_FILL = """
INSERT INTO mails (ref, kind, shop_id, audience, template, context, to_addr, message_id, state)
VALUES ('shop-a/1001', 'confirmation', 'shop-a', 'customer', 'confirmation', '{}', 'ada@example.com', '<x@o>',
        'sent'),
       ('shop-b/1001', 'confirmation', 'shop-b', 'customer', 'confirmation', '{}', 'bo@example.com', '<y@o>',
        'pending');
"""


async def test_notify_mails_stay_and_a_ref_must_name_its_shop(database_url: str, schema: str,
                                                              tmp_path: Path) -> None:
    conn = await upgrade(database_url, schema, "notify", tmp_path, NOTIFY_FILL)
    try:
        assert await primary_key(conn, schema, "mails") == ["ref", "kind"]
        rows = await conn.fetch("SELECT ref, shop_id, state FROM mails ORDER BY ref")
        assert [tuple(r) for r in rows] == [("shop-a/1001", "shop-a", "sent"), ("shop-b/1001", "shop-b", "pending")]
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO mails (ref, kind, shop_id, audience, template, context, message_id) "
                "VALUES ('shop-a/1002', 'new_order', 'shop-b', 'merchant', 'new_order', $1, '<z@o>')", json.dumps({}))
    finally:
        await conn.close()
