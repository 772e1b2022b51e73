"""notify end to end on the real broker, database and mail sink: each e-mail once, none lost.

Events are produced on the topics as the orders, inventory and cart services would; mails are read back from the
project's SMTP sink. Every test uses fresh shop, order and address ids (the broker, database and sink are shared).
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

import contracts as c
from contracts import topics as t
from contracts.producer import StorefrontProducer
from services.notify import core
from tests.helpers import async_wait_for
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

ITEMS = [c.OrderItem(sku="MUG-1", name="Mug", quantity=2, unit_price_cents=1250)]


def uid() -> str:
    return uuid.uuid4().hex[:10]


def shop_settings(shop_id: str, merchant_email: str, name: str = "Chez Ada") -> c.ShopSettings:
    return c.ShopSettings(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop_id, name=name,
                          merchant_email=merchant_email)


def order_status(shop_id: str, order_id: str, email: str, status: str, previous: str | None, payment: str,
                 *, seq: int, method: str = "manual", name: str = "Ada", previous_payment: str | None = None,
                 event_id: uuid.UUID | None = None) -> c.OrderStatusChanged:
    """An order.status event as the orders service emits it (deterministic event id per order and change)."""
    return c.OrderStatusChanged(
        event_id=event_id or c.derived_event_id("orders", order_id, "status", seq), occurred_at=c.now(),
        shop_id=shop_id, order_id=order_id, status=status, payment_status=payment, previous_status=previous,
        previous_payment_status=previous_payment, changed_by="system",
        customer=c.Customer(email=email, name=name), items=ITEMS, total_cents=2500, currency="EUR",
        payment=c.Payment(method=method, provider="cheque" if method == "manual" else "paypal"),
    )


def new_order(shop_id: str, email: str, order_id: str | None = None) -> c.OrderStatusChanged:
    return order_status(shop_id, order_id or f"o-{uid()}", email, "pending", None, "awaiting", seq=0)


class SinkReader:
    """Reads a mail sink this test started itself (the SMTP server that comes back late)."""

    def __init__(self, http_url: str) -> None:
        self.http_url = http_url

    def messages(self, **filters: str) -> list[dict]:
        return httpx.get(f"{self.http_url}/messages", params=filters, timeout=5).json()


def metric(worker: WorkerProcess, name: str) -> float:
    """Sum of a metric's samples (all label values) from the worker's /metrics."""
    text = httpx.get(f"{worker.url}/metrics", timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


CONSUMED = [t.ORDER_STATUS.name, t.INVENTORY_DEDUCTIONS.name, t.CHECKOUT_ABANDONED.name, t.ORDER_MESSAGE.name,
            t.SHOP_SETTINGS.name]


async def topic_ends(bootstrap: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(CONSUMED)
    finally:
        await admin.close()
    tps = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def commit_group_at(bootstrap: str, app_prefix: str, offsets: dict[TopicPartition, int]) -> None:
    """Start the notify consumer group of `app_prefix` at `offsets`, as if a previous worker had read that far.

    The broker is shared with every other test (benchmarks put 100k+ events on these topics): a fresh group
    reading from offset 0 would spend minutes on other tests' history before reaching this test's events.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"{app_prefix}-notify",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: off for tp, off in offsets.items()})
    finally:
        await consumer.stop()


async def notify_worker(kafka_bootstrap: str, database_url: str, path: Path, index: int = 0,
                        offsets: dict[TopicPartition, int] | None = None, **env: str) -> WorkerProcess:
    prefix = f"test-{uid()}"
    await commit_group_at(kafka_bootstrap, prefix, offsets or await topic_ends(kafka_bootstrap))
    return make_worker("notify", worker_env(kafka_bootstrap, database_url, app_prefix=prefix, **env), path,
                       index).start().wait_ready()


@pytest.fixture(scope="module")
async def notify(kafka_bootstrap: str, database_url: str, mailsink, tmp_path_factory: pytest.TempPathFactory):
    started_at = await topic_ends(kafka_bootstrap)
    worker = await notify_worker(kafka_bootstrap, database_url, tmp_path_factory.mktemp("notify"),
                                 offsets=started_at, **mailsink.env)
    worker.started_at = started_at  # type: ignore[attr-defined]
    yield worker
    worker.kill()


@pytest.fixture
async def producer(kafka_bootstrap: str):
    async with StorefrontProducer(kafka_bootstrap) as p:
        yield p


async def mails_to(mailsink, address: str, count: int, timeout: float = 30.0) -> list[dict]:
    """Wait until `address` has received at least `count` mails and return them."""
    async def enough() -> list[dict] | None:
        found = mailsink.messages(to=address)
        return found if len(found) >= count else None

    return await async_wait_for(enough, timeout=timeout, message=f"{count} mail(s) to {address}", interval=0.1)


# --- the French seed's scenarios -----------------------------------------------------------------------------


