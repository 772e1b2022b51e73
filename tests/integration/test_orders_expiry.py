"""Expiry and flags (issue 17 items 4, 5 and 6) on the real broker, database and mail sink, with two orders workers,
inventory and notify running.

- Unpaid gateway orders past the shop's `expire_unpaid_after_seconds` are canceled once each, reason `expired`, by
  the system, while one orders worker is SIGKILLed and restarted; no stock moves and no mail goes out for them (a
  committed order beside them is not expired, moves stock and is mailed: the checks are not vacuous).
- A payment after expiry, sent twice and followed by another payment, flags the order `payment_after_cancel` and
  mails the merchant one alert.
- `GET /orders?payment_status=…` (with `tab`, `q` and `flag`), an unknown value 400.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

import contracts as c
from contracts import topics
from contracts.producer import StorefrontProducer
from tests.helpers import async_wait_for
from tests.integration.test_orders_service import TopicTail
from tests.integration.test_tenants import start_groups_at_the_end
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

TIMEOUT = 45.0
EXPIRE_AFTER = 4
"""The test shop's expire_unpaid_after_seconds: short, so the test waits seconds, not days."""


def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, database_url: str, mailsink: Any,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    prefix = f"expiry-{uid()}"
    await start_groups_at_the_end(kafka_bootstrap, prefix)
    env = worker_env(kafka_bootstrap, database_url, app_prefix=prefix, **mailsink.env, EXPIRE_SCAN_MS="200",
                     ORDERFLOW_STORE="memory")
    tmp: Path = tmp_path_factory.mktemp("expiry")
    workers = {"orders-0": make_worker("orders", env, tmp, 0), "orders-1": make_worker("orders", env, tmp, 1),
               "inventory": make_worker("inventory", env, tmp), "notify": make_worker("notify", env, tmp)}
    try:
        for w in workers.values():
            w.start()
        for w in workers.values():
            w.wait_ready(timeout=90)
        yield {"prefix": prefix, **workers}
    finally:
        for w in workers.values():  # SIGTERM to all first: they drain at the same time, not one after the other
            if w.proc is not None and w.proc.poll() is None:
                os.killpg(w.proc.pid, signal.SIGTERM)
        for w in workers.values():
            w.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[StorefrontProducer]:
    async with StorefrontProducer(kafka_bootstrap, linger_ms=5) as p:
        yield p


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def client(worker: WorkerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=worker.url, timeout=10, headers={"Authorization": f"Bearer {worker.token}"})


class Shop:
    def __init__(self, expire_after: int | None = EXPIRE_AFTER) -> None:
        self.id = f"exp-{uid()}"
        self.merchant = f"merchant.{self.id}@shop.example"
        self.expire_after = expire_after

    def envelope(self, **overrides: Any) -> dict[str, Any]:
        return {"event_id": c.new_event_id(), "occurred_at": c.now(), "shop_id": self.id, **overrides}

    async def open(self, producer: StorefrontProducer, mug: int) -> None:
        extra = {"expire_unpaid_after_seconds": self.expire_after} if self.expire_after else {}
        await producer.send(c.ShopSettings(**self.envelope(), name=f"Shop {self.id}", merchant_email=self.merchant,
                                           **extra))
        await producer.send(c.StockAdjusted(**self.envelope(), sku="MUG", set_to=mug))

    def order(self, order_id: str, *, method: str = "gateway", age_seconds: float = 0, who: str = "ada",
              quantity: int = 1) -> c.OrderPlaced:
        """An order placed `age_seconds` ago (its occurred_at is its placed_at)."""
        return c.OrderPlaced(
            **self.envelope(occurred_at=c.now() - timedelta(seconds=age_seconds)), order_id=order_id,
            cart_id=f"cart-{order_id}", customer=c.Customer(email=f"{who}.{self.id}@customer.example", name=who),
            items=[c.OrderItem(sku="MUG", name="Mug", quantity=quantity, unit_price_cents=900)],
            total_cents=900 * quantity, currency="EUR",
            payment=c.Payment(method=method, provider="paypal" if method == "gateway" else "cheque"))

    def payment(self, order: c.OrderPlaced, payment_id: str) -> c.PaymentConfirmed:
        return c.PaymentConfirmed(**self.envelope(), order_id=order.order_id, payment_id=payment_id,
                                  amount_cents=order.total_cents, currency=order.currency, provider="paypal")


