"""No head-of-line poison in the outbox relay and the DLQs, on the real broker and database.

Each test uses throwaway topics (with a small `max.message.bytes` where a size limit is the point) and its own
schema, so no other test's rows or letters move.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from helpers import async_wait_for

from orderflow import stack
from orderflow.ops import dlq as ops_dlq
from orderflow.ops import outbox as ops_outbox
from orderflow.runtime import db
from orderflow.runtime.dlq import (
    HEADER_ORIGINAL_SIZE,
    HEADER_STUB,
    HEADER_STUB_REASON,
    STUB_PREFIX_BYTES,
    DeadLetters,
    Source,
)
from orderflow.runtime.metrics import RuntimeMetrics
from orderflow.runtime.outbox import BrokerTopics, OutboxRelay, parked_rows

SMALL_LIMIT = 64 * 1024


async def _create_topics(bootstrap: str, *topics: NewTopic) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(list(topics))
    finally:
        await admin.close()


async def _topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {e[0]: e[1] for e in response.resources[0][4]}
    finally:
        await admin.close()


async def _read(bootstrap: str, topic: str, partitions: int, expected: int,
                ) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Every record of the topic (partition by partition, in offset order) once `expected` are there and the
    partitions are read to their ends as of the call (a row sent twice makes `expected` come early)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=16 * 1024 * 1024)
    await consumer.start()
    got: dict[int, list] = {p: [] for p in range(partitions)}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)

        async def fetched() -> bool:
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                got[tp.partition].extend((r.key, r.value, list(r.headers or [])) for r in records)
            return sum(map(len, got.values())) >= expected and all(
                [await consumer.position(tp) >= ends[tp] for tp in tps])

        await async_wait_for(fetched, timeout=30, message=f"{expected} records on {topic}")
    finally:
        await consumer.stop()
    return [record for p in range(partitions) for record in got[p]]


@dataclass
class Outbox:
    schema: str
    pool: asyncpg.Pool

    async def stage(self, topic: str, key: bytes, value: bytes) -> int:
        return await self.pool.fetchval("INSERT INTO outbox (topic, key, value) VALUES ($1, $2, $3) RETURNING id",
                                        topic, key, value)

    async def rows(self) -> dict[int, asyncpg.Record]:
        found = await self.pool.fetch("SELECT id, published_at, parked_at, parked_reason FROM outbox ORDER BY id")
        return {r["id"]: r for r in found}

    async def settled(self, ids: list[int]) -> bool:
        rows = await self.rows()
        return all(rows[i]["published_at"] is not None or rows[i]["parked_at"] is not None for i in ids)


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[Outbox]:
    schema = f"obx_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(database_url)
    try:
        await db.migrate(conn, schema, [db.RUNTIME_MIGRATIONS])
    finally:
        await conn.close()
    pool = await db.connect_pool(database_url, schema)
    try:
        yield Outbox(schema, pool)
    finally:
        await pool.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


@asynccontextmanager
async def producer(bootstrap: str, **options: object) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **options)  # type: ignore[arg-type]
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def sender(p: AIOKafkaProducer) -> Callable[[str, bytes, bytes], Awaitable[Awaitable[object]]]:
    async def send(topic: str, key: bytes, value: bytes) -> Awaitable[object]:
        return await p.send(topic, value, key=key)

    return send


@asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[OutboxRelay]:
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def by_key(records: list[tuple[bytes | None, bytes | None, list]]) -> dict[bytes | None, list[bytes | None]]:
    seen: dict[bytes | None, list[bytes | None]] = {}
    for key, value, _ in records:
        seen.setdefault(key, []).append(value)
    return seen


# --- the outbox relay ---------------------------------------------------------------------------------------


async def test_rows_too_large_are_parked_with_their_reason_and_the_rows_after_them_go_out_in_order(
        kafka_bootstrap: str, database_url: str, outbox: Outbox) -> None:
    topic = f"obx-small-{uuid.uuid4().hex[:8]}"
    await _create_topics(kafka_bootstrap, NewTopic(topic, 2, 1, topic_configs={
        "max.message.bytes": str(SMALL_LIMIT)}))
    staged = [
        (b"k1", b"a1"), (b"k2", b"b1"),
        (b"k1", b"B" * 100_000),  # over the topic's 64 KiB: the broker refuses it
        (b"k1", b"a2"),
        (b"k2", b"H" * 5_000_000),  # over the producer's max_request_size: refused while queueing
        (b"k2", b"b2"), (b"k1", b"a3"),
    ]
    ids = [await outbox.stage(topic, key, value) for key, value in staged]
    parked_ids = [ids[2], ids[4]]
    published, parked = [], []
    async with producer(kafka_bootstrap, max_request_size=4 * 1024 * 1024) as p:
        relay = OutboxRelay(lambda: _ready(outbox.pool), outbox.schema, sender(p), idle_poll=0.05,
                            on_published=published.append, on_parked=parked.append)
        async with running(relay):
            await async_wait_for(lambda: outbox.settled(ids), timeout=30, message="every row published or parked")
            rows = await outbox.rows()
            assert [i for i in ids if rows[i]["parked_at"] is not None] == parked_ids
            assert "MessageSizeTooLargeError" in rows[ids[2]]["parked_reason"]
            assert f"100000 bytes to {topic}" in rows[ids[2]]["parked_reason"]
            assert "larger than the maximum request size" in rows[ids[4]]["parked_reason"]
            # the relay calls on_published/on_parked after its round's commit, which the rows above may show first
            await async_wait_for(lambda: (sum(published), sum(parked)) == (5, 2), timeout=20,
                                 message="the relay counting 5 published and 2 parked rows")

            records = await _read(kafka_bootstrap, topic, 2, 5)
            assert by_key(records) == {b"k1": [b"a1", b"a2", b"a3"], b"k2": [b"b1", b"b2"]}

            await async_wait_for(lambda: relay.parked == 2, timeout=20, message="the relay counting 2 parked rows")
            assert parked_rows() >= 2
            assert b"orderflow_outbox_parked" in RuntimeMetrics("orders").render()

            listed = await ops_outbox.list_parked(database_url, outbox.schema)
            assert [(r.id, r.topic, r.size) for r in listed] == [(ids[2], topic, 100_000), (ids[4], topic, 5_000_000)]
            assert "MessageSizeTooLargeError" in ops_outbox.describe(listed[0])
            assert (await ops_outbox.parked_counts(database_url))[outbox.schema] == 2
            status = await asyncio.to_thread(stack._outbox_check, database_url)  # a line of `orderflow status`
            assert status.healthy and f"{outbox.schema} 2" in status.detail, status

            # the operator raises the topic's limit and retries the one row that now fits: it goes out last
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
            await admin.start()
            try:
                await stack._raise_existing(admin, {topic: {"max.message.bytes": str(2 * 1024 * 1024)}})
            finally:
                await admin.close()
            assert await ops_outbox.retry(database_url, outbox.schema, [ids[2]]) == 1
            await async_wait_for(lambda: outbox.settled([ids[2]]), timeout=30, message="the retried row published")
            assert (await outbox.rows())[ids[2]]["published_at"] is not None
            records = await _read(kafka_bootstrap, topic, 2, 6)
            assert by_key(records)[b"k1"] == [b"a1", b"a2", b"a3", b"B" * 100_000]
            assert [r.id for r in await ops_outbox.list_parked(database_url, outbox.schema)] == [ids[4]]


async def _ready(pool: asyncpg.Pool) -> asyncpg.Pool:
    return pool


@pytest.mark.parametrize("with_check", [True, False], ids=["topic-check", "producer-timeout"])
async def test_a_row_for_a_missing_topic_is_parked_after_a_bounded_wait(
        kafka_bootstrap: str, outbox: Outbox, with_check: bool) -> None:
    topic = f"obx-ok-{uuid.uuid4().hex[:8]}"
    missing = f"obx-missing-{uuid.uuid4().hex[:8]}"
    await _create_topics(kafka_bootstrap, NewTopic(topic, 1, 1))
    ids = [await outbox.stage(topic, b"k", b"x1"), await outbox.stage(missing, b"k", b"lost"),
           await outbox.stage(topic, b"k", b"x2"), await outbox.stage(missing, b"k", b"lost too"),
           await outbox.stage(topic, b"k", b"x3")]
    check = BrokerTopics(bootstrap_servers=kafka_bootstrap) if with_check else None
    # without a check, the producer's own metadata timeout bounds the wait (faust's default is 20 minutes)
    async with producer(kafka_bootstrap, request_timeout_ms=3000) as p:
        relay = OutboxRelay(lambda: _ready(outbox.pool), outbox.schema, sender(p), idle_poll=0.05,
                            topic_exists=check, metadata_wait=1.0)
        try:
            async with running(relay):
                await async_wait_for(lambda: outbox.settled(ids), timeout=30, message="every row published or parked")
        finally:
            if check is not None:
                await check.close()
    rows = await outbox.rows()
    assert [i for i in ids if rows[i]["parked_at"] is not None] == [ids[1], ids[3]]
    assert all("UnknownTopicOrPartitionError" in rows[i]["parked_reason"] for i in (ids[1], ids[3]))
    assert [v for _, v, _ in await _read(kafka_bootstrap, topic, 1, 3)] == [b"x1", b"x2", b"x3"]


async def test_a_broker_away_parks_nothing_and_the_rows_go_out_in_order_once_it_is_back(
        kafka_broker, outbox: Outbox) -> None:  # noqa: ANN001 - the conftest's Broker
    if kafka_broker.handle is None:
        pytest.skip("the broker is external; only a local broker can be stopped")
    bootstrap = kafka_broker.bootstrap
    topic = f"obx-away-{uuid.uuid4().hex[:8]}"
    await _create_topics(bootstrap, NewTopic(topic, 1, 1))
    async with producer(bootstrap, request_timeout_ms=2000) as p:
        relay = OutboxRelay(lambda: _ready(outbox.pool), outbox.schema, sender(p), idle_poll=0.05,
                            max_backoff=1.0)
        first = await outbox.stage(topic, b"k", b"before")
        async with running(relay):
            await async_wait_for(lambda: outbox.settled([first]), timeout=30, message="the first row published")
            await asyncio.to_thread(kafka_broker.handle.stop)
            try:
                ids = [await outbox.stage(topic, b"k", f"v{i}".encode()) for i in range(20)]
                await async_wait_for(lambda: relay.last_error is not None, timeout=30,
                                     message="the relay meeting the broker's absence")
                assert relay.last_error.startswith("send failed"), relay.last_error  # a RelayRetry: transient
                assert not any(r["parked_at"] for r in (await outbox.rows()).values())
            finally:
                await asyncio.to_thread(kafka_broker.handle.start)
            await async_wait_for(lambda: outbox.settled(ids), timeout=60, message="every row published after")
    rows = await outbox.rows()
    assert not any(r["parked_at"] for r in rows.values()), "a broker away must park nothing"
    values = [v for _, v, _ in await _read(bootstrap, topic, 1, 21)]
    firsts = list(dict.fromkeys(values))  # a row re-sent after an unacknowledged attempt may appear twice
    assert firsts == [b"before"] + [f"v{i}".encode() for i in range(20)]


# --- dead letters too large for their DLQ ---------------------------------------------------------------


async def test_a_dead_letter_larger_than_its_dlq_accepts_goes_out_as_a_stub_with_headers(
        kafka_bootstrap: str) -> None:
    source = f"obx-src-{uuid.uuid4().hex[:8]}"
    dlq = f"{source}.dlq"
    await _create_topics(kafka_bootstrap, NewTopic(source, 1, 1),
                         NewTopic(dlq, 1, 1, topic_configs={"max.message.bytes": str(SMALL_LIMIT)}))
    dead: list[tuple[str, str]] = []
    big = b'{"order_id": "o-big", "pad": "' + b"p" * 100_000 + b'"}'
    # one producer the broker refuses the letter from, one that refuses it itself (max_request_size)
    for max_request_size in (4 * 1024 * 1024, 32 * 1024):
        async with producer(kafka_bootstrap, max_request_size=max_request_size) as p:
            async def send(topic: str, key: bytes | None, value: bytes | None,
                           headers: list[tuple[str, bytes]], p: AIOKafkaProducer = p) -> None:
                await p.send_and_wait(topic, value, key=key, headers=headers)

            letters = DeadLetters("orders", send, lambda topic, kind: dead.append((topic, kind)))
            await letters.send(Source(source, 0, 7, b"o-big", big), "event larger than 65536 bytes", "invalid")
            await letters.send(Source(source, 0, 8, b"o-small", b"{not json"), "not JSON", "invalid")
    assert dead == [(source, "invalid")] * 4

    records = await _read(kafka_bootstrap, dlq, 1, 4)
    stubs = [r for r in records if dict(r[2]).get(HEADER_STUB) == b"true"]
    whole = [r for r in records if dict(r[2]).get(HEADER_STUB) is None]
    assert len(stubs) == 2 and [(k, v) for k, v, _ in whole] == [(b"o-small", b"{not json")] * 2
    for key, value, headers in stubs:
        named = dict(headers)
        assert key == b"o-big" and value == big[:STUB_PREFIX_BYTES]
        assert named[HEADER_ORIGINAL_SIZE] == str(len(big)).encode()
        assert b"MessageSizeTooLargeError" in named[HEADER_STUB_REASON]
        assert named["dlq.source.offset"] == b"7" and named["dlq.error"] == b"event larger than 65536 bytes"

    listed = await ops_dlq.list_dead_letters(kafka_bootstrap, source)
    assert sorted(d.stub for d in listed) == [False, False, True, True]
    report = await ops_dlq.redrive(kafka_bootstrap, source)
    assert (report.resent, report.stubs) == (2, 2), "a stub's original bytes are gone: never re-sent"
    assert [v for _, v, _ in await _read(kafka_bootstrap, source, 1, 2)] == [b"{not json"] * 2


# --- topic settings -----------------------------------------------------------------------------------------


async def test_dlqs_accept_more_than_their_sources_and_orderflow_topics_raises_existing_ones(
        kafka_bootstrap: str) -> None:
    assert stack.DLQ_MAX_MESSAGE_BYTES == stack.MAX_MESSAGE_BYTES + 64 * 1024
    assert (await _topic_config(kafka_bootstrap, "order.placed.dlq"))["max.message.bytes"] == str(
        stack.DLQ_MAX_MESSAGE_BYTES)
    assert (await _topic_config(kafka_bootstrap, "order.placed"))["max.message.bytes"] == str(stack.MAX_MESSAGE_BYTES)

    old = f"obx-old-{uuid.uuid4().hex[:8]}.dlq"
    await _create_topics(kafka_bootstrap, NewTopic(old, 1, 1, topic_configs={
        "max.message.bytes": str(stack.MAX_MESSAGE_BYTES), "retention.ms": "3600000"}))
    wanted = {old: {"cleanup.policy": "delete", "max.message.bytes": str(stack.DLQ_MAX_MESSAGE_BYTES)}}
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert await stack._raise_existing(admin, wanted) == {
            old: f"max.message.bytes={stack.DLQ_MAX_MESSAGE_BYTES}"}
        assert await stack._raise_existing(admin, wanted) == {}, "a second run changes nothing"
    finally:
        await admin.close()
    config = await _topic_config(kafka_bootstrap, old)
    assert config["max.message.bytes"] == str(stack.DLQ_MAX_MESSAGE_BYTES)
    assert config["retention.ms"] == "3600000", "the topic's other settings are kept"

    outcome = await asyncio.to_thread(stack.create_topics, kafka_bootstrap)
    assert outcome["order.placed.dlq"].startswith("exists")
