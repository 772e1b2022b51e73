"""The customer's "refunded" mail end to end (issue 17 items 3 and 7): an orders and a notify worker on the real
broker, database and SMTP sink, for a French shop.

One mail per refund_id: the merchant's refund and the gateway's each send one; the same refund id again (an API
retry, a redelivered payment.refunded) and a replay of order.status send nothing more. The mails are in the shop's
French, with amounts as French writes euros.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

import contracts as c
from contracts import topics
from contracts.producer import StorefrontProducer
from tests.helpers import async_wait_for
from tests.integration.test_notify_mail import mails_to, notify_worker, topic_ends
from tests.integration.test_orders_v11 import gateway_refund, manual_order, order_when
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

EUR = "\u00a0€"  # French puts a no-break space between the amount and the sign
ITEMS = [
    c.OrderItem(sku="MUG-1", name="Tasse", quantity=2, unit_price_cents=1250),
    c.OrderItem(sku="TEE-M", name="T-shirt", quantity=1, unit_price_cents=2000),
]


@pytest.fixture(scope="module")
def orders_worker(
    kafka_bootstrap: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    worker = make_worker(
        "orders",
        worker_env(kafka_bootstrap, database_url, ORDERFLOW_STORE="memory"),
        tmp_path_factory.mktemp("orders-refunds"),
    )
    worker.start().wait_ready(timeout=90)
    yield worker
    worker.stop()


@pytest.fixture
async def api(orders_worker: WorkerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=orders_worker.url, timeout=10, headers={"Authorization": f"Bearer {orders_worker.token}"}
    ) as client:
        yield client


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[StorefrontProducer]:
    async with StorefrontProducer(kafka_bootstrap) as p:
        yield p


@pytest.fixture(scope="module")
async def notify(kafka_bootstrap: str, database_url: str, mailsink, tmp_path_factory: pytest.TempPathFactory):
    """A notify worker reading from the topics' ends now (the shared broker's history is other tests')."""
    started_at = await topic_ends(kafka_bootstrap)
    worker = await notify_worker(
        kafka_bootstrap, database_url, tmp_path_factory.mktemp("notify-refunds"), offsets=started_at, **mailsink.env
    )
    worker.started_at = started_at  # type: ignore[attr-defined]
    yield worker
    worker.kill()


async def all_sent(database_url: str, ref: str, count: int) -> list[str]:
    """Waits until notify holds `count` mails for the order and has sent each; their kinds."""
    conn = await asyncpg.connect(database_url)
    try:

        async def sent() -> list[str] | None:
            rows = await conn.fetch("SELECT kind, state FROM notify.mails WHERE ref = $1", ref)
            return (
                sorted(r["kind"] for r in rows)
                if len(rows) >= count and all(r["state"] == "sent" for r in rows)
                else None
            )

        return await async_wait_for(sent, timeout=30, message=f"{count} mails of {ref} sent", interval=0.2)
    finally:
        await conn.close()


