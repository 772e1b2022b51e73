"""Consumer positions on the real broker: a worker whose committed offset was deleted from the log goes on.

The partition gate (orderflow/runtime/positions.py) seeks back when a record lies beyond the position; here the
offsets in between are truly gone (DeleteRecords, as retention would), so the record after the hole must be applied
instead of stalling the partition.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
from aiokafka import TopicPartition
from aiokafka.admin import RecordsToDelete
from helpers import async_wait_for
from workers import make_worker, worker_env

import contracts as c
from contracts.producer import StorefrontProducer
from orderflow.ops.replay import GroupOffsets, target_for


def started(ns: str, i: int) -> c.CheckoutStarted:
    return c.CheckoutStarted(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=f"{ns}-shop",
                             cart_id=f"{ns}-cart{i}", customer=c.Customer(email="ada@example.com"),
                             total_cents=500, currency="EUR",
                             items=[c.CartItem(sku="MUG-1", quantity=1, unit_price_cents=500)])


async def test_a_committed_offset_deleted_from_the_log_does_not_stall_the_partition(
        kafka_bootstrap: str, database_url: str, tmp_path: Path) -> None:
    ns = f"hole-{uuid.uuid4().hex[:6]}"
    env = worker_env(kafka_bootstrap, database_url, app_prefix=ns)
    target = target_for("cart", env)
    async with GroupOffsets(kafka_bootstrap) as kafka:
        tps = await kafka.partitions(target.topics)
        await kafka.commit(target.group_id, await kafka.ends(tps))  # the group starts at today's ends...
        async with StorefrontProducer(kafka_bootstrap) as producer:
            for i in range(16):
                await producer.send(started(ns, i))  # ...then these are written and deleted unread
            checkout_tps = [TopicPartition(c.topics.CHECKOUT_STARTED.name, p) for p in range(8)]
            ends = await kafka.ends(checkout_tps)
            await kafka.admin.delete_records({tp: RecordsToDelete(ends[tp]) for tp in checkout_tps})
            kept = [started(ns, i) for i in range(16, 32)]
            for event in kept:
                await producer.send(event)

    worker = make_worker("cart", env, tmp_path).start().wait_ready(90)
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "cart"})
    try:
        async def carts_watched() -> set[str]:
            rows = await conn.fetch("SELECT cart_id FROM checkouts WHERE shop_id = $1", f"{ns}-shop")
            return {r["cart_id"] for r in rows}

        wanted = {e.cart_id for e in kept}
        await async_wait_for(lambda: _covers(carts_watched, wanted), timeout=60,
                             message="every checkout written after the deleted ones watched")
        assert not (await carts_watched()) - wanted, "a deleted checkout.started was handled"
    finally:
        await conn.close()
        worker.kill()


async def _covers(fetch, wanted: set[str]) -> bool:  # noqa: ANN001
    return wanted <= await fetch()


async def test_the_log_says_which_offset_comes_first(kafka_bootstrap: str) -> None:
    """`OffsetProbe` (orderflow/runtime/probe.py), which the gate asks when a record jumps: a record that is in the
    log is found at its own offset; offsets retention deleted or a transaction's commit marker took are not."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from orderflow.runtime.probe import OffsetProbe

    topic = f"probe-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    probe = OffsetProbe({"bootstrap_servers": kafka_bootstrap})
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        plain = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await plain.start()
        try:
            offsets = [(await plain.send_and_wait(topic, f"v{i}".encode(), partition=0)).offset for i in range(4)]
        finally:
            await plain.stop()
        assert [await probe.first_at_or_after(topic, 0, o) for o in offsets] == offsets

        txn = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-txn")
        await txn.start()
        try:
            async with txn.transaction():
                inside = (await txn.send_and_wait(topic, b"t0", partition=0)).offset
            async with txn.transaction():
                after_marker = (await txn.send_and_wait(topic, b"t1", partition=0)).offset
        finally:
            await txn.stop()
        assert after_marker == inside + 2  # the first transaction's commit marker took inside + 1
        assert await probe.first_at_or_after(topic, 0, inside + 1) == after_marker

        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(offsets[2])})
        assert await probe.first_at_or_after(topic, 0, offsets[0]) == offsets[2]  # deleted: the log start
        assert await probe.first_at_or_after(topic, 0, offsets[3]) == offsets[3]
    finally:
        await probe.close()
        await admin.delete_topics([topic])
        await admin.close()
