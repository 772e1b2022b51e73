"""`orderflow dlq list|redrive` on the real broker, on a throwaway topic pair so no other test's letters move."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from helpers import async_wait_for

from orderflow.ops import dlq
from orderflow.runtime.dlq import Source, headers_for


@pytest.fixture
async def topic_pair(kafka_bootstrap: str) -> str:
    source = f"ops-dlq-test-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(source, 2, 1), NewTopic(f"{source}.dlq", 2, 1)])
    finally:
        await admin.close()
    return source


async def _dead_letter(bootstrap: str, source: str, key: bytes | None, value: bytes, offset: int,
                       reason: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        headers = headers_for(Source(source, 1, offset, key, value), "orders", reason, "invalid")
        await producer.send_and_wait(f"{source}.dlq", value, key=key, headers=headers)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    got: list[tuple[bytes | None, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

        async def fetched() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend((r.key, r.value) for r in records)
            return len(got) >= expected

        await async_wait_for(fetched, timeout=20, message=f"{expected} messages on {topic}")
    finally:
        await consumer.stop()
    return got


async def test_list_shows_each_dead_letter_with_its_origin_and_reason(kafka_bootstrap: str, topic_pair: str) -> None:
    await _dead_letter(kafka_bootstrap, topic_pair, b"order-1", b'{"order_id": 12', 41, "not JSON: line 1")
    await _dead_letter(kafka_bootstrap, topic_pair, b"order-2", b"\xff\xfe\x00binary", 42, "not UTF-8")

    letters = await dlq.list_dead_letters(kafka_bootstrap, topic_pair)

    assert [(d.key, d.source_offset, d.reason) for d in sorted(letters, key=lambda d: d.source_offset or 0)] == [
        (b"order-1", 41, "not JSON: line 1"), (b"order-2", 42, "not UTF-8")]
    assert {(d.source_topic, d.source_partition, d.service, d.kind) for d in letters} == {
        (topic_pair, 1, "orders", "invalid")}
    text = "\n".join(dlq.describe(d) for d in letters)
    assert '{"order_id": 12' in text and "hex:fffe0062696e617279" in text
    assert len(await dlq.list_dead_letters(kafka_bootstrap, f"{topic_pair}.dlq", limit=1)) == 1


async def test_redrive_resends_original_bytes_once_and_picks_up_letters_that_fail_again(
        kafka_bootstrap: str, topic_pair: str) -> None:
    letters = [(b"order-a", b'{"fixed": "a"}'), (b"order-b", b'{"fixed": "b"}'), (b"order-c", b"\x00\x01")]
    for i, (key, value) in enumerate(letters):
        await _dead_letter(kafka_bootstrap, topic_pair, key, value, i, "unknown sku")

    dry = await dlq.redrive(kafka_bootstrap, topic_pair, dry_run=True)
    assert dry.resent == 3 and dry.dry_run

    report = await dlq.redrive(kafka_bootstrap, topic_pair)
    assert report.resent == 3, "a dry run must commit nothing"
    assert report.by_source == {topic_pair: 3}
    assert sorted(await _read_all(kafka_bootstrap, topic_pair, 3)) == sorted(letters)

    again = await dlq.redrive(kafka_bootstrap, topic_pair)
    assert again.resent == 0
    assert len(await dlq.list_dead_letters(kafka_bootstrap, topic_pair)) == 3, "redrive removes nothing"

    await _dead_letter(kafka_bootstrap, topic_pair, b"order-b", b'{"fixed": "b"}', 7, "failed again")
    later = await dlq.redrive(kafka_bootstrap, topic_pair)
    assert (later.resent, [d.reason for d in later.letters]) == (1, ["failed again"])


async def test_unknown_topic_is_one_clear_error(kafka_bootstrap: str) -> None:
    with pytest.raises(dlq.DlqError, match="does not exist"):
        await dlq.list_dead_letters(kafka_bootstrap, f"nope-{uuid.uuid4().hex}")