async def test_one_refunded_mail_per_refund_in_french_and_none_again_on_replay(
    notify: WorkerProcess,
    orders_worker: WorkerProcess,
    api: httpx.AsyncClient,
    producer: StorefrontProducer,
    mailsink,
    kafka_bootstrap: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    customer, merchant = f"lea-{uuid.uuid4().hex[:8]}@example.fr", f"boutique-{uuid.uuid4().hex[:8]}@example.fr"
    order = manual_order(customer=c.Customer(email=customer, name="Léa"), items=ITEMS, total_cents=4500, currency="EUR")
    oid, ref = order.order_id, f"{order.shop_id}/{order.order_id}"
    await producer.send(
        c.ShopSettings(
            event_id=c.new_event_id(),
            occurred_at=c.now(),
            shop_id=order.shop_id,
            name="Boutique Léa",
            merchant_email=merchant,
            locale="fr",
        )
    )
    await producer.send(order)
    await order_when(api, oid, lambda o: True, "the order to be stored", shop_id=order.shop_id)
    paid = await api.post(f"/orders/{oid}/payment", params={"shop_id": order.shop_id}, json={"status": "paid"})
    assert paid.status_code == 200, paid.text

    # The merchant refunds 12.50 (and the request is retried); the gateway refunds the rest (its event twice).
    for _ in range(2):
        first = await api.post(
            f"/orders/{oid}/refunds", params={"shop_id": order.shop_id}, json={"refund_id": "r-1", "amount_cents": 1250}
        )
        assert first.status_code == 200, first.text
    rest = gateway_refund(order, "gw-1", 3250)
    await producer.send(rest)
    await producer.send(rest.model_copy(update={"event_id": c.new_event_id()}))
    await order_when(api, oid, lambda o: o["payment_status"] == "refunded", "the gateway refund", order.shop_id)

    kinds = await all_sent(database_url, ref, 4)
    assert kinds == ["confirmation", "new_order", "refunded:gw-1", "refunded:r-1"]
    refunded = [m for m in await mails_to(mailsink, customer, 3) if "remboursement" in m["subject"]]
    assert len(refunded) == 2
    by_amount = {m["text"].split("Nous vous avons remboursé ")[1].split(" pour")[0]: m for m in refunded}
    assert set(by_amount) == {f"12,50{EUR}", f"32,50{EUR}"}
    assert f"Remboursé à ce jour : 12,50{EUR} sur 45,00{EUR}." in by_amount[f"12,50{EUR}"]["text"]
    assert f"Remboursé à ce jour : 45,00{EUR} sur 45,00{EUR}." in by_amount[f"32,50{EUR}"]["text"]
    assert all(m["subject"] == f"Boutique Léa : un remboursement pour votre commande {oid}" for m in refunded)
    [new_order] = mailsink.messages(to=merchant)
    assert f"Total : 45,00{EUR}" in new_order["text"] and "nouvelle commande" in new_order["subject"]

    # The back office shows the French shop's order in French, amounts as French writes them. The page's language
    # is orders' copy of shop.settings, a topic orders reads apart from order.placed: wait for it, not for notify's.
    conn = await asyncpg.connect(database_url)
    try:
        await async_wait_for(
            lambda: conn.fetchval("SELECT locale = 'fr' FROM orders.shops WHERE shop_id = $1", order.shop_id),
            timeout=30, message="orders to know the shop is French", interval=0.2)
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=orders_worker.url) as web:
        login = await web.post("/backoffice/login", data={"token": orders_worker.token})
        assert login.status_code in (200, 303), login.text
        page = await web.get(f"/backoffice/orders/{oid}", params={"shop_id": order.shop_id})
        listing = await web.get("/backoffice/orders", params={"shop_id": order.shop_id, "tab": "pending"})
    assert page.status_code == 200 and listing.status_code == 200
    assert '<html lang="fr">' in page.text and f'Commande <span class="mono">{oid}</span>' in page.text
    assert f'Remboursé : <strong id="refunded">45,00{EUR}</strong>' in page.text
    assert f"remboursement r-1 de 12,50{EUR}" in page.text
    assert "<th>Passée le</th>" in listing.text and f"45,00{EUR}" in listing.text and "1 commande" in listing.text
    assert "Payment" not in page.text and "Refunded:" not in page.text

    # A new notify consumer group reads order.status again from where the module's worker started: nothing new.
    targets = {
        tp: end
        for tp, end in (await topic_ends(kafka_bootstrap)).items()
        if tp.topic == topics.ORDER_STATUS.name and end > notify.started_at.get(tp, 0)
    }
    replay = await notify_worker(
        kafka_bootstrap, database_url, tmp_path, index=1, offsets=notify.started_at, **mailsink.env
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        group = f"{replay.env['ORDERFLOW_APP_ID_PREFIX']}-notify"

        async def caught_up() -> bool:
            committed = await admin.list_consumer_group_offsets(group)
            return all(tp in committed and committed[tp].offset >= end for tp, end in targets.items())

        await async_wait_for(caught_up, timeout=60, message="the replay to read order.status to its end", interval=0.5)
    finally:
        await admin.close()
        replay.kill()
    assert await all_sent(database_url, ref, 4) == kinds
    assert Counter(m["subject"] for m in mailsink.messages(to=customer)) == Counter(
        {
            f"Boutique Léa : votre commande {oid} est confirmée": 1,
            f"Boutique Léa : un remboursement pour votre commande {oid}": 2,
        }
    )
