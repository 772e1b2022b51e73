"""The cart service on the real broker and database: persistence, stock display, abandoned checkouts."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from helpers import async_wait_for
from workers import WorkerProcess, make_worker, worker_env

import contracts as c
from contracts.producer import StorefrontProducer

STORE_URL = "https://shop.test"
PARTITIONS = 8
MODULE_GROUP = f"carttest-{uuid.uuid4().hex[:8]}"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def envelope(shop_id: str, **shift: float) -> dict[str, Any]:
    return {"event_id": c.new_event_id(), "occurred_at": c.now() + timedelta(**shift), "shop_id": shop_id}


CUSTOMER = c.Customer(email="ada@example.com", name="Ada")


def checkout(shop_id: str, cart_id: str) -> c.CheckoutStarted:
    return c.CheckoutStarted(**envelope(shop_id), cart_id=cart_id, customer=CUSTOMER, total_cents=2500,
                             currency="EUR", items=[c.CartItem(sku="MUG-1", quantity=2, unit_price_cents=1250)])


def order(shop_id: str, cart_id: str, method: str) -> c.OrderPlaced:
    return c.OrderPlaced(**envelope(shop_id), order_id=uid("order"), cart_id=cart_id, customer=CUSTOMER,
                         items=[c.OrderItem(sku="MUG-1", name="Mug", quantity=2, unit_price_cents=1250)],
                         total_cents=2500, currency="EUR",
                         payment=c.Payment(method=method, provider="paypal" if method == "gateway" else "cheque"))


def status(placed: c.OrderPlaced, st: c.OrderStatus, pay: c.PaymentStatus) -> c.OrderStatusChanged:
    return c.OrderStatusChanged(**envelope(placed.shop_id), order_id=placed.order_id, cart_id=placed.cart_id,
                                status=st, payment_status=pay, changed_by=c.ChangedBy.SYSTEM,
                                customer=placed.customer, items=placed.items, total_cents=placed.total_cents,
                                currency=placed.currency, payment=placed.payment)


INPUTS = ["cart.updated", "checkout.started", "order.placed", "order.status", "inventory.levels", "shop.settings",
          "payment.confirmed"]


async def start_group_at_end(bootstrap: str, group_id: str) -> None:
    """Commit the current end of every input for a new group, so its first worker skips the broker's history."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in INPUTS for p in range(PARTITIONS)]
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        await consumer.commit({tp: offset for tp, offset in end.items()})
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
async def module_group(kafka_bootstrap: str) -> str:
    await start_group_at_end(kafka_bootstrap, f"{MODULE_GROUP}-cart")
    return MODULE_GROUP


@pytest.fixture
def cart_env(kafka_bootstrap: str, database_url: str, module_group: str) -> dict[str, str]:
    # One consumer group for the module's workers (one at a time): only the first one reads the topics from 0.
    return worker_env(kafka_bootstrap, database_url, app_prefix=module_group, ABANDON_AFTER_SECONDS="3",
                      ABANDON_SCAN_MS="200", PUBLIC_STORE_URL=STORE_URL)


@pytest.fixture
def workers() -> list[WorkerProcess]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def start(env: dict[str, str], tmp_path: Path, workers: list[WorkerProcess], index: int = 0) -> WorkerProcess:
    w = make_worker("cart", env, tmp_path, index).start().wait_ready(timeout=90)
    workers.append(w)
    return w


async def send(bootstrap: str, *events: c.Event) -> None:
    async with StorefrontProducer(bootstrap) as producer:
        for fut in [await producer.send_soon(e) for e in events]:
            await fut


async def get_cart(worker: WorkerProcess, cart_id: str, key: str | None = None) -> dict | None:
    """The cart view with the shop's storefront key (customer shown) or, by default, the operator's token."""
    async with httpx.AsyncClient(base_url=worker.url, timeout=10,
                                 headers={"Authorization": f"Bearer {key or worker.token}"}) as client:
        r = await client.get(f"/carts/{cart_id}")
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()


async def storefront_key(database_url: str, shop_id: str) -> str:
    """A storefront key for the shop, as `orderflow shop credentials create SHOP --kind storefront` makes one."""
    from orderflow.auth import credentials

    conn = await asyncpg.connect(database_url)
    try:
        token, _ = await credentials.create(conn, shop_id, "storefront")
    finally:
        await conn.close()
    return token