async def statuses(pg: asyncpg.Connection, shop: Shop) -> dict[str, str]:
    rows = await pg.fetch("SELECT order_id, status FROM orders.orders WHERE shop_id = $1", shop.id)
    return {r["order_id"]: r["status"] for r in rows}


async def stock(inventory: httpx.AsyncClient, shop: Shop) -> int | None:
    r = await inventory.get(f"/stock/{shop.id}/MUG")
    return r.json()["available"] if r.status_code == 200 else None


async def notify_applied(pg: asyncpg.Connection, prefix: str, records: list[Any]) -> bool:
    """notify's stored position is past each of these order.status records: it has decided their mails."""
    rows = await pg.fetch("SELECT partition, next_offset FROM notify.consumer_positions "
                          "WHERE consumer = $1 AND topic = $2", f"{prefix}-notify", topics.ORDER_STATUS.name)
    done = {r["partition"]: r["next_offset"] for r in rows}
    return all(done.get(r.partition, 0) > r.offset for r in records)


async def test_unpaid_orders_expire_once_across_two_workers_and_a_sigkill_with_no_stock_and_no_mail(
        stack: dict[str, Any], producer: StorefrontProducer, pg: asyncpg.Connection, mailsink: Any,
        kafka_bootstrap: str) -> None:
    shop = Shop()
    await shop.open(producer, mug=10)
    tail = await TopicTail(kafka_bootstrap, topics.ORDER_STATUS.name).start()
    try:
        async with client(stack["inventory"]) as inventory:
            await async_wait_for(lambda: stock(inventory, shop), timeout=TIMEOUT, message="the shop's stock")
            assert await stock(inventory, shop) == 10
            # wave 1: placed a minute ago, due at once; plus a manual (cheque) order placed as long ago, committed
            # at once: it never expires, takes its stock and is mailed (the checks below are not vacuous)
            wave1 = [shop.order(f"w1-{i}", age_seconds=60) for i in range(12)]
            for order in [*wave1, shop.order("cheque-1", method="manual", age_seconds=60)]:
                await producer.send_soon(order)
            await producer.flush()

            async def some_expired() -> bool:
                return "canceled" in (await statuses(pg, shop)).values()

            await async_wait_for(some_expired, timeout=TIMEOUT, message="the first expiries")

            async def committed() -> bool:
                return (await statuses(pg, shop)).get("cheque-1") == "pending"

            await async_wait_for(committed, timeout=TIMEOUT, message="the manual order committed")
            stack["orders-0"].kill()  # SIGKILL mid-stream: the other worker's sweep goes on alone
            # wave 2: placed now, due in EXPIRE_AFTER seconds, while orders-0 is down and after it restarts
            wave2 = [shop.order(f"w2-{i}") for i in range(12)]
            for order in wave2:
                await producer.send_soon(order)
            await producer.flush()
            stack["orders-0"].start().wait_ready(timeout=90)
            expiring = {o.order_id for o in [*wave1, *wave2]}

            async def all_expired() -> dict[str, str] | None:
                found = await statuses(pg, shop)
                return found if all(found.get(i) == "canceled" for i in expiring) else None

            found = await async_wait_for(all_expired, timeout=TIMEOUT, message="every unpaid order expired")
            assert found["cheque-1"] == "pending"  # committed: never expires

            # once each: one history row (seq 2) and one order.status event per order, as the system, "expired"
            history = await pg.fetch("SELECT order_id, seq, to_status, changed_by, reason FROM orders.order_history "
                                     "WHERE shop_id = $1 AND order_id = ANY($2::text[]) ORDER BY order_id, seq",
                                     shop.id, list(expiring))
            assert [(h["seq"], h["to_status"]) for h in history] == [(1, "incomplete"), (2, "canceled")] * len(
                expiring)
            assert {(h["changed_by"], h["reason"]) for h in history if h["seq"] == 2} == {("system", "expired")}

            def canceled_events(records: list[Any]) -> list[Any]:
                return [r for r in records if (v := json.loads(r.value))["shop_id"] == shop.id
                        and v["order_id"] in expiring and v["status"] == "canceled"]

            # every expired order's event, not a count: a row the relay published again after the kill counts twice
            events = await tail.until(lambda rs: {json.loads(r.value)["order_id"] for r in canceled_events(rs)}
                                      == expiring, "an order.status for every expiry")
            # the relay may publish a row again after a kill (at least once): the same event id, never a second one
            by_order: dict[str, set[str]] = {}
            for r in canceled_events(events):
                by_order.setdefault(json.loads(r.value)["order_id"], set()).add(json.loads(r.value)["event_id"])
            assert set(by_order) == expiring and all(len(event_ids) == 1 for event_ids in by_order.values())
            assert all(json.loads(r.value)["reason"] == "expired" and json.loads(r.value)["changed_by"] == "system"
                       for r in canceled_events(events))

            # inventory closed each expired order without moving stock; only the cheque order took one mug
            async def inventory_closed() -> bool:
                n = await pg.fetchval("SELECT count(*) FROM inventory.order_stock WHERE shop_id = $1 "
                                      "AND order_id = ANY($2::text[]) AND state = 'closed'", shop.id, list(expiring))
                return n == len(expiring)

            await async_wait_for(inventory_closed, timeout=TIMEOUT, message="inventory closed every expired order")
            # the cheque order's deduction may land after the expiries (another partition): wait for it
            async def one_mug_taken() -> bool:
                return await stock(inventory, shop) == 9

            await async_wait_for(one_mug_taken, timeout=TIMEOUT, message="the cheque order's mug taken")
            assert await pg.fetchval("SELECT count(*) FROM inventory.stock_moves WHERE shop_id = $1 "
                                     "AND order_id = ANY($2::text[])", shop.id, list(expiring)) == 0

            # notify decided the mails of every expiry: none; the cheque order's two mails went out
            await async_wait_for(lambda: notify_applied(pg, stack["prefix"], canceled_events(events)),
                                 timeout=TIMEOUT, message="notify past every expiry's order.status")
            assert await pg.fetchval("SELECT count(*) FROM notify.mails WHERE ref = ANY($1::text[])",
                                     [f"{shop.id}/{i}" for i in expiring]) == 0
            await async_wait_for(lambda: len(mailsink.messages(to=shop.merchant)) == 1, timeout=TIMEOUT,
                                 message="the cheque order's new-order mail", interval=0.2)
            assert all("cheque-1" in m["subject"] for m in mailsink.messages(to=shop.merchant))  # no alert either
            await async_wait_for(lambda: mailsink.messages(to=f".{shop.id}@customer.example"), timeout=TIMEOUT,
                                 message="the cheque order's confirmation", interval=0.2)
            assert ["cheque-1" in m["subject"] for m in mailsink.messages(to=f".{shop.id}@customer.example")] == [True]
    finally:
        await tail.stop()


