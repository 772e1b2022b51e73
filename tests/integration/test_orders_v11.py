"""Contract v1.1 on the orders service, on the real broker and database: an order's addresses, shipping, discount,
tax, note and locale (issue 17 item 2), refunds (item 3) and the search by payment status (item 6).

Orders arrive the way a storefront sends them (order.placed on the broker); the back office is read through its
JSON API and, for the order page, in a real headless Chromium.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import contracts as c
from contracts import OrderPlaced, topics
from contracts.producer import StorefrontProducer
from tests.examples import example
from tests.helpers import async_wait_for
from tests.integration.test_orders_service import TopicTail, statuses_of
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

TIMEOUT = 30.0
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"

SHIP_TO = c.Address(name="Léa Martin", line1="12 rue des Lilas", line2="Bâtiment B", postal_code="69003",
                    city="Lyon", region="Auvergne-Rhône-Alpes", country="FR", phone="+33 6 12 34 56 78")
BILL_TO = c.Address(name="Martin SARL", line1="3 place Bellecour", postal_code="69002", city="Lyon", country="FR")


def v11_fields() -> dict[str, Any]:
    return {"shipping_address": SHIP_TO, "billing_address": BILL_TO,
            "shipping": c.ShippingChoice(method="Colissimo domicile", carrier="La Poste", cost_cents=690),
            "discount_cents": 500, "tax_cents": 417, "note": "Merci de sonner deux fois <b>svp</b>",
            "locale": "fr-FR"}


@pytest.fixture(scope="module")
def orders_worker(kafka_bootstrap: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[WorkerProcess]:
    worker = make_worker("orders", worker_env(kafka_bootstrap, database_url, ORDERFLOW_STORE="memory"),
                         tmp_path_factory.mktemp("orders-v11"))
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
                     message: str, shop_id: str | None = None) -> dict[str, Any]:
    params = {"shop_id": shop_id} if shop_id else {}

    async def fetch() -> dict[str, Any] | None:
        r = await api.get(f"/orders/{order_id}", params=params)
        return r.json() if r.status_code == 200 and ready(r.json()) else None

    return await async_wait_for(fetch, timeout=TIMEOUT, message=message)


def manual_order(**overrides: Any) -> OrderPlaced:
    return example(OrderPlaced, payment=c.Payment(method="manual", provider="cheque"), **overrides)


# --- item 2: the order's v1.1 details ----------------------------------------------------------------------------


async def test_every_v11_field_round_trips_to_the_api_the_event_and_the_order_page(
        api: httpx.AsyncClient, producer: StorefrontProducer, status_tail: TopicTail,
        orders_worker: WorkerProcess) -> None:
    order = manual_order(**v11_fields())
    await producer.send(order)
    view = await order_when(api, order.order_id, lambda o: True, "the v1.1 order to be stored")

    sent = order.model_dump(mode="json", include=set(v11_fields()), exclude_none=True)
    assert {k: view[k] for k in sent} == sent
    assert view["shipping_address"]["line2"] == "Bâtiment B" and view["shipping"]["cost_cents"] == 690

    records = await status_tail.until(lambda rs: statuses_of(rs, order.order_id), "its order.status")
    event = statuses_of(records, order.order_id)[0]
    assert {k: event[k] for k in sent} == sent  # passed on for the merchant's new-order mail

    if CHROMIUM is None:
        pytest.skip("no chromium found (Debian: apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the dev extra")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 900})
            await page.goto(f"{orders_worker.url}/backoffice/login")
            await page.fill("#token", orders_worker.token)
            await page.click("button[type=submit]")
            await page.goto(f"{orders_worker.url}/backoffice/orders/{order.order_id}?shop_id={order.shop_id}")
            label = [line for line in (await page.inner_text("#shipping-address")).splitlines() if line]
            assert label == ["Léa Martin", "12 rue des Lilas", "Bâtiment B", "69003 Lyon", "Auvergne-Rhône-Alpes",
                             "FR", "Tel. +33 6 12 34 56 78"]
            billing = [line for line in (await page.inner_text("#billing-address")).splitlines() if line]
            assert billing == ["Martin SARL", "3 place Bellecour", "69002 Lyon", "FR"]
            assert "Colissimo domicile · La Poste · €6.90" in await page.inner_text("#shipping")  # an English shop
            assert await page.inner_text("#note") == "Merci de sonner deux fois <b>svp</b>"  # text, not markup
            assert "5.00" in await page.inner_text("#discount") and "4.17" in await page.inner_text("#tax")
            OUTPUT.mkdir(exist_ok=True)
            await page.screenshot(path=str(OUTPUT / "backoffice-order-v11.png"), full_page=True)
        finally:
            await browser.close()


async def test_a_v1_order_without_them_still_works(api: httpx.AsyncClient, producer: StorefrontProducer,
                                                   status_tail: TopicTail, orders_worker: WorkerProcess) -> None:
    order = manual_order()
    await producer.send(order)
    view = await order_when(api, order.order_id, lambda o: True, "the v1 order to be stored")
    assert all(view[k] is None for k in v11_fields())
    records = await status_tail.until(lambda rs: statuses_of(rs, order.order_id), "its order.status")
    event = statuses_of(records, order.order_id)[0]
    assert not any(k in event for k in v11_fields())  # absent, not null: a v1 consumer sees a v1 event
    async with httpx.AsyncClient(base_url=orders_worker.url) as web:
        login = await web.post("/backoffice/login", data={"token": orders_worker.token})
        assert login.status_code in (200, 303), login.text
        page = await web.get(f"/backoffice/orders/{order.order_id}", params={"shop_id": order.shop_id})
        assert page.status_code == 200 and 'id="details"' not in page.text


# --- item 3: refunds -----------------------------------------------------------------------------------------------


def gateway_refund(order: OrderPlaced, refund_id: str, amount_cents: int) -> c.PaymentRefunded:
    return c.PaymentRefunded(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=order.shop_id,
                             order_id=order.order_id, refund_id=refund_id, amount_cents=amount_cents,
                             currency=order.currency, provider="paypal")


async def paid_order(api: httpx.AsyncClient, producer: StorefrontProducer) -> OrderPlaced:
    order = manual_order()
    await producer.send(order)
    await order_when(api, order.order_id, lambda o: True, "the order to be stored")
    r = await api.post(f"/orders/{order.order_id}/payment", json={"status": "paid"})
    assert r.status_code == 200 and r.json()["payment_status"] == "paid", r.text
    return order


async def test_partial_then_full_refund_duplicates_and_over_refund(
        api: httpx.AsyncClient, producer: StorefrontProducer, status_tail: TopicTail) -> None:
    order = await paid_order(api, producer)
    total, oid = order.total_cents, order.order_id
    assert total >= 3

    first = await api.post(f"/orders/{oid}/refunds", json={"refund_id": "r-1", "amount_cents": 1})
    assert first.status_code == 200, first.text
    assert (first.json()["payment_status"], first.json()["refunded_cents"], first.json()["changed"]) == \
        ("partially_refunded", 1, True)
    again = await api.post(f"/orders/{oid}/refunds", json={"refund_id": "r-1", "amount_cents": 1})
    assert again.status_code == 200 and again.json()["changed"] is False and again.json()["refunded_cents"] == 1

    over = await api.post(f"/orders/{oid}/refunds", json={"refund_id": "r-2", "amount_cents": total})
    assert over.status_code == 409 and "more than is left to refund" in over.json()["error"], over.text
    over_again = await api.post(f"/orders/{oid}/refunds", json={"refund_id": "r-2", "amount_cents": total})
    assert over_again.status_code == 409  # the recorded refusal, not a second decision

    # The gateway refunds the rest, and its event arrives twice: applied once.
    rest = gateway_refund(order, "gw-1", total - 1)
    await producer.send(rest)
    await producer.send(rest.model_copy(update={"event_id": c.new_event_id()}))
    view = await order_when(api, oid, lambda o: o["payment_status"] == "refunded", "the gateway refund")
    assert view["refunded_cents"] == total and view["status"] == "pending"  # a refund changes no order status
    by_id = {r["refund_id"]: r for r in view["refunds"]}
    assert set(by_id) == {"r-1", "r-2", "gw-1"}
    assert by_id["r-2"]["applied"] is False and by_id["r-2"]["outcome"].startswith("refused: ")
    assert by_id["gw-1"]["applied"] and by_id["gw-1"]["outcome"] == "applied"

    records = await status_tail.until(
        lambda rs: any(s["payment_status"] == "refunded" for s in statuses_of(rs, oid)), "order.status refunded")
    refunds = [s for s in statuses_of(records, oid) if s["payment_status"] in ("partially_refunded", "refunded")]
    assert [(s["payment_status"], s["refunded_cents"]) for s in refunds] == \
        [("partially_refunded", 1), ("refunded", total)]
    history = [h for h in view["history"] if "refund" in h["reason"]]
    assert len(history) == 2  # r-1 and gw-1; neither the duplicates nor the refused one


async def test_a_canceled_paid_order_owes_a_refund_until_refunded(
        api: httpx.AsyncClient, producer: StorefrontProducer, status_tail: TopicTail) -> None:
    order = await paid_order(api, producer)
    oid, total = order.order_id, order.total_cents
    canceled = await api.post(f"/orders/{oid}/status", json={"status": "canceled"})
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["refund_due_cents"] == total and canceled.json()["flags"]["refund_due"] is True
    async with httpx.AsyncClient(base_url=str(api.base_url)) as web:
        await web.post("/backoffice/login", data={"token": api.headers["Authorization"].removeprefix("Bearer ")})
        page = await web.get(f"/backoffice/orders/{oid}", params={"shop_id": order.shop_id})
        assert page.status_code == 200 and 'id="refund-due"' in page.text
    records = await status_tail.until(
        lambda rs: any(s["status"] == "canceled" for s in statuses_of(rs, oid)), "order.status canceled")
    assert [s["refund_due_cents"] for s in statuses_of(records, oid) if s["status"] == "canceled"] == [total]

    await producer.send(gateway_refund(order, "gw-all", total))
    view = await order_when(api, oid, lambda o: o["payment_status"] == "refunded", "the refund of the canceled order")
    assert view["refund_due_cents"] == 0 and view["flags"]["refund_due"] is False and view["status"] == "canceled"
    records = await status_tail.until(
        lambda rs: any(s["payment_status"] == "refunded" for s in statuses_of(rs, oid)), "order.status refunded")
    last = statuses_of(records, oid)[-1]
    assert (last["refunded_cents"], last["refund_due_cents"]) == (total, 0)


async def test_a_refund_of_an_unpaid_order_is_refused_and_recorded(
        api: httpx.AsyncClient, producer: StorefrontProducer) -> None:
    order = manual_order()
    await producer.send(order)
    await order_when(api, order.order_id, lambda o: True, "the order to be stored")
    r = await api.post(f"/orders/{order.order_id}/refunds", json={"refund_id": "x", "amount_cents": 1})
    assert r.status_code == 409 and "not paid" in r.json()["error"]
    view = (await api.get(f"/orders/{order.order_id}")).json()
    assert view["payment_status"] == "awaiting" and view["refunds"][0]["outcome"].startswith("refused: ")


# --- issue 15: each mail's state on the order page and in the mail view (read model of mail.status) ---------------


def mail_status(order: OrderPlaced, kind: str, state: str, minutes: int, reply: str | None = None
                ) -> c.MailStatusChanged:
    at = c.now().replace(microsecond=0) - timedelta(minutes=60 - minutes)
    return c.MailStatusChanged(
        event_id=c.derived_event_id("test-mail", order.shop_id, order.order_id, kind, state, minutes),
        occurred_at=at, shop_id=order.shop_id, subject="order", subject_id=order.order_id, kind=kind,
        audience="customer", state=state, attempts=1, reply=reply, message_id=f"<{kind}@orderflow>", changed_at=at)


async def test_mail_states_show_on_the_order_and_in_the_mail_view_newest_wins(
        api: httpx.AsyncClient, producer: StorefrontProducer, orders_worker: WorkerProcess) -> None:
    order = manual_order()
    await producer.send(order)
    await order_when(api, order.order_id, lambda o: True, "the order to be stored")
    refused = "550 5.1.1 <ada@example.com>: Recipient address rejected"
    await producer.send(mail_status(order, "new_order", "sent", 1))
    await producer.send(mail_status(order, "confirmation", "failed", 2, refused))
    await producer.send(mail_status(order, "confirmation", "queued", 1))  # older, arriving late: changes nothing
    view = await order_when(api, order.order_id, lambda o: len(o["mails"]) == 2, "both mails on the order")
    shown = {m["kind"]: (m["state"], m["reply"]) for m in view["mails"]}
    assert shown == {"new_order": ("sent", None), "confirmation": ("failed", refused)}

    failed = (await api.get("/mails", params={"state": "failed", "shop_id": order.shop_id})).json()["mails"]
    assert [(m["subject_id"], m["kind"], m["reply"]) for m in failed] == [(order.order_id, "confirmation", refused)]
    assert (await api.get("/mails", params={"state": "lost"})).status_code == 400

    # the merchant's pages: the order page's mail table and the mail view, signed in with the operator's token
    async with httpx.AsyncClient(base_url=orders_worker.url, timeout=10, follow_redirects=True) as browser:
        signed_in = await browser.post("/backoffice/login", data={"token": orders_worker.token})
        assert signed_in.status_code == 200
        page = await browser.get(f"/backoffice/orders/{order.order_id}", params={"shop_id": order.shop_id})
        assert 'id="mails"' in page.text and "Recipient address rejected" in page.text
        assert f"orderflow mail retry {order.shop_id}/{order.order_id} KIND" in page.text
        listing = await browser.get("/backoffice/mails", params={"shop_id": order.shop_id, "state": "failed"})
        assert listing.status_code == 200 and "Recipient address rejected" in listing.text

    await producer.send(mail_status(order, "confirmation", "sent", 3))  # re-sent after the operator's retry
    await order_when(api, order.order_id, lambda o: {m["state"] for m in o["mails"]} == {"sent"},
                     "the re-sent mail shown as sent")
