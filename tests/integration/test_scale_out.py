"""Scale-out on Kafka's own partitioning: three inventory workers in one consumer group split the 8 partitions,
one of them is stopped mid-stream, and the stock in PostgreSQL is still exact.

Given stock for 8 SKUs, when a few hundred orders commit (some twice, some then canceled) while the group shrinks
from three workers to two, then every order is deducted exactly once and every cancel returned exactly once.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections import Counter

import asyncpg
import httpx
import pytest
from helpers import async_wait_for
from workers import WorkerProcess, make_worker, worker_env

from contracts import (
    ChangedBy,
    Customer,
    OrderItem,
    OrderStatus,
    OrderStatusChanged,
    Payment,
    PaymentStatus,
    StockAdjusted,
    now,
)
from contracts.producer import StorefrontProducer

pytestmark = pytest.mark.slow

WORKERS = 3
SKUS = [f"sku-{n}" for n in range(8)]
STARTING_STOCK = 1000
ORDERS = 300
EVENTS_IN = re.compile(r'^orderflow_events_in_total\{topic="order\.status"\} (\S+)$', re.MULTILINE)


def status_event(shop_id: str, order_id: str, status: OrderStatus, lines: dict[str, int],
                 previous: OrderStatus | None = None) -> OrderStatusChanged:
    items = [OrderItem(sku=sku, name=sku, quantity=qty, unit_price_cents=100) for sku, qty in lines.items()]
    return OrderStatusChanged(
        event_id=uuid.uuid4(), occurred_at=now(), shop_id=shop_id, order_id=order_id, status=status,
        payment_status=PaymentStatus.AWAITING, previous_status=previous, changed_by=ChangedBy.SYSTEM,
        customer=Customer(email="scale@example.com"), items=items, total_cents=100 * sum(lines.values()),
        currency="EUR", payment=Payment(method="manual", provider="transfer"),
    )


def order_stream(shop_id: str, seed: int) -> tuple[list[OrderStatusChanged], Counter[str], set[str]]:
    """Events to send, the units each SKU should lose, and the canceled order ids.

    Every order commits (pending); every 7th also re-sends its commit as `processed` (no second deduction);
    every 5th is then canceled (its stock comes back).
    """
    rng = random.Random(seed)
    events: list[OrderStatusChanged] = []
    net: Counter[str] = Counter()
    canceled: set[str] = set()
    for n in range(ORDERS):
        order_id = f"scale-{uuid.uuid4().hex[:12]}"
        lines = {sku: rng.randint(1, 3) for sku in rng.sample(SKUS, rng.randint(1, 2))}
        events.append(status_event(shop_id, order_id, OrderStatus.PENDING, lines))
        if n % 7 == 0:
            events.append(status_event(shop_id, order_id, OrderStatus.PROCESSED, lines, OrderStatus.PENDING))
        if n % 5 == 0:
            events.append(status_event(shop_id, order_id, OrderStatus.CANCELED, lines, OrderStatus.PENDING))
            canceled.add(order_id)
        else:
            net.update(lines)
    return events, net, canceled


async def order_status_events_in(worker: WorkerProcess) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{worker.url}/metrics")).text
    return sum(float(v) for v in EVENTS_IN.findall(text))


async def all_ready(workers: list[WorkerProcess]) -> bool:
    """Ready at the same time: the group has settled with every one of them holding an assignment."""
    async with httpx.AsyncClient(timeout=3) as client:
        for worker in workers:
            try:
                if (await client.get(f"{worker.url}/health")).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
    return True


async def send_all(producer: StorefrontProducer, events: list) -> list:
    futures = [await producer.send_soon(e) for e in events]
    return await asyncio.gather(*futures)  # where each landed (RecordMetadata)


async def test_three_workers_split_partitions_and_stock_stays_exact_when_one_stops(
        kafka_bootstrap, database_url, tmp_path):
    shop_id = f"scale-shop-{uuid.uuid4().hex[:10]}"
    env = worker_env(kafka_bootstrap, database_url, app_prefix=f"scale-{uuid.uuid4().hex[:8]}")
    workers = [make_worker("inventory", env, tmp_path, index=i) for i in range(WORKERS)]
    events, net, canceled = order_stream(shop_id, seed=9)
    first_half, second_half = events[: len(events) // 2], events[len(events) // 2:]
    conn = await asyncpg.connect(database_url)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready(timeout=90)
        await async_wait_for(lambda: all_ready(workers), timeout=60, interval=0.2,
                             message="three inventory workers ready together")

        async with StorefrontProducer(kafka_bootstrap) as producer:
            await send_all(producer, [
                StockAdjusted(event_id=uuid.uuid4(), occurred_at=now(), shop_id=shop_id, sku=sku, set_to=STARTING_STOCK)
                for sku in SKUS
            ])

            async def stock_known() -> bool:
                count = await conn.fetchval("SELECT count(*) FROM inventory.stock WHERE shop_id = $1", shop_id)
                return count == len(SKUS)

            await async_wait_for(stock_known, timeout=30, interval=0.1, message="the 8 SKUs in inventory.stock")

            written = await send_all(producer, first_half)

            async def consumed_first_half() -> list[float] | bool:
                counts = [await order_status_events_in(w) for w in workers]
                return sum(counts) >= len(first_half) and counts

            counts = await async_wait_for(consumed_first_half, timeout=60, interval=0.2,
                                          message="the first half of order.status consumed")
            assert all(c > 0 for c in counts), f"a worker got no order.status partition: {counts}"

            workers[1].stop()  # SIGTERM: it commits, leaves the group, the other two take its partitions
            written += await send_all(producer, second_half)

        expected = {sku: STARTING_STOCK - net[sku] for sku in SKUS}

        # the stock is exact too while a canceled order's events (the last of its partition) are not read yet, and
        # its state shows "deducted" between its commit and its cancel: wait until every event is applied (the
        # group's stored position, written with the effects, past the last record of each partition)
        last: dict[int, int] = {}
        for meta in written:
            last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)

        async def every_event_applied() -> bool:
            rows = await conn.fetch("SELECT partition, next_offset FROM inventory.consumer_positions "
                                    "WHERE consumer = $1 AND topic = 'order.status'",
                                    f"{env['ORDERFLOW_APP_ID_PREFIX']}-inventory")
            applied = {r["partition"]: r["next_offset"] for r in rows}
            return all(applied.get(p, 0) > offset for p, offset in last.items())

        await async_wait_for(every_event_applied, timeout=60, interval=0.2, message="every order.status applied")

        async def stock_exact() -> dict[str, int] | None:
            rows = await conn.fetch("SELECT sku, available FROM inventory.stock WHERE shop_id = $1", shop_id)
            levels = {r["sku"]: r["available"] for r in rows}
            assert levels == expected, f"stock {levels} != expected {expected}"
            return levels

        await async_wait_for(stock_exact, timeout=60, interval=0.2, message="exact stock after the stop")

        async def every_order_settled() -> bool:
            states = dict(await conn.fetch("SELECT order_id, state FROM inventory.order_stock WHERE shop_id = $1",
                                           shop_id))
            assert len(states) == ORDERS, f"{len(states)} of {ORDERS} orders seen"
            return True

        await async_wait_for(every_order_settled, timeout=30, interval=0.2, message="every order's state recorded")
        states = dict(await conn.fetch("SELECT order_id, state FROM inventory.order_stock WHERE shop_id = $1",
                                       shop_id))
        assert {o for o, s in states.items() if s == "returned"} == canceled
        assert {s for o, s in states.items() if o not in canceled} == {"deducted"}
        moves = await conn.fetch(
            "SELECT kind, count(DISTINCT order_id) AS orders FROM inventory.stock_moves WHERE shop_id = $1 "
            "GROUP BY kind", shop_id)
        assert {r["kind"]: r["orders"] for r in moves} == {"deducted": ORDERS, "returned": len(canceled)}
        assert all(w.proc is not None and w.proc.poll() is None for i, w in enumerate(workers) if i != 1)
    finally:
        await conn.close()
        for worker in workers:
            worker.stop()
