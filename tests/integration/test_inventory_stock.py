"""Inventory on the real broker and database: deducted once, returned once, through duplicates and crashes.

The inventory is downstream of the orders service, so these tests produce `order.status` events themselves.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts import (
    ChangedBy,
    Customer,
    OrderItem,
    OrderStatus,
    OrderStatusChanged,
    Payment,
    PaymentStatus,
    StockAdjusted,
    new_event_id,
    now,
    topics,
)
from contracts.producer import StorefrontProducer
from tests.helpers import async_wait_for
from tests.workers import make_worker, worker_env

pytestmark = pytest.mark.slow


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def order_status(shop_id: str, order_id: str, status: OrderStatus, lines: dict[str, int], *,
                 payment_status: PaymentStatus = PaymentStatus.AWAITING) -> OrderStatusChanged:
    return OrderStatusChanged(
        event_id=new_event_id(), occurred_at=now(), shop_id=shop_id, order_id=order_id, status=status,
        payment_status=payment_status, changed_by=ChangedBy.MERCHANT,
        customer=Customer(email="ada@example.com", name="Ada"),
        items=[OrderItem(sku=sku, name=sku, quantity=n, unit_price_cents=100) for sku, n in lines.items()],
        total_cents=100 * sum(lines.values()), currency="EUR", payment=Payment(method="manual", provider="cheque"),
    )


def restock(shop_id: str, sku: str, *, delta: int | None = None, set_to: int | None = None) -> StockAdjusted:
    return StockAdjusted(event_id=new_event_id(), occurred_at=now(), shop_id=shop_id, sku=sku, delta=delta,
                         set_to=set_to)


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[StorefrontProducer]:
    async with StorefrontProducer(kafka_bootstrap, linger_ms=5) as p:
        yield p


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "inventory"})
    yield conn
    await conn.close()


class TopicTail:
    """Reads a topic from the offsets it had when created: what tests see of the inventory's output."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.bootstrap = bootstrap
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.seen: list[tuple[bytes | None, dict, dict[str, str]]] = []

    async def start(self) -> TopicTail:
        await self.consumer.start()
        probe = AIOKafkaProducer(bootstrap_servers=self.bootstrap)  # its partitions_for fetches the metadata
        await probe.start()
        try:
            parts = [TopicPartition(self.topic, p) for p in await probe.partitions_for(self.topic)]
        finally:
            await probe.stop()
        self.consumer.assign(parts)
        for tp, offset in (await self.consumer.end_offsets(parts)).items():
            self.consumer.seek(tp, offset)
        return self

    async def read(self, keep: Callable[[bytes | None], bool]) -> list[tuple[bytes | None, dict, dict[str, str]]]:
        batches = await self.consumer.getmany(timeout_ms=200, max_records=5000)
        for records in batches.values():
            for r in records:
                if keep(r.key):
                    headers = {k: v.decode() for k, v in (r.headers or [])}
                    self.seen.append((r.key, json.loads(r.value), headers))
        return self.seen

    async def stop(self) -> None:
        await self.consumer.stop()


async def tail(bootstrap: str, topic: str) -> TopicTail:
    return await TopicTail(bootstrap, topic).start()


async def wait_level(pg: asyncpg.Connection, shop_id: str, sku: str, expected: int, timeout: float = 60) -> None:
    async def reached() -> bool:
        return await pg.fetchval("SELECT available FROM stock WHERE shop_id = $1 AND sku = $2", shop_id, sku) \
            == expected
    await async_wait_for(reached, timeout=timeout, message=f"{shop_id}/{sku} at {expected}")


