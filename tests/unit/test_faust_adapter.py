"""The one place the runtime reaches past faust's public API: it fails here, loudly, when faust changes."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import faust
from faust.transport.consumer import Consumer

from orderflow.runtime import faust_adapter


def test_installed_versions_are_the_tested_ones() -> None:
    faust_adapter.check()  # raises UnsupportedFaust naming the version otherwise
    assert version("faust-streaming") in faust_adapter.TESTED["faust-streaming"]


def test_the_consumer_methods_used_have_the_expected_signatures() -> None:
    assert list(inspect.signature(Consumer.seek).parameters) == ["self", "partition", "offset"]
    assert list(inspect.signature(Consumer._commit).parameters) == ["self", "offsets"]
    assert inspect.iscoroutinefunction(Consumer.seek)


def test_topics_subscribed_without_acks_never_record_offsets_for_faust_to_commit() -> None:
    app = faust.App("adapter-test", broker="kafka://127.0.0.1:1")
    topic = app.topic("t", acks=False)
    assert topic.acks is False


async def test_the_workers_producer_is_idempotent_with_acks_all() -> None:
    """Every event the outbox relay publishes and every dead letter goes through the faust app's producer: a retry
    after a partition leader died must not write a batch twice (the 3-broker leader-kill scenario's premise)."""
    from orderflow.runtime.app import make_faust_app
    from orderflow.settings import Settings

    app = make_faust_app(Settings("orders", "127.0.0.1:1,127.0.0.1:2", "postgresql://x/y", 1, "token"))
    assert isinstance(app.producer, faust_adapter.IdempotentProducer)
    client = app.producer._new_producer()
    try:
        assert client._txn_manager is not None, "enable_idempotence is off"
        assert client._sender._acks == -1
    finally:
        await client.stop()


async def test_commit_never_hands_faust_offsets_of_partitions_no_longer_held() -> None:
    """faust's `_commit` turns an all-revoked dict into an empty one, aiokafka raises ValueError on it and faust
    crashes the consumer: the adapter filters first and does not call it at all when nothing is held."""

    class FakeConsumer:
        def __init__(self) -> None:
            self.committed: list[dict] = []

        def assignment(self) -> set[str]:
            return {"held"}

        async def _commit(self, offsets: dict) -> bool:
            assert offsets, "faust would crash the consumer on an empty commit"
            self.committed.append(offsets)
            return True

    class FakeApp:
        consumer = FakeConsumer()

    app = FakeApp()
    assert await faust_adapter.commit(app, {"revoked": 5}) is False
    assert await faust_adapter.commit(app, {"revoked": 5, "held": 7}) is True
    assert app.consumer.committed == [{"held": 7}]
