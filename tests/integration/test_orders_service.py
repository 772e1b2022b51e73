"""The orders service on the real broker and database, through its topics and HTTP API only."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

import contracts as c
from contracts import OrderPlaced, PaymentConfirmed, topics
from contracts.producer import StorefrontProducer
from tests.examples import example
from tests.helpers import async_wait_for
from tests.workers import WorkerProcess, make_worker, worker_env

TIMEOUT = 30.0


class TopicTail:
    """Reads a topic from its end at start(): everything produced afterwards, on every partition."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[ConsumerRecord] = []
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="latest")

    async def start(self) -> TopicTail:
        await self._consumer.start()
        parts: set[TopicPartition] = await async_wait_for(self._consumer.assignment, timeout=TIMEOUT,
                                                          message=f"partitions of {self.topic}")
        assert len(parts) == len(self._consumer.partitions_for_topic(self.topic) or ())
        await self._consumer.seek_to_end(*parts)
        for tp in parts:
            await self._consumer.position(tp)  # pin the end offsets now, before the test produces anything
        return self

    async def stop(self) -> None:
        await self._consumer.stop()

    async def until(self, done: Callable[[list[ConsumerRecord]], bool], message: str) -> list[ConsumerRecord]:
        async def poll() -> bool:
            for batch in (await self._consumer.getmany(timeout_ms=200)).values():
                self.records.extend(batch)
            return done(self.records)

        await async_wait_for(poll, timeout=TIMEOUT, message=message)
        return self.records


def statuses_of(records: list[ConsumerRecord], order_id: str) -> list[dict[str, Any]]:
    values = [json.loads(r.value) for r in records if r.key == order_id.encode()]
    return [v for v in values if v["order_id"] == order_id]