async def read_topic(bootstrap: str, topic: str, keys: set[str]) -> list[tuple[str, bytes]]:
    """Every message of `topic` whose key is one of `keys`, from offset 0 to the current end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        found = []
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [(r.key.decode(), r.value) for r in records if r.key and r.key.decode() in keys]
        return found
    finally:
        await consumer.stop()


async def abandoned(bootstrap: str, cart_ids: set[str]) -> list[c.CheckoutAbandoned]:
    return [c.decode(c.CheckoutAbandoned, v) for _, v in await read_topic(bootstrap, "checkout.abandoned", cart_ids)]


async def checkout_states(database_url: str, cart_ids: set[str]) -> dict[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT cart_id, state FROM cart.checkouts WHERE cart_id = ANY($1::text[])",
                                list(cart_ids))
        return {r["cart_id"]: r["state"] for r in rows}
    finally:
        await conn.close()


async def settled(database_url: str, cart_ids: set[str]) -> bool:
    """Every watch decided (none open) and every staged event relayed: nothing more can be emitted for them."""
    states = await checkout_states(database_url, cart_ids)
    if len(states) != len(cart_ids) or "open" in states.values():
        return False
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM cart.outbox WHERE published_at IS NULL") == 0
    finally:
        await conn.close()


async def caught_up(bootstrap: str, group_id: str, topic_names: list[str]) -> bool:
    """The consumer group committed up to the end of every partition of these topics."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group_id)
        parts = [TopicPartition(t, p) for t in topic_names for p in range(PARTITIONS)]
        end = await consumer.end_offsets(parts)
        return all(end[tp] == 0 or (tp in committed and committed[tp].offset >= end[tp]) for tp in parts)
    finally:
        await consumer.stop()
        await admin.close()


# --- persistent cart -----------------------------------------------------------------------------------------


