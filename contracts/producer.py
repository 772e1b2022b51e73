"""A small typed producer for storefronts and tools: a model goes to its topic, with its key, as JSON."""

from __future__ import annotations

import contextlib
from types import TracebackType

from aiokafka import AIOKafkaProducer

from contracts.base import Event
from contracts.codec import encode
from contracts.topics import spec_for


class StorefrontProducer:
    """`async with StorefrontProducer(bootstrap) as p: await p.send(OrderPlaced(...))`.

    Idempotent producer, acks=all: a retry after a broker hiccup does not write the event twice.
    """

    def __init__(self, bootstrap_servers: str, *, linger_ms: int = 0, **kafka_options: object) -> None:
        self._options = dict(bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True,
                             linger_ms=linger_ms, max_request_size=2 * 1024 * 1024, **kafka_options)
        self._producer = AIOKafkaProducer(**self._options)

    async def renew(self) -> None:
        """Replace the client by a new one (a new producer id). An idempotent producer whose sequence broke - after a
        broker outage, `OutOfOrderSequenceNumber` or `UnknownProducerId` - cannot send again; a new one can, and
        sending the same events again is safe (their event ids are kept: docs/storefront.md)."""
        old, self._producer = self._producer, AIOKafkaProducer(**self._options)
        await self._producer.start()
        with contextlib.suppress(Exception):  # the broken client's own shutdown errors change nothing
            await old.stop()

    async def start(self) -> None:
        try:
            await self._producer.start()
        except BaseException:
            await self._producer.stop()  # closed, so no "Unclosed AIOKafkaProducer" after a broker that is away
            raise

    async def stop(self) -> None:
        await self._producer.stop()

    async def __aenter__(self) -> StorefrontProducer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def send(self, event: Event) -> None:
        """Send and wait until the broker has it."""
        await (await self.send_soon(event))

    async def send_soon(self, event: Event):  # noqa: ANN201 - returns the aiokafka delivery future
        """Queue for sending; await the returned future to know it was written. Batches well."""
        spec = spec_for(type(event))
        return await self._producer.send(spec.name, key=spec.key_of(event).encode(), value=encode(event))

    async def send_raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """For tests and tools that must put malformed bytes on a topic."""
        await self._producer.send_and_wait(topic, key=key, value=value)

    async def flush(self) -> None:
        await self._producer.flush()