@pytest.fixture(scope="module")
def orders_worker(kafka_bootstrap: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[WorkerProcess]:
    tmp: Path = tmp_path_factory.mktemp("orders")
    worker = make_worker("orders", worker_env(kafka_bootstrap, database_url, ORDERFLOW_STORE="memory"), tmp)
    worker.start().wait_ready(timeout=90)
    yield worker
    worker.stop()


@pytest.fixture
async def api(orders_worker: WorkerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=orders_worker.url, timeout=10,
                                 headers={"Authorization": f"Bearer {orders_worker.token}"}) as client:
        yield client


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[StorefrontProducer]:
    async with StorefrontProducer(kafka_bootstrap) as p:
        yield p


@pytest.fixture
async def status_tail(kafka_bootstrap: str, orders_worker: WorkerProcess) -> AsyncIterator[TopicTail]:
    tail = await TopicTail(kafka_bootstrap, topics.ORDER_STATUS.name).start()
    yield tail
    await tail.stop()


async def order_when(api: httpx.AsyncClient, order_id: str, ready: Callable[[dict[str, Any]], bool],
                     message: str) -> dict[str, Any]:
    async def fetch() -> dict[str, Any] | None:
        r = await api.get(f"/orders/{order_id}")
        return r.json() if r.status_code == 200 and ready(r.json()) else None

    return await async_wait_for(fetch, timeout=TIMEOUT, message=message)


async def tab_ids(api: httpx.AsyncClient, tab: str, q: str) -> list[str]:
    r = await api.get("/orders", params={"tab": tab, "q": q})
    assert r.status_code == 200, r.text
    return [o["order_id"] for o in r.json()["orders"]]


def gateway_order(**overrides: Any) -> OrderPlaced:
    return example(OrderPlaced, payment=c.Payment(method="gateway", provider="paypal"), **overrides)


async def test_unpaid_gateway_order_is_only_incomplete_and_never_pending(
        api: httpx.AsyncClient, producer: StorefrontProducer, status_tail: TopicTail) -> None:
    order = gateway_order()
    await producer.send(order)

    view = await order_when(api, order.order_id, lambda o: True, "the order to be stored")
    assert (view["status"], view["payment_status"]) == ("incomplete", "incomplete")
    assert await tab_ids(api, "incomplete", order.order_id) == [order.order_id]
    assert await tab_ids(api, "pending", order.order_id) == []
    assert await tab_ids(api, "closed", order.order_id) == []

    # The customer's cancel is the last change; everything emitted before it is before it on the partition.
    await producer.send(example(c.OrderCancelRequested, shop_id=order.shop_id, order_id=order.order_id))
    records = await status_tail.until(
        lambda rs: any(v["status"] == "canceled" for v in statuses_of(rs, order.order_id)), "the canceled status")
    assert [v["status"] for v in statuses_of(records, order.order_id)] == ["incomplete", "canceled"]


async def test_gateway_order_paid_three_times_first_before_placement(
        api: httpx.AsyncClient, producer: StorefrontProducer, status_tail: TopicTail) -> None:
    order = gateway_order()
    payment = example(PaymentConfirmed, shop_id=order.shop_id, order_id=order.order_id,
                      amount_cents=order.total_cents, currency=order.currency)
    await producer.send(payment)  # before its order
    await producer.send(order)
    await producer.send(payment)  # the same event redelivered
    await producer.send(payment.model_copy(update={"event_id": c.new_event_id()}))  # the gateway resending

    view = await order_when(api, order.order_id, lambda o: o["payment_status"] == "paid", "the order to be paid")
    assert view["status"] == "pending"
    assert [p["applied"] for p in view["payments"]] == [True]
    assert await tab_ids(api, "pending", order.order_id) == [order.order_id]
    assert await tab_ids(api, "incomplete", order.order_id) == []

    r = await api.post(f"/orders/{order.order_id}/status", json={"status": "processed"})
    assert r.status_code == 200 and r.json()["changed"] is True
    records = await status_tail.until(
        lambda rs: any(v["status"] == "processed" for v in statuses_of(rs, order.order_id)), "processed status")
    emitted = statuses_of(records, order.order_id)
    assert [v["status"] for v in emitted].count("pending") == 1
    assert emitted[-1]["status"] == "processed" and emitted[-1]["changed_by"] == "merchant"
    pending = next(v for v in emitted if v["status"] == "pending")
    assert pending["payment_status"] == "paid"


async def test_manual_order_history_holds_only_real_changes(
        api: httpx.AsyncClient, producer: StorefrontProducer, orders_worker: WorkerProcess) -> None:
    order = example(OrderPlaced, payment=c.Payment(method="manual", provider="cheque"))
    await producer.send(order)
    view = await order_when(api, order.order_id, lambda o: True, "the manual order")
    assert (view["status"], view["payment_status"]) == ("pending", "awaiting")

    path = f"/orders/{order.order_id}"
    answers = [await api.post(f"{path}/payment", json={"status": "paid"}),
               await api.post(f"{path}/payment", json={"status": "paid"}),
               await api.post(f"{path}/status", json={"status": "processed"}),
               await api.post(f"{path}/status", json={"status": "processed"}),
               await api.post(f"{path}/status", json={"status": "delivered"})]
    assert [r.status_code for r in answers] == [200] * 5
    assert [r.json()["changed"] for r in answers] == [True, False, True, False, True]

    history = (await api.get(path)).json()["history"]
    assert [(h["to_status"], h["to_payment_status"], h["changed_by"]) for h in history] == [
        ("pending", "awaiting", "system"), ("pending", "paid", "merchant"),
        ("processed", "paid", "merchant"), ("delivered", "paid", "merchant")]

    refused = await api.post(f"{path}/status", json={"status": "pending"})
    assert refused.status_code == 409
    assert "delivered" in refused.json()["error"]
    assert len((await api.get(path)).json()["history"]) == 4
    assert await tab_ids(api, "closed", order.order_id) == [order.order_id]

    async with httpx.AsyncClient(base_url=orders_worker.url) as anonymous:
        assert (await anonymous.get(path)).status_code == 401
        assert (await anonymous.post(f"{path}/status", json={"status": "canceled"})).status_code == 401
    assert (await api.get("/orders/no-such-order")).status_code == 404
    assert (await api.post(f"{path}/status", json={"status": "shipped"})).status_code == 400

    sent = await api.post(f"{path}/messages", json={"text": "Your parcel left today."})
    assert sent.status_code == 202 and sent.json()["message_id"]
    assert (await api.post("/orders/no-such-order/messages", json={"text": "hi"})).status_code == 404
    assert (await api.post(f"{path}/messages", content=b"{not json")).status_code == 400

    metrics = (await api.get("/metrics")).text
    assert 'orderflow_order_status_changes_total{status="delivered"}' in metrics
    assert 'orderflow_events_in_total{topic="order.placed"}' in metrics
    batches = re.search(r'^orderflow_batch_size_count\{topic="order.placed"\} (\S+)$', metrics, re.M)
    assert batches is not None and float(batches.group(1)) >= 1  # every applied batch is counted with its size


async def test_payment_that_does_not_match_the_total_is_recorded_and_flagged(
        api: httpx.AsyncClient, producer: StorefrontProducer) -> None:
    order = gateway_order()
    await producer.send(order)
    await order_when(api, order.order_id, lambda o: True, "the order")
    await producer.send(example(PaymentConfirmed, shop_id=order.shop_id, order_id=order.order_id,
                                amount_cents=order.total_cents - 1, currency=order.currency))
    view = await order_when(api, order.order_id, lambda o: o["payments"], "the short payment to be recorded")
    assert view["flags"]["payment_mismatch"] is True
    assert (view["status"], view["payment_status"]) == ("incomplete", "incomplete")
    assert view["payments"][0]["applied"] is False and "does not match" in view["payments"][0]["outcome"]


async def test_bad_order_placed_messages_go_to_the_dlq_and_the_next_order_is_processed(
        api: httpx.AsyncClient, producer: StorefrontProducer, kafka_bootstrap: str) -> None:
    dlq = await TopicTail(kafka_bootstrap, topics.ORDER_PLACED.dlq).start()
    try:
        broken_key = f"broken-{uuid.uuid4().hex}".encode()
        await producer.send_raw(topics.ORDER_PLACED.name, broken_key, b'{"order_id": "x", not json')
        negative = example(OrderPlaced)
        raw = json.loads(c.encode(negative))
        raw["items"][0]["quantity"] = -1
        await producer.send_raw(topics.ORDER_PLACED.name, negative.order_id.encode(), json.dumps(raw).encode())
        good = example(OrderPlaced, payment=c.Payment(method="manual", provider="transfer"))
        await producer.send(good)

        wanted = {broken_key, negative.order_id.encode()}
        records = await dlq.until(lambda rs: wanted <= {r.key for r in rs}, "both bad messages in the DLQ")
        errors = {r.key: dict(r.headers)["dlq.error"].decode() for r in records if r.key in wanted}
        assert "JSON" in errors[broken_key]
        assert "quantity" in errors[negative.order_id.encode()]
        assert all(dict(r.headers)["dlq.source.topic"] == b"order.placed" for r in records if r.key in wanted)

        view = await order_when(api, good.order_id, lambda o: True, "the good order after the bad ones")
        assert view["status"] == "pending"
        assert (await api.get(f"/orders/{negative.order_id}")).status_code == 404
    finally:
        await dlq.stop()


async def test_put_shop_settings_emits_them_and_drives_placement(
        api: httpx.AsyncClient, producer: StorefrontProducer, kafka_bootstrap: str) -> None:
    shop_id = f"shop-{uuid.uuid4().hex[:12]}"
    tail = await TopicTail(kafka_bootstrap, topics.SHOP_SETTINGS.name).start()
    try:
        r = await api.put(f"/shops/{shop_id}", json={"name": "Mugs", "merchant_email": "m@example.com",
                                                     "ignore_incomplete_orders": False})
        assert r.status_code == 200, r.text
        records = await tail.until(lambda rs: any(x.key == shop_id.encode() for x in rs), "shop.settings event")
        event = c.decode(c.ShopSettings, next(x.value for x in records if x.key == shop_id.encode()))
        assert event.ignore_incomplete_orders is False and event.merchant_email == "m@example.com"
    finally:
        await tail.stop()
    assert (await api.put(f"/shops/{shop_id}", json={"name": "Mugs"})).status_code == 400

    order = gateway_order(shop_id=shop_id)
    await producer.send(order)
    view = await order_when(api, order.order_id, lambda o: True, "the order of a shop that shows incomplete ones")
    assert (view["status"], view["payment_status"]) == ("pending", "awaiting")


async def test_a_merchant_message_retried_with_its_idempotency_key_is_one_message(
        api: httpx.AsyncClient, producer: StorefrontProducer, kafka_bootstrap: str) -> None:
    order = example(OrderPlaced, order_id=f"msg-{uuid.uuid4().hex[:8]}")
    await producer.send(order)
    await order_when(api, order.order_id, lambda o: True, "the order")
    path = f"/orders/{order.order_id}/messages"
    tail = await TopicTail(kafka_bootstrap, topics.ORDER_MESSAGE.name).start()
    try:
        key = f"retry-{uuid.uuid4().hex[:8]}"
        first = await api.post(path, json={"text": "Your parcel left today."}, headers={"Idempotency-Key": key})
        again = await api.post(path, json={"text": "Your parcel left today."}, headers={"Idempotency-Key": key})
        other = await api.post(path, json={"text": "And a second note.", "message_id": f"{key}-2"})
        assert [r.status_code for r in (first, again, other)] == [202, 202, 202]
        assert first.json()["message_id"] == again.json()["message_id"] == key
        assert other.json()["message_id"] == f"{key}-2"
        records = await tail.until(lambda rs: len([r for r in rs if r.key == order.order_id.encode()]) >= 3,
                                   "three order.message events")
        mine = [json.loads(r.value) for r in records if r.key == order.order_id.encode()]
        # The retry carries the same event id and message id: notify keys the mail by (ref, message:<id>), once.
        assert len({m["event_id"] for m in mine}) == 2
        assert sorted(m["message_id"] for m in mine) == sorted([key, key, f"{key}-2"])
        bad = await api.post(path, json={"text": "x"}, headers={"Idempotency-Key": "not valid!"})
        assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["error"]
    finally:
        await tail.stop()