async def test_cart_survives_restart_and_rebuild_from_topics(
        kafka_bootstrap: str, database_url: str, cart_env: dict[str, str], tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    shop, cart_id = uid("shop"), uid("cart")
    first = c.CartUpdated(**envelope(shop), cart_id=cart_id, customer=c.CartCustomer(email="bo@example.com"),
                          items=[c.CartItem(sku="MUG-1", quantity=1)])
    newest = c.CartUpdated(**envelope(shop, seconds=1), cart_id=cart_id, customer=first.customer,
                           items=[c.CartItem(sku="MUG-1", quantity=3, name="Mug"), c.CartItem(sku="TEE", quantity=1)])
    stale = c.CartUpdated(**envelope(shop, seconds=-60), cart_id=cart_id, items=[])  # older: must not roll back
    worker = start(cart_env, tmp_path, workers)
    await send(kafka_bootstrap, first, newest, stale)
    key = await storefront_key(database_url, shop)

    async def shows_newest() -> dict | None:
        cart = await get_cart(worker, cart_id, key)
        return cart if cart and [i["quantity_asked"] for i in cart["items"]] == [3, 1] else None

    before = await async_wait_for(shows_newest, timeout=30, message="the newest snapshot")
    assert before["status"] == "open" and before["customer"] == {"email": "bo@example.com"}

    worker.restart()
    assert await get_cart(worker, cart_id, key) == before

    worker.kill()  # rebuild: empty cart view tables, a fresh consumer group re-reads every topic from offset 0
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE cart.carts, cart.stock_levels")
    finally:
        await conn.close()
    rebuilt = start(worker_env(kafka_bootstrap, database_url, ABANDON_AFTER_SECONDS="3", ABANDON_SCAN_MS="200",
                               PUBLIC_STORE_URL=STORE_URL), tmp_path, workers, index=1)

    async def rebuilt_equal() -> bool:
        return await get_cart(rebuilt, cart_id, key) == before

    await async_wait_for(rebuilt_equal, timeout=60, message="the rebuilt cart equal to the one before")


async def test_sold_out_item_shows_zero_then_comes_back_and_order_empties_the_cart(
        kafka_bootstrap: str, cart_env: dict[str, str], tmp_path: Path, workers: list[WorkerProcess]) -> None:
    shop, cart_id = uid("shop"), uid("cart")
    worker = start(cart_env, tmp_path, workers)

    def level(available: int, seconds: float) -> c.InventoryLevel:
        at = c.now() + timedelta(seconds=seconds)
        return c.InventoryLevel(**envelope(shop), sku="MUG-1", available=available, updated_at=at)

    async def line(sku: str, **expected: Any) -> dict | None:
        cart = await get_cart(worker, cart_id)
        found = [i for i in (cart or {}).get("items", []) if i["sku"] == sku]
        return found[0] if found and all(found[0][k] == v for k, v in expected.items()) else None

    async with StorefrontProducer(kafka_bootstrap) as producer:
        await producer.send_raw("cart.updated", cart_id.encode(), b'{"not": "a cart"')  # dead-lettered, stream goes on
        await producer.send(level(5, 0))
        await producer.send(c.CartUpdated(**envelope(shop), cart_id=cart_id, items=[
            c.CartItem(sku="MUG-1", quantity=2), c.CartItem(sku="NEVER-STOCKED", quantity=1)]))
    assert await async_wait_for(lambda: line("MUG-1", quantity_shown=2, status="ok"), timeout=30)
    unknown = await line("NEVER-STOCKED")
    assert unknown["status"] == "ok" and unknown["quantity_shown"] == 1 and unknown["stock"] == "unknown"

    await send(kafka_bootstrap, level(0, 1))
    sold_out = await async_wait_for(lambda: line("MUG-1", status="out_of_stock"), timeout=30, message="sold out")
    assert (sold_out["quantity_asked"], sold_out["quantity_shown"], sold_out["message"]) == (2, 0, "out of stock")

    await send(kafka_bootstrap, level(1, 2))
    limited = await async_wait_for(lambda: line("MUG-1", status="limited"), timeout=30, message="one left")
    assert limited["quantity_shown"] == 1 and "1 left" in limited["message"]

    await send(kafka_bootstrap, level(10, 3), level(0, -30))  # restock; an older level must not win
    assert await async_wait_for(lambda: line("MUG-1", quantity_shown=2, status="ok"), timeout=30, message="restock")

    async with httpx.AsyncClient(base_url=worker.url) as client:
        metrics = (await client.get("/metrics")).text
    shown = [float(m.split()[1]) for m in metrics.splitlines()
             if m.startswith("orderflow_cart_out_of_stock_items_shown_total ")]
    assert shown and shown[0] >= 1
    dead = await read_topic(kafka_bootstrap, "cart.updated.dlq", {cart_id})
    assert [v for _, v in dead] == [b'{"not": "a cart"']

    placed = order(shop, cart_id, "manual")
    await send(kafka_bootstrap, placed)
    ordered = await async_wait_for(lambda: _ordered(worker, cart_id), timeout=30, message="cart emptied by order")
    assert ordered["items"] == [] and ordered["order_id"] == placed.order_id and len(ordered["ordered_items"]) == 2


async def _ordered(worker: WorkerProcess, cart_id: str) -> dict | None:
    cart = await get_cart(worker, cart_id)
    return cart if cart and cart["status"] == "ordered" else None


# --- abandoned checkouts -------------------------------------------------------------------------------------


async def test_exactly_thirty_of_fifty_abandoned_through_kill_and_replay(
        kafka_bootstrap: str, database_url: str, cart_env: dict[str, str], tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    shop = uid("shop")
    worker = start(cart_env, tmp_path, workers)
    # The shop's own abandon_after (6 s) overrides ABANDON_AFTER_SECONDS (3 s): room to kill mid-window.
    await send(kafka_bootstrap, c.ShopSettings(**envelope(shop), name="Shop", merchant_email="m@example.com",
                                               abandon_after_seconds=6))

    async def settings_known() -> bool:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval("SELECT abandon_after_seconds FROM cart.shop_settings WHERE shop_id=$1",
                                       shop) == 6
        finally:
            await conn.close()

    await async_wait_for(settings_known, timeout=30, message="shop settings")
    carts = [uid("cart") for _ in range(50)]
    started = [checkout(shop, cart_id) for cart_id in carts]  # before the orders: an order older than its checkout
    completions: list[c.Event] = []                           # belongs to an earlier one and closes nothing
    for cart_id in carts[:10]:
        completions.append(order(shop, cart_id, "manual"))
    for cart_id in carts[10:20]:
        placed = order(shop, cart_id, "gateway")
        completions += [placed, status(placed, c.OrderStatus.PENDING, c.PaymentStatus.PAID)]
    await send(kafka_bootstrap, *started)
    await send(kafka_bootstrap, *completions)

    async def twenty_closed() -> dict[str, str] | None:
        states = await checkout_states(database_url, set(carts))
        closed = [x for x in carts[:20] if states.get(x) in {"ordered", "paid"}]
        return states if len(states) == 50 and len(closed) == 20 else None

    states = await async_wait_for(twenty_closed, timeout=30, message="20 checkouts completed")
    assert "abandoned" not in states.values(), "the kill must come in the middle of the window"
    worker.restart()  # SIGKILL, then a new process on the same data folder and consumer group

    async def thirty() -> list[c.CheckoutAbandoned] | None:
        found = await abandoned(kafka_bootstrap, set(carts))
        return found if len({a.cart_id for a in found}) >= 30 else None

    await async_wait_for(thirty, timeout=60, message="30 checkout.abandoned")
    await async_wait_for(lambda: settled(database_url, set(carts)), timeout=30, message="all watches decided")
    found = await abandoned(kafka_bootstrap, set(carts))
    assert sorted(a.cart_id for a in found) == sorted(carts[20:])  # exactly one each, none for completed ones
    assert all(a.recovery_url.startswith(f"{STORE_URL}/cart/{a.cart_id}?shop_id={shop}&token=")
               and a.order_id is None for a in found)
    assert all(a.customer.email == "ada@example.com" and a.items[0].sku == "MUG-1" for a in found)

    worker.kill()  # replay: a fresh consumer group re-reads every topic from offset 0
    prefix = uid("replay")
    start(worker_env(kafka_bootstrap, database_url, app_prefix=prefix, ABANDON_AFTER_SECONDS="3",
                     ABANDON_SCAN_MS="200", PUBLIC_STORE_URL=STORE_URL), tmp_path, workers, index=1)
    # The topics whose replay could open a watch (order.status, large on a shared broker, only closes them or
    # re-applies events that processed_events drops).
    watched = ["checkout.started", "order.placed"]
    await async_wait_for(lambda: caught_up(kafka_bootstrap, f"{prefix}-cart", watched), timeout=90,
                         message="replay caught up", interval=0.5)
    assert await settled(database_url, set(carts))
    assert sorted(a.cart_id for a in await abandoned(kafka_bootstrap, set(carts))) == sorted(carts[20:])


async def test_unpaid_gateway_order_is_abandoned_once_and_payment_later_sends_nothing(
        kafka_bootstrap: str, database_url: str, cart_env: dict[str, str], tmp_path: Path,
        workers: list[WorkerProcess]) -> None:
    shop, cart_id = uid("shop"), uid("cart")
    start(cart_env, tmp_path, workers)
    started = checkout(shop, cart_id)
    placed = order(shop, cart_id, "gateway")
    await send(kafka_bootstrap, started, placed,
               status(placed, c.OrderStatus.INCOMPLETE, c.PaymentStatus.INCOMPLETE))

    one = await async_wait_for(lambda: abandoned(kafka_bootstrap, {cart_id}), timeout=30, message="abandoned")
    assert len(one) == 1 and one[0].order_id == placed.order_id
    assert json.loads(c.encode(one[0]))["recovery_url"].startswith(f"{STORE_URL}/cart/{cart_id}?shop_id={shop}&token=")

    await send(kafka_bootstrap, status(placed, c.OrderStatus.PENDING, c.PaymentStatus.PAID))
    await async_wait_for(lambda: _state_is(database_url, cart_id, "paid"), timeout=30, message="paid recorded")
    await async_wait_for(lambda: settled(database_url, {cart_id}), timeout=30, message="outbox drained")
    assert len(await abandoned(kafka_bootstrap, {cart_id})) == 1


async def _state_is(database_url: str, cart_id: str, state: str) -> bool:
    return (await checkout_states(database_url, {cart_id})).get(cart_id) == state
