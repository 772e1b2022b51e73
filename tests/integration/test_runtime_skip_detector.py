"""The fault suite's "nothing skipped" check, checked itself: a checker that cannot fail proves nothing.

`tests/faults/invariants.py` `check_every_input_handled` proves from `<service>.consumer_positions` that every record
of a namespace lies below its group's stored position (and, where a handler still dedupes by event id, that the
event is in processed_events). Here, on the real broker and database and without any worker, a group's position is
written by hand before, between and past three records, and the checker must report exactly what is left.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

import contracts as c
from contracts.producer import StorefrontProducer
from orderflow.runtime import db
from tests.faults.invariants import check_every_input_handled, read_topics

TOPIC = c.topics.STOCK_ADJUSTED.name


async def test_the_checker_reports_records_at_or_beyond_the_stored_position(kafka_bootstrap: str,
                                                                           database_url: str) -> None:
    ns = f"skipcheck-{uuid.uuid4().hex[:8]}"
    group = f"{ns}-inventory"
    await db.migrate_service(database_url, "inventory")
    events = [c.StockAdjusted(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=f"{ns}-shop", sku="MUG-1",
                              delta=1) for _ in range(3)]
    async with StorefrontProducer(kafka_bootstrap) as producer:
        for event in events:
            await producer.send(event)  # one key: one partition, in this order
    records = await read_topics(kafka_bootstrap, [TOPIC], keep=lambda r: (r.key or b"").startswith(ns.encode()))
    assert len(records) == 3 and len({r.partition for r in records}) == 1
    partition, offsets = records[0].partition, [r.offset for r in records]
    consumed = {"inventory": SimpleNamespace(group_id=group, topics=(TOPIC,))}

    async def problems() -> list[str]:
        return await check_every_input_handled(kafka_bootstrap, database_url, ns, [], consumed)

    conn = await asyncpg.connect(database_url)
    try:
        found = await problems()  # no stored position at all
        assert len(found) == 2, found
        assert "never handled 3 of 3 stock.adjusted records" in found[0], found
        assert "no processed_events row for 3 of 3 stock.adjusted events" in found[1], found

        await conn.execute("INSERT INTO inventory.consumer_positions (consumer, topic, partition, next_offset) "
                           "VALUES ($1, $2, $3, $4)", group, TOPIC, partition, offsets[1])
        found = await problems()  # the second and third at or beyond it
        assert "never handled 2 of 3" in found[0], found

        await conn.execute("UPDATE inventory.consumer_positions SET next_offset = $4 WHERE consumer = $1 "
                           "AND topic = $2 AND partition = $3", group, TOPIC, partition, offsets[2] + 1)
        await conn.execute("INSERT INTO inventory.processed_events (topic, event_id) "
                           "SELECT $1, unnest($2::uuid[])", TOPIC, [e.event_id for e in events[:2]])
        found = await problems()  # every record below the position; one event the handler never recorded
        assert len(found) == 1 and "no processed_events row for 1 of 3" in found[0], found
        assert str(events[2].event_id) in found[0], found

        await conn.execute("INSERT INTO inventory.processed_events (topic, event_id) VALUES ($1, $2)", TOPIC,
                           events[2].event_id)
        assert await problems() == []
    finally:
        await conn.execute("DELETE FROM inventory.consumer_positions WHERE consumer = $1", group)
        await conn.execute("DELETE FROM inventory.processed_events WHERE topic = $1 AND event_id = ANY($2::uuid[])",
                           TOPIC, [e.event_id for e in events])
        await conn.close()


async def test_reading_a_topic_whose_start_was_deleted_returns_what_is_left(kafka_bootstrap: str) -> None:
    """`read_topics` on a partition whose first records were deleted (retention, DeleteRecords, as
    test_consumer_positions does to checkout.started) returns the records left instead of waiting forever."""
    topic = f"skipcheck-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            sent = [await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k", partition=0) for i in range(3)]
        finally:
            await producer.stop()
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(sent[2].offset)})
        records = await read_topics(kafka_bootstrap, [topic], timeout=30)
        assert [(r.partition, r.offset, r.value) for r in records] == [(0, sent[2].offset, b"v2")]
    finally:
        await admin.delete_topics([topic])
        await admin.close()