async def test_paid_three_times_shipped_twice_deducts_once_and_cancel_returns_once(
        kafka_bootstrap: str, database_url: str, tmp_path: Path, producer: StorefrontProducer,
        pg: asyncpg.Connection) -> None:
    shop, order, ghost_order = uid("shop"), uid("order"), uid("order")
    deductions = await tail(kafka_bootstrap, topics.INVENTORY_DEDUCTIONS.name)
    levels = await tail(kafka_bootstrap, topics.INVENTORY_LEVELS.name)
    dead = await tail(kafka_bootstrap, topics.ORDER_STATUS.dlq)
    worker = make_worker("inventory", worker_env(kafka_bootstrap, database_url), tmp_path).start().wait_ready()
    try:
        await producer.send(restock(shop, "MUG", set_to=10))
        await producer.send(restock(shop, "TEE", delta=5))
        await producer.send(restock(shop, "ZERO", set_to=0))
        await wait_level(pg, shop, "TEE", 5)
        await wait_level(pg, shop, "ZERO", 0)  # its own key, maybe another partition: listed below

        lines = {"MUG": 3, "TEE": 1}
        placed = order_status(shop, order, OrderStatus.PENDING, lines)
        paid = [order_status(shop, order, OrderStatus.PENDING, lines, payment_status=PaymentStatus.PAID)
                for _ in range(3)]
        shipped = order_status(shop, order, OrderStatus.PROCESSED, lines, payment_status=PaymentStatus.PAID)
        delivered = order_status(shop, order, OrderStatus.DELIVERED, lines, payment_status=PaymentStatus.PAID)
        for event in [placed, placed, *paid, shipped, shipped, delivered]:  # placed and shipped delivered twice
            await producer.send(event)
        await producer.send(order_status(shop, ghost_order, OrderStatus.PENDING, {"GHOST": 1}))

        with worker.client() as http:
            async def mug_settled() -> bool:
                body = http.get(f"/stock/{shop}/MUG").json()
                return body.get("available") == 7 and await pg.fetchval(
                    "SELECT count(*) FROM stock_moves WHERE order_id = $1", order) == 2
            await async_wait_for(mug_settled, timeout=60, message="MUG deducted")
            assert http.get(f"/stock/{shop}/TEE").json()["available"] == 4
            assert http.get(f"/stock/{shop}/NOPE").status_code == 404
            listing = http.get(f"/stock/{shop}", params={"out_of_stock_first": 1, "per_page": 2}).json()
            assert listing["total"] == 3 and [i["sku"] for i in listing["items"]] == ["ZERO", "MUG"]

            for _ in range(2):
                await producer.send(order_status(shop, order, OrderStatus.CANCELED, lines))
            await wait_level(pg, shop, "MUG", 10)
            await wait_level(pg, shop, "TEE", 5)

        async def dead_ghost() -> list:
            return [h for k, _, h in await dead.read(lambda k: k == ghost_order.encode())]
        (headers,) = await async_wait_for(dead_ghost, timeout=30, message="unknown SKU dead-lettered")
        assert headers["dlq.error.kind"] == "rejected" and "GHOST" in headers["dlq.error"]
        assert await pg.fetchval("SELECT count(*) FROM stock_moves WHERE order_id = $1", ghost_order) == 0

        async def both_kinds() -> list:
            seen = await deductions.read(lambda k: k == order.encode())
            return seen if {v["kind"] for _, v, _ in seen} == {"deducted", "returned"} else []
        seen = await async_wait_for(both_kinds, timeout=30, message="deductions published")
        by_kind = {v["kind"]: v for _, v, _ in seen}
        assert len({v["event_id"] for _, v, _ in seen}) == 2
        assert sorted((ln["sku"], ln["asked"], ln["moved"]) for ln in by_kind["deducted"]["lines"]) == [
            ("MUG", 3, 3), ("TEE", 1, 1)]

        async def final_levels() -> bool:
            seen = await levels.read(lambda k: k is not None and k.startswith(f"{shop}/".encode()))
            latest = {v["sku"]: v["available"] for _, v, _ in seen}
            return latest == {"MUG": 10, "TEE": 5, "ZERO": 0}
        await async_wait_for(final_levels, timeout=30, message="levels published")
    finally:
        worker.kill()
        for t in (deductions, levels, dead):
            await t.stop()


async def test_an_order_read_before_its_restock_waits_for_it_instead_of_being_refused(
        kafka_bootstrap: str, database_url: str, tmp_path: Path, producer: StorefrontProducer,
        pg: asyncpg.Connection) -> None:
    """The SKU is unknown when the order is read, but stock.adjusted holds its restock, written before the order and
    not applied yet: the refusal waits, paused on /health, and the order is deducted once the restock is applied.
    A SIGKILL run dead-lettered 585 good orders this way before the wait existed (a restock's partition was slow)."""
    shop, order = uid("shop"), uid("order")
    dead = await tail(kafka_bootstrap, topics.ORDER_STATUS.dlq)
    worker = make_worker("inventory", worker_env(kafka_bootstrap, database_url), tmp_path).start().wait_ready()
    holder = await asyncpg.connect(database_url, server_settings={"search_path": "inventory"})
    try:
        await producer.send(restock(shop, "HELD", set_to=1))
        await wait_level(pg, shop, "HELD", 1)
        # stock.adjusted is held behind a row lock, so the restock of LATE, written next, is not applied yet
        lock = holder.transaction()
        await lock.start()
        await holder.execute("SELECT 1 FROM stock WHERE shop_id = $1 AND sku = 'HELD' FOR UPDATE", shop)
        await producer.send(restock(shop, "HELD", delta=1))
        await async_wait_for(lambda: pg.fetchval("SELECT count(*) > 0 FROM pg_locks WHERE NOT granted"),
                             timeout=30, message="stock.adjusted waiting on the row lock")
        await producer.send(restock(shop, "LATE", set_to=5))
        await producer.send(order_status(shop, order, OrderStatus.PENDING, {"LATE": 2}))

        def paused() -> str:
            return worker.client().get("/health").json().get("paused", {}).get(topics.ORDER_STATUS.name, "")
        reason = await async_wait_for(paused, timeout=30, message="order.status paused for stock.adjusted")
        assert "a refusal waits until stock.adjusted" in reason
        assert await pg.fetchval("SELECT count(*) FROM stock_moves WHERE shop_id = $1", shop) == 0

        await lock.rollback()
        await wait_level(pg, shop, "LATE", 3)
        await wait_level(pg, shop, "HELD", 2)
        assert await pg.fetchval("SELECT state FROM order_stock WHERE shop_id = $1 AND order_id = $2",
                                 shop, order) == "deducted"
        await async_wait_for(lambda: not paused(), timeout=30, message="order.status going on")
        assert not [k for k, _, _ in await dead.read(lambda k: k is not None and order.encode() in k)]
    finally:
        worker.kill()
        await holder.close()
        await dead.stop()