async def test_a_payment_after_expiry_flags_the_order_and_mails_the_merchant_once(
        stack: dict[str, Any], producer: StorefrontProducer, pg: asyncpg.Connection, mailsink: Any) -> None:
    shop = Shop()
    await shop.open(producer, mug=5)
    order = shop.order("late-1", age_seconds=60)
    await producer.send(order)
    async with client(stack["orders-1"]) as api:
        async def expired() -> dict[str, Any] | None:
            r = await api.get(f"/orders/{order.order_id}", params={"shop_id": shop.id})
            return r.json() if r.status_code == 200 and r.json()["status"] == "canceled" else None

        view = await async_wait_for(expired, timeout=TIMEOUT, message="the order expired")
        assert view["flags"]["payment_after_cancel"] is False
        late = shop.payment(order, "pay-late")
        await producer.send(late)
        await producer.send(late)  # the gateway sends it twice
        await producer.send(shop.payment(order, "pay-late-2"))  # and another payment for the same order

        async def flagged() -> dict[str, Any] | None:
            r = await api.get(f"/orders/{order.order_id}", params={"shop_id": shop.id})
            body = r.json()
            settled = [p for p in body["payments"] if p["outcome"]]
            return body if body["flags"]["payment_after_cancel"] and len(settled) == 2 else None

        view = await async_wait_for(flagged, timeout=TIMEOUT, message="the late payments recorded and flagged")
        assert (view["status"], view["payment_status"]) == ("canceled", "incomplete")  # never reopened
        assert {p["payment_id"] for p in view["payments"]} == {"pay-late", "pay-late-2"}
        assert all(not p["applied"] and p["outcome"].startswith("refused: ") for p in view["payments"])
        assert [h["to_status"] for h in view["history"]] == ["incomplete", "canceled"]

        listed = await api.get("/orders", params={"tab": "closed", "flag": "payment_after_cancel",
                                                  "shop_id": shop.id})
        assert [o["order_id"] for o in listed.json()["orders"]] == ["late-1"]
        assert listed.json()["orders"][0]["flags"]["payment_after_cancel"] is True

    alerts = await async_wait_for(lambda: mailsink.messages(to=shop.merchant), timeout=TIMEOUT,
                                  message="the merchant's alert", interval=0.2)
    assert len(alerts) == 1 and "late-1" in alerts[0]["subject"] and "needs your attention" in alerts[0]["subject"]
    assert "A payment arrived for a canceled order" in alerts[0]["text"]
    # one order.flagged staged for the order, one mail row: the second and third payment raised nothing new
    assert await pg.fetchval("SELECT count(*) FROM orders.outbox WHERE topic = 'order.flagged' "
                             "AND position($1 in convert_from(value, 'UTF8')) > 0", shop.id) == 1
    assert await pg.fetchval("SELECT count(*) FROM notify.mails WHERE ref = $1",
                             f"{shop.id}/late-1") == 1
    assert len(mailsink.messages(to=shop.merchant)) == 1


