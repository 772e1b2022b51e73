"""Every topic of the registry carries its model over the real broker: produced by the storefront producer,
consumed back with aiokafka, equal, under the key the registry says."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from examples import example

import contracts
from contracts.producer import StorefrontProducer

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("spec", contracts.ALL, ids=lambda s: s.name)
async def test_model_round_trips_over_the_broker(kafka_bootstrap: str, spec: contracts.TopicSpec) -> None:
    event = example(spec.model)
    async with StorefrontProducer(kafka_bootstrap) as producer:
        written = await (await producer.send_soon(event))

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=f"roundtrip-{uuid.uuid4().hex}",
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tp = TopicPartition(spec.name, written.partition)
        consumer.assign([tp])
        consumer.seek(tp, written.offset)
        record = await asyncio.wait_for(consumer.getone(), timeout=30)
    finally:
        await consumer.stop()

    assert record.offset == written.offset
    decoded = contracts.decode(spec.model, record.value)
    assert decoded == event
    assert record.key.decode() == spec.key_of(event)


async def test_send_waits_until_the_broker_has_it(kafka_bootstrap: str) -> None:
    """`send()` (what storefronts use) returns only once the event is readable by a consumer group."""
    spec = contracts.spec_for(contracts.OrderPlaced)
    event = example(contracts.OrderPlaced)
    async with StorefrontProducer(kafka_bootstrap) as producer:
        await producer.send(event)

    consumer = AIOKafkaConsumer(
        spec.name, bootstrap_servers=kafka_bootstrap, group_id=f"roundtrip-{uuid.uuid4().hex}",
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        async def find() -> contracts.OrderPlaced:
            async for record in consumer:
                if record.key.decode() == event.order_id:
                    return contracts.decode(contracts.OrderPlaced, record.value)
            raise AssertionError("consumer stopped")

        assert await asyncio.wait_for(find(), timeout=60) == event
    finally:
        await consumer.stop()
