"""Benchmark (not a test): order lines per second deducted by ONE inventory worker, against the raw consume rate.

    KAFKA_BOOTSTRAP_SERVERS=... DATABASE_URL=... .venv/bin/python bench/inventory_bench.py [--orders 50000]

1. A fresh shop gets plenty of stock (stock.adjusted), applied by a worker of a fresh consumer group whose
   order.status offsets were first committed at the topic's end (so it skips every older event), then stopped.
2. N committing order.status events (1-3 lines each) are produced for that shop: a backlog.
3. (a) raw aiokafka: a plain consumer reads exactly those N events (no decoding): the baseline.
   (b) the worker is started again and we poll PostgreSQL until every order line is in the ledger.
Prints one JSON object: lines/s of each, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contracts import (  # noqa: E402
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
from contracts.producer import StorefrontProducer  # noqa: E402
from tests.workers import make_worker, worker_env  # noqa: E402

SKUS = [f"SKU-{i:02d}" for i in range(20)]


async def offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    probe = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        parts = [TopicPartition(topic, p) for p in await probe.partitions_for(topic)]
    finally:
        await probe.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return await consumer.end_offsets(parts)
    finally:
        await consumer.stop()


async def commit_offsets(bootstrap: str, group: str, positions: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(positions))
        await consumer.commit(positions)
    finally:
        await consumer.stop()


async def raw_consume(bootstrap: str, start: dict[TopicPartition, int], end: dict[TopicPartition, int]) -> tuple[int,
                                                                                                                  float]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        left = {tp for tp in start if end[tp] > start[tp]}
        count = 0
        began = time.perf_counter()
        while left:
            for tp, records in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).items():
                count += sum(1 for r in records if r.offset < end[tp])
                if records and records[-1].offset >= end[tp] - 1:
                    left.discard(tp)
        return count, time.perf_counter() - began
    finally:
        await consumer.stop()


def order_event(shop: str, n: int) -> OrderStatusChanged:
    lines = 1 + n % 3
    return OrderStatusChanged(
        event_id=new_event_id(), occurred_at=now(), shop_id=shop, order_id=f"{shop}-o{n}", status=OrderStatus.PENDING,
        payment_status=PaymentStatus.AWAITING, changed_by=ChangedBy.CUSTOMER,
        customer=Customer(email="bench@example.com", name="Bench"),
        items=[OrderItem(sku=SKUS[(n + i) % len(SKUS)], name="item", quantity=1, unit_price_cents=500)
               for i in range(lines)],
        total_cents=500 * lines, currency="EUR", payment=Payment(method="manual", provider="transfer"),
    )


def metric_text(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def metric(response: httpx.Response, name: str) -> int:
    return int(metric_text(response.text, name))


async def count_moves(pg: asyncpg.Connection, shop: str) -> int:
    return await pg.fetchval("SELECT count(*) FROM inventory.stock_moves WHERE shop_id = $1", shop)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=50_000)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    database_url = os.environ.get("DATABASE_URL", "postgresql://orderflow@127.0.0.1:5432/orderflow")
    shop = f"bench-{uuid.uuid4().hex[:10]}"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    group = f"{prefix}-inventory"
    workdir = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
    pg = await asyncpg.connect(database_url)

    # 1. stock for the shop, applied by a worker that skips all older order.status and stock.adjusted events
    await commit_offsets(bootstrap, group, {**await offsets(bootstrap, topics.ORDER_STATUS.name),
                                            **await offsets(bootstrap, topics.STOCK_ADJUSTED.name)})
    async with StorefrontProducer(bootstrap, linger_ms=20) as producer:
        for sku in SKUS:
            await producer.send(StockAdjusted(event_id=new_event_id(), occurred_at=now(), shop_id=shop, sku=sku,
                                              set_to=10_000_000))
        worker = make_worker("inventory", worker_env(bootstrap, database_url, app_prefix=prefix,
                                                     LOG_LEVEL="warning"), workdir).start().wait_ready()
        deadline = time.monotonic() + 120
        while await pg.fetchval("SELECT count(*) FROM inventory.stock WHERE shop_id = $1", shop) < len(SKUS):
            if time.monotonic() > deadline:
                raise SystemExit("stock was not applied within 120 s")
            await asyncio.sleep(0.1)  # polling interval
        worker.stop()

        # 2. the backlog
        start = await offsets(bootstrap, topics.ORDER_STATUS.name)
        produced_at = time.perf_counter()
        pending = []
        for n in range(args.orders):
            pending.append(await producer.send_soon(order_event(shop, n)))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        produce_seconds = time.perf_counter() - produced_at
    end = await offsets(bootstrap, topics.ORDER_STATUS.name)
    total_lines = sum(1 + n % 3 for n in range(args.orders))

    # 3a. raw consume of the same events
    raw_events, raw_seconds = await raw_consume(bootstrap, start, end)
    raw_lines_per_s = raw_events * (total_lines / args.orders) / raw_seconds

    # 3b. one worker, end to end: polled on its /metrics (cheap), then checked in PostgreSQL
    if await pg.fetchval("SELECT count(*) FROM inventory.order_stock WHERE shop_id = $1", shop):
        raise SystemExit("another inventory worker (e.g. the one `orderflow up` started) is consuming order.status "
                         "into this database and took the backlog: stop it, or use a broker and database of your own")
    started = time.perf_counter()
    worker.start()
    first_seen = None
    first_count = 0
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                done = metric(await http.get(f"{worker.url}/metrics"), "inventory_deductions_total")
            except httpx.HTTPError:
                done = 0
            if done and first_seen is None:
                first_seen, first_count = time.perf_counter(), done
            if done >= args.orders:
                break
            if time.perf_counter() - started > 900:
                raise SystemExit(f"only {done}/{args.orders} orders deducted after 900 s")
            await asyncio.sleep(0.05)  # polling interval
        finished = time.perf_counter()
        scraped = (await http.get(f"{worker.url}/metrics")).text
    worker.stop()
    in_ledger = await count_moves(pg, shop)
    await pg.close()
    if in_ledger != total_lines:
        raise SystemExit(f"ledger has {in_ledger} lines, expected {total_lines}")
    batches = metric_text(scraped, 'orderflow_batch_size_count{topic="order.status"}')
    handler_seconds = metric_text(scraped, 'orderflow_handler_seconds_sum{topic="order.status"}')
    first_lines = first_count * total_lines / args.orders
    worker_lines_per_s = (total_lines - first_lines) / max(finished - first_seen, 1e-9)
    print(json.dumps({
        "orders": args.orders,
        "order_lines": total_lines,
        "produce_seconds": round(produce_seconds, 2),
        "raw_consume_events": raw_events,
        "raw_consume_seconds": round(raw_seconds, 3),
        "raw_consume_lines_per_s": round(raw_lines_per_s),
        "worker_seconds_first_to_last_deduction": round(finished - first_seen, 3),
        "worker_seconds_including_startup": round(finished - started, 3),
        "worker_lines_per_s": round(worker_lines_per_s),
        "worker_lines_per_s_including_startup": round(total_lines / (finished - started)),
        "ratio_worker_to_raw": round(worker_lines_per_s / raw_lines_per_s, 3),
        "worker_batches": int(batches),
        "worker_mean_batch_events": round(args.orders / max(batches, 1)),
        "worker_mean_batch_seconds": round(handler_seconds / max(batches, 1), 4),
        "worker_log": str(worker.log_path),
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