async def produce_orders(producer: StorefrontProducer, shop: str, count: int, *, cancel_every: int = 7) -> dict:
    """`count` committed orders (1-3 lines, with duplicate events), every `cancel_every`-th one canceled."""
    expected = {"A": 0, "B": 0, "C": 0}
    pending = []
    for n in range(count):
        lines = {sku: 1 + (n + i) % 3 for i, sku in enumerate("ABC"[: 1 + n % 3])}
        order = f"{shop}-o{n}"
        event = order_status(shop, order, OrderStatus.PENDING, lines)
        pending += [await producer.send_soon(event), await producer.send_soon(event)]
        if n % cancel_every == 0:
            pending.append(await producer.send_soon(order_status(shop, order, OrderStatus.CANCELED, lines)))
        else:
            for sku, q in lines.items():
                expected[sku] += q
        if len(pending) > 2000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    return expected


async def ledger_summary(pg: asyncpg.Connection, shop: str) -> tuple[int, dict[str, int]]:
    moves = await pg.fetchval("SELECT count(*) FROM stock_moves WHERE shop_id = $1", shop)
    rows = await pg.fetch("SELECT sku, available FROM stock WHERE shop_id = $1", shop)
    return moves, {r["sku"]: r["available"] for r in rows}


async def test_sigkill_mid_stream_loses_and_doubles_nothing(
        kafka_bootstrap: str, database_url: str, tmp_path: Path, producer: StorefrontProducer,
        pg: asyncpg.Connection) -> None:
    shop, count, initial = uid("shop"), 3000, 1_000_000
    for sku in "ABC":
        await producer.send(restock(shop, sku, set_to=initial))
    worker = make_worker("inventory", worker_env(kafka_bootstrap, database_url), tmp_path).start().wait_ready()
    try:
        feeding = asyncio.create_task(produce_orders(producer, shop, count))
        await async_wait_for(lambda: pg.fetchval("SELECT count(*) > 200 FROM stock_moves WHERE shop_id = $1", shop),
                             timeout=60, message="some deductions")
        worker.kill()  # SIGKILL, mid-stream
        killed_at, _ = await ledger_summary(pg, shop)
        expected = await feeding
        worker.start().wait_ready()

        expected_moves = sum(1 + n % 3 for n in range(count)) + sum(1 + n % 3 for n in range(0, count, 7))
        assert killed_at < expected_moves, "the kill should land mid-stream"

        async def settled() -> bool:
            moves, _ = await ledger_summary(pg, shop)
            assert moves == expected_moves, f"{moves} stock moves of {expected_moves}"
            return True
        await async_wait_for(settled, timeout=90, message="every order deducted")
        _, levels = await ledger_summary(pg, shop)
        assert levels == {sku: initial - expected[sku] for sku in "ABC"}
        assert await pg.fetchval("SELECT count(*) FROM order_stock WHERE order_id LIKE $1 || '-o%' "
                                 "AND state NOT IN ('deducted', 'returned')", shop) == 0
    finally:
        worker.kill()


async def test_two_workers_share_partitions_and_one_stops_mid_stream(
        kafka_bootstrap: str, database_url: str, tmp_path: Path, producer: StorefrontProducer,
        pg: asyncpg.Connection) -> None:
    shop, count, initial = uid("shop"), 2000, 1_000_000
    for sku in "ABC":
        await producer.send(restock(shop, sku, set_to=initial))
    env = worker_env(kafka_bootstrap, database_url, app_prefix=uid("inv-pair"))
    first = make_worker("inventory", env, tmp_path, index=0).start()
    second = make_worker("inventory", env, tmp_path, index=1).start()
    try:
        first.wait_ready()
        second.wait_ready()
        feeding = asyncio.create_task(produce_orders(producer, shop, count, cancel_every=5))
        await async_wait_for(lambda: pg.fetchval("SELECT count(*) > 100 FROM stock_moves WHERE shop_id = $1", shop),
                             timeout=60, message="some deductions")
        second.stop()
        expected = await feeding
        expected_moves = sum(1 + n % 3 for n in range(count)) + sum(1 + n % 3 for n in range(0, count, 5))

        # levels alone are exact too while a canceled order is read neither as placed nor as canceled (the last
        # events of its partition): wait for every move as well
        async def settled() -> bool:
            moves, levels = await ledger_summary(pg, shop)
            return moves == expected_moves and levels == {sku: initial - expected[sku] for sku in "ABC"}
        await async_wait_for(settled, timeout=90, message="levels exact after one worker stopped")
        assert (await ledger_summary(pg, shop))[0] == expected_moves
    finally:
        first.kill()
        second.kill()