async def test_search_by_payment_status_combines_with_tab_q_and_flag(
        stack: dict[str, Any], producer: StorefrontProducer) -> None:
    shop = Shop(expire_after=None)  # the default 7 days: nothing here expires
    await shop.open(producer, mug=50)
    cheque = shop.order("m-1", method="manual", who="cleo")
    cheque_paid = shop.order("m-2", method="manual", who="dan")
    gateway_paid = shop.order("g-1", who="eve")
    unpaid = shop.order("g-2", who="finn")
    for order in (cheque, cheque_paid, gateway_paid, unpaid):
        await producer.send(order)
    await producer.send(shop.payment(gateway_paid, "pay-g1"))
    async with client(stack["orders-1"]) as api:
        async def listed(**params: str) -> list[str]:
            r = await api.get("/orders", params={"shop_id": shop.id, **params})
            assert r.status_code == 200, r.text
            return sorted(o["order_id"] for o in r.json()["orders"])

        # each order may sit on its own partition: wait for all four, not the first one stored (a gateway
        # order waits in "incomplete" until its payment)
        async def all_stored() -> bool:
            stored = set(await listed(tab="pending")) | set(await listed(tab="incomplete"))
            return stored == {"g-1", "g-2", "m-1", "m-2"}

        await async_wait_for(all_stored, timeout=TIMEOUT, message="all four orders stored")
        r = await api.post("/orders/m-2/payment", params={"shop_id": shop.id}, json={"status": "paid"})
        assert r.status_code == 200, r.text

        async def ready() -> bool:
            return await listed(tab="pending", payment_status="paid") == ["g-1", "m-2"]

        await async_wait_for(ready, timeout=TIMEOUT, message="two paid orders")
        assert await listed(tab="pending", payment_status="awaiting") == ["m-1"]
        assert await listed(tab="pending", payment_status="awaiting", q="cleo") == ["m-1"]
        assert await listed(tab="pending", payment_status="awaiting", q="dan") == []
        assert await listed(tab="incomplete", payment_status="incomplete") == ["g-2"]
        assert await listed(tab="pending", payment_status="incomplete") == []
        assert await listed(tab="pending", payment_status="paid", flag="payment_mismatch") == []
        r = await api.get("/orders", params={"shop_id": shop.id, "payment_status": "cheque-ish"})
        assert r.status_code == 400 and "payment_status must be one of" in r.json()["error"]
        r = await api.get("/orders", params={"shop_id": shop.id, "flag": "bogus"})
        assert r.status_code == 400 and "flag must be one of" in r.json()["error"]
        counts = (await api.get("/orders", params={"shop_id": shop.id, "payment_status": "paid"})).json()["counts"]
        assert counts == {"pending": 2, "closed": 0, "incomplete": 0}

    # the back office's orders page: the same filters, kept in the tab links
    async with httpx.AsyncClient(base_url=stack["orders-1"].url, timeout=10) as pages:
        signed_in = await pages.post("/backoffice/login", data={"token": stack["orders-1"].token})
        assert signed_in.status_code == 303, signed_in.text
        page = await pages.get("/backoffice/orders", params={"tab": "pending", "payment_status": "awaiting",
                                                              "shop_id": shop.id})
        assert page.status_code == 200
        assert ">m-1</a>" in page.text and ">m-2</a>" not in page.text and ">g-1</a>" not in page.text
        assert '<option value="awaiting" selected>' in page.text
        assert "payment_status=awaiting" in page.text.split('data-tab="closed"')[0].rsplit("<a ", 1)[1]
        page = await pages.get("/backoffice/orders", params={"tab": "pending", "payment_status": "paid",
                                                              "shop_id": shop.id})
        assert ">m-2</a>" in page.text and ">g-1</a>" in page.text and ">m-1</a>" not in page.text