async def test_gateway_order_mails_only_once_paid_and_only_once(notify, producer, mailsink) -> None:
    shop, order = f"shop-{uid()}", f"o-{uid()}"
    merchant, customer = f"merchant-{uid()}@example.com", f"cust-{uid()}@example.com"
    await producer.send(shop_settings(shop, merchant))
    incomplete = order_status(shop, order, customer, "incomplete", None, "incomplete", seq=0, method="gateway")
    paid = order_status(shop, order, customer, "pending", "incomplete", "paid", seq=1, method="gateway",
                        previous_payment="incomplete")
    await producer.send(incomplete)
    # The payment arrives three times: twice the same event (redelivery), once re-emitted with another id.
    for event in (paid, paid, paid.model_copy(update={"event_id": c.new_event_id()})):
        await producer.send(event)
    # Same key, same partition: once the processed mail is there, everything before it was applied.
    await producer.send(order_status(shop, order, customer, "processed", "pending", "paid", seq=2,
                                     method="gateway"))

    customer_mails = await mails_to(mailsink, customer, 2)
    merchant_mails = await mails_to(mailsink, merchant, 1)
    assert sorted(m["subject"] for m in customer_mails) == sorted(
        [f"Chez Ada: your order {order} is confirmed", f"Chez Ada: your order {order} is on its way"])
    confirmation = next(m for m in customer_mails if "confirmed" in m["subject"])
    assert "Payment status: Paid" in confirmation["text"] and "<strong>Paid</strong>" in confirmation["html"]
    assert confirmation["message_id"] == core.message_id(f"{shop}/{order}", "confirmation")
    [new_order_mail] = merchant_mails
    assert order in new_order_mail["subject"] and "Paid" in new_order_mail["subject"]
    assert "Mug" in new_order_mail["text"] and "€25.00" in new_order_mail["text"]  # the shop's locale: en
    assert len(mailsink.messages(to=customer)) == 2 and len(mailsink.messages(to=merchant)) == 1


async def test_manual_order_then_paid_twice_then_each_status_once(notify, producer, mailsink) -> None:
    shop, order = f"shop-{uid()}", f"o-{uid()}"
    merchant, customer = f"merchant-{uid()}@example.com", f"cust-{uid()}@example.com"
    await producer.send(shop_settings(shop, merchant))
    await producer.send(new_order(shop, customer, order))
    both = await mails_to(mailsink, customer, 1), await mails_to(mailsink, merchant, 1)
    assert "Payment status: Awaiting payment" in both[0][0]["text"]
    assert "Awaiting payment" in both[1][0]["subject"]

    for seq in (1, 2):  # the merchant marks it paid, and again (orders would emit once; notify must not care)
        await producer.send(order_status(shop, order, customer, "pending", "pending", "paid", seq=seq,
                                         previous_payment="awaiting"))
    steps = [("processed", "pending"), ("delivered", "processed")]
    for seq, (status, previous) in enumerate(steps, start=3):
        event = order_status(shop, order, customer, status, previous, "paid", seq=seq)
        await producer.send(event)
        await producer.send(event)  # a duplicate

    mails = await mails_to(mailsink, customer, 3)
    subjects = Counter(m["subject"] for m in mails)
    assert subjects == Counter({f"Chez Ada: your order {order} is confirmed": 1,
                                f"Chez Ada: your order {order} is on its way": 1,
                                f"Chez Ada: your order {order} was delivered": 1})
    assert len(mailsink.messages(to=merchant)) == 1


async def test_cancel_mails_once_but_not_for_a_never_paid_order(notify, producer, mailsink) -> None:
    shop = f"shop-{uid()}"
    merchant, customer = f"merchant-{uid()}@example.com", f"cust-{uid()}@example.com"
    unpaid, committed = f"o-{uid()}", f"o-{uid()}"
    await producer.send(shop_settings(shop, merchant))
    await producer.send(order_status(shop, unpaid, customer, "incomplete", None, "incomplete", seq=0,
                                     method="gateway"))
    await producer.send(order_status(shop, unpaid, customer, "canceled", "incomplete", "incomplete", seq=1,
                                     method="gateway"))
    await producer.send(new_order(shop, customer, committed))
    cancel = order_status(shop, committed, customer, "canceled", "pending", "awaiting", seq=1)
    await producer.send(cancel)
    await producer.send(cancel)
    # the unpaid order was produced first; by the time the later order's two mails are in, it was long applied
    mails = await mails_to(mailsink, customer, 2)
    assert Counter(m["subject"] for m in mails) == Counter({f"Chez Ada: your order {committed} is confirmed": 1,
                                                            f"Chez Ada: your order {committed} was canceled": 1})
    assert not any(unpaid in m["subject"] for m in mailsink.messages(to=merchant))


async def test_shortfall_recovery_and_merchant_message(notify, producer, mailsink) -> None:
    shop, order, cart = f"shop-{uid()}", f"o-{uid()}", f"cart-{uid()}"
    merchant, customer = f"merchant-{uid()}@example.com", f"cust-{uid()}@example.com"
    # The merchant alert comes before the shop's settings: it waits for them instead of being dropped.
    deduction = c.InventoryDeduction(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop, order_id=order,
                                     kind="deducted", lines=[c.DeductionLine(sku="MUG-1", asked=5, moved=2),
                                                             c.DeductionLine(sku="TEE-M", asked=1, moved=1)])
    await producer.send(deduction)
    await producer.send(deduction)
    await producer.send(shop_settings(shop, merchant, name="Ada & Co"))
    abandoned = c.CheckoutAbandoned(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop, cart_id=cart,
                                    customer=c.Customer(email=customer, name="Ada"),
                                    items=[c.CartItem(sku="MUG-1", quantity=1, name="Mug")], started_at=c.now(),
                                    recovery_url=f"http://store.test/cart/{cart}?resume=1&x=<y>")
    message = c.CustomerMessageRequested(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop,
                                         order_id=order, message_id=f"m-{uid()}",
                                         text="Your mug is <delayed> & ships Monday.",
                                         customer=c.Customer(email=customer, name="Ada"))
    for event in (abandoned, message, abandoned, message):
        await producer.send(event)

    [alert] = await mails_to(mailsink, merchant, 1)
    assert "shortfall" in alert["subject"] and "MUG-1: asked 5, deducted 2, missing 3" in alert["text"]
    assert "TEE-M" not in alert["text"]
    mails = {m["subject"]: m for m in await mails_to(mailsink, customer, 2)}
    recovery = mails["Ada & Co: your cart is waiting for you"]
    assert f"http://store.test/cart/{cart}?resume=1&x=<y>" in recovery["text"]
    assert f'href="http://store.test/cart/{cart}?resume=1&amp;x=&lt;y&gt;"' in recovery["html"]
    note = mails[f"Ada & Co: a message about your order {order}"]
    assert "Your mug is &lt;delayed&gt; &amp; ships Monday." in note["html"]
    assert len(mailsink.messages(to=customer)) == 2 and len(mailsink.messages(to=merchant)) == 1


async def test_script_in_customer_name_is_escaped_and_adds_no_header(notify, producer, mailsink) -> None:
    shop = f"shop-{uid()}"
    merchant, customer = f"merchant-{uid()}@example.com", f"cust-{uid()}@example.com"
    await producer.send(shop_settings(shop, merchant))
    await producer.send(order_status(shop, f"o-{uid()}", customer, "pending", None, "awaiting", seq=0,
                                     name="<script>alert(1)</script> Bcc: x@evil.test"))
    [mail] = await mails_to(mailsink, customer, 1)
    [alert] = await mails_to(mailsink, merchant, 1)
    for received in (mail, alert):
        assert "<script>" not in received["html"] and "&lt;script&gt;alert(1)&lt;/script&gt;" in received["html"]
        assert not any(name.lower() == "bcc" for name in received["headers"])
    assert mail["rcpt_to"] == [customer]


# --- replay ----------------------------------------------------------------------------------------------


async def test_full_replay_sends_nothing(notify, kafka_bootstrap, database_url, producer,
                                                          mailsink, tmp_path: Path) -> None:
    shop, order = f"shop-{uid()}", f"o-{uid()}"
    merchant, customer = f"merchant-{uid()}@example.com", f"cust-{uid()}@example.com"
    await producer.send(shop_settings(shop, merchant))
    await producer.send(new_order(shop, customer, order))
    await producer.send(order_status(shop, order, customer, "processed", "pending", "awaiting", seq=1))
    await mails_to(mailsink, customer, 2)
    await mails_to(mailsink, merchant, 1)

    # A new consumer group replays every event the notify workers of this module consumed, from the offsets
    # the module's first worker started at (offset 0 of a shared broker would mean other tests' 100k+ events).
    targets = {tp: end for tp, end in (await topic_ends(kafka_bootstrap)).items()
               if end > notify.started_at.get(tp, 0)}
    replay = await notify_worker(kafka_bootstrap, database_url, tmp_path, index=1, offsets=notify.started_at,
                                 **mailsink.env)
    prefix = replay.env["ORDERFLOW_APP_ID_PREFIX"]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        async def caught_up() -> bool:
            committed = await admin.list_consumer_group_offsets(f"{prefix}-notify")
            behind = [tp for tp, end in targets.items() if tp not in committed or committed[tp].offset < end]
            return not behind

        await async_wait_for(caught_up, timeout=120, message="the replay worker to read every topic to its end",
                             interval=0.5)
        assert metric(replay, "orderflow_events_in_total") >= 4
    finally:
        await admin.close()
        replay.kill()
    assert len(mailsink.messages(to=customer)) == 2
    assert len(mailsink.messages(to=merchant)) == 1
