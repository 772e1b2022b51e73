"""Recovery reminders end to end on the real broker, database and mail sink (issue 16): one mail per reminder, none
once paid, none without consent when the shop requires it, none after an unsubscribe (GET confirms, form POST and
RFC 8058 one-click POST record it), none again on a replay; the recovery link of an unpaid gateway order resumes it,
and once that order was canceled or expired it offers the order's items again, with no further reminder.

One cart worker and one notify worker for the module, both starting at the current end of their topics. Each test
uses fresh shops, carts and e-mail addresses. Delays are 1-8 s, so each test takes ~10-20 s.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

import contracts as c
from contracts.producer import StorefrontProducer
from tests.helpers import async_wait_for
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

PARTITIONS = 8
CART_INPUTS = ["cart.updated", "checkout.started", "order.placed", "order.status", "inventory.levels",
               "shop.settings", "payment.confirmed"]
NOTIFY_INPUTS = ["order.status", "inventory.deductions", "checkout.abandoned", "order.message", "shop.settings"]
ITEMS = [c.CartItem(sku="MUG-1", quantity=2, unit_price_cents=1250, name="Mug")]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def envelope(shop_id: str, **shift: float) -> dict:
    return {"event_id": c.new_event_id(), "occurred_at": c.now() + timedelta(**shift), "shop_id": shop_id}


def settings(shop_id: str, reminders: list[int], requires_consent: bool = False) -> c.ShopSettings:
    return c.ShopSettings(**envelope(shop_id), name="Chez Ada", merchant_email=f"{shop_id}@example.com",
                          recovery_reminders_seconds=reminders, recovery_requires_consent=requires_consent)


def checkout(shop_id: str, cart_id: str, email: str, consent: bool = True) -> c.CheckoutStarted:
    return c.CheckoutStarted(**envelope(shop_id), cart_id=cart_id, customer=c.Customer(email=email, name="Ada"),
                             items=ITEMS, total_cents=2500, currency="EUR", marketing_consent=consent)


def order(started: c.CheckoutStarted, method: str = "gateway") -> c.OrderPlaced:
    return c.OrderPlaced(**envelope(started.shop_id), order_id=uid("order"), cart_id=started.cart_id,
                         customer=started.customer,
                         items=[c.OrderItem(sku="MUG-1", name="Mug", quantity=1, unit_price_cents=1250)],
                         total_cents=1250, currency="EUR", payment=c.Payment(method=method, provider="paypal"))


def status(placed: c.OrderPlaced, st: c.OrderStatus, pay: c.PaymentStatus, reason: str | None = None,
           by: c.ChangedBy = c.ChangedBy.SYSTEM, **shift: float) -> c.OrderStatusChanged:
    return c.OrderStatusChanged(**envelope(placed.shop_id, **shift), order_id=placed.order_id,
                                cart_id=placed.cart_id, status=st, payment_status=pay, changed_by=by, reason=reason,
                                customer=placed.customer, items=placed.items, total_cents=placed.total_cents,
                                currency=placed.currency, payment=placed.payment)


async def topic_ends(bootstrap: str, names: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return await consumer.end_offsets([TopicPartition(t, p) for t in names for p in range(PARTITIONS)])
    finally:
        await consumer.stop()


async def commit_group_at(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()


async def start_worker(service: str, bootstrap: str, database_url: str, path: Path, offsets: dict, index: int = 0,
                       **env: str) -> WorkerProcess:
    """A worker of a fresh consumer group that starts at `offsets` (the broker is shared with other tests)."""
    prefix = uid("remind")
    await commit_group_at(bootstrap, f"{prefix}-{service}", offsets)
    worker = make_worker(service, worker_env(bootstrap, database_url, app_prefix=prefix, **env), path, index)
    worker.env["PUBLIC_CART_URL"] = worker.url  # the unsubscribe links point at this worker
    return worker.start().wait_ready(timeout=90)


class Stack:
    def __init__(self, cart: WorkerProcess, notify: WorkerProcess, cart_from: dict, notify_from: dict) -> None:
        self.cart, self.notify, self.cart_from, self.notify_from = cart, notify, cart_from, notify_from


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, database_url: str, mailsink, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("reminders")
    cart_from = await topic_ends(kafka_bootstrap, CART_INPUTS)
    notify_from = await topic_ends(kafka_bootstrap, NOTIFY_INPUTS)
    cart = await start_worker("cart", kafka_bootstrap, database_url, path, cart_from, ABANDON_SCAN_MS="200",
                              PUBLIC_STORE_URL="https://shop.test")
    notify = await start_worker("notify", kafka_bootstrap, database_url, path, notify_from, **mailsink.env)
    yield Stack(cart, notify, cart_from, notify_from)
    cart.kill()
    notify.kill()


async def send(bootstrap: str, *events: c.Event) -> None:
    async with StorefrontProducer(bootstrap) as producer:
        for fut in [await producer.send_soon(e) for e in events]:
            await fut


RECOVERY = "your cart is waiting"


def recovery_mails(mailsink, address: str) -> list[dict]:
    """The recovery mails to `address` (a paid order also brings its confirmation)."""
    return mailsink.messages(to=address, subject=RECOVERY)


async def mails_to(mailsink, address: str, count: int, timeout: float = 30.0) -> list[dict]:
    async def enough() -> list[dict] | None:
        found = recovery_mails(mailsink, address)
        return found if len(found) >= count else None

    return await async_wait_for(enough, timeout=timeout, message=f"{count} mail(s) to {address}", interval=0.2)


async def watches(database_url: str, shop_id: str) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT * FROM cart.checkouts WHERE shop_id = $1", shop_id)
        return {r["cart_id"]: r for r in rows}
    finally:
        await conn.close()


async def relayed(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM cart.outbox WHERE published_at IS NULL") == 0
    finally:
        await conn.close()


async def settings_known(database_url: str, shop_id: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT true FROM cart.shop_settings WHERE shop_id = $1", shop_id) or False
    finally:
        await conn.close()


async def given_shop(bootstrap: str, database_url: str, shop: c.ShopSettings) -> None:
    await send(bootstrap, shop)
    await async_wait_for(lambda: settings_known(database_url, shop.shop_id), timeout=30, message="settings known")


def detections(worker: WorkerProcess) -> dict[str, float]:
    """orderflow_cart_abandon_detections_total by source, from the worker's /metrics."""
    text = httpx.get(f"{worker.url}/metrics", timeout=5).text
    found = re.findall(r'^orderflow_cart_abandon_detections_total\{source="(\w+)"\} (\S+)$', text, re.MULTILINE)
    return {source: float(value) for source, value in found}


def header(mail: dict, name: str) -> list[str]:
    return [v for k, vs in mail["headers"].items() if k.lower() == name.lower() for v in vs]


def payment(placed: c.OrderPlaced) -> c.PaymentConfirmed:
    return c.PaymentConfirmed(**envelope(placed.shop_id), order_id=placed.order_id, payment_id=uid("pay"),
                              amount_cents=placed.total_cents, currency=placed.currency, provider="paypal")


async def test_a_payment_orders_has_not_applied_yet_stops_the_reminders(
        stack: Stack, kafka_bootstrap: str, database_url: str, mailsink) -> None:
    """No orders worker runs here, as when orders is down or far behind: the gateway's payment.confirmed is never
    turned into order.status paid. Cart reads the payment itself, so the paying customer gets no reminder, while
    an unpaid order of the same shop, placed with it, gets its reminder (the proof the window has passed)."""
    shop = settings(uid("shop"), [2])
    await given_shop(kafka_bootstrap, database_url, shop)
    paying, unpaid = f"{uid('paying')}@example.com", f"{uid('unpaid')}@example.com"
    paying_checkout, unpaid_checkout = (checkout(shop.shop_id, uid("cart"), paying),
                                        checkout(shop.shop_id, uid("cart"), unpaid))
    paying_order, unpaid_order = order(paying_checkout), order(unpaid_checkout)
    await send(kafka_bootstrap, paying_checkout, unpaid_checkout, paying_order, unpaid_order, payment(paying_order))

    await mails_to(mailsink, unpaid, 1)

    async def decided() -> asyncpg.Record | None:
        row = (await watches(database_url, shop.shop_id)).get(paying_checkout.cart_id)
        return row if row is not None and row["state"] != "open" else None

    row = await async_wait_for(decided, timeout=30, message="the paying customer's watch decided", interval=0.2)
    assert (row["state"], row["reminders_sent"], row["reminders_stopped"], row["abandoned_at"]) == (
        "paid", 0, "paid", None)
    assert recovery_mails(mailsink, paying) == []


async def test_two_reminders_each_once_and_payment_between_them_stops_the_second(
        stack: Stack, kafka_bootstrap: str, database_url: str, mailsink) -> None:
    shop = settings(uid("shop"), [1, 8])
    await given_shop(kafka_bootstrap, database_url, shop)
    kept, paid = f"{uid('kept')}@example.com", f"{uid('paid')}@example.com"
    kept_checkout, paid_checkout = (checkout(shop.shop_id, uid("cart"), kept),
                                    checkout(shop.shop_id, uid("cart"), paid))
    placed = order(paid_checkout)
    before = detections(stack.cart)
    await send(kafka_bootstrap, kept_checkout, paid_checkout, placed)

    [first] = await mails_to(mailsink, paid, 1)
    assert "your cart is waiting" in first["subject"]
    await send(kafka_bootstrap, status(placed, c.OrderStatus.PENDING, c.PaymentStatus.PAID))

    both = await mails_to(mailsink, kept, 2)  # the second reminder, due when the paid one's would have been
    assert len({m["message_id"] for m in both}) == 2
    for mail in both:
        [link] = header(mail, "List-Unsubscribe")
        assert link.startswith(f"<{stack.cart.url}/unsubscribe?") and link.endswith(">")
        assert header(mail, "List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
        assert link[1:-1] in mail["text"]

    async def decided() -> dict | None:
        rows = await watches(database_url, shop.shop_id)
        return rows if {r["state"] for r in rows.values()} == {"abandoned", "paid"} else None

    rows = await async_wait_for(decided, timeout=30, message="both watches decided")
    assert rows[kept_checkout.cart_id]["reminders_sent"] == 2
    assert rows[paid_checkout.cart_id]["reminders_sent"] == 1
    await async_wait_for(lambda: relayed(database_url), timeout=30, message="outbox relayed")
    assert len(recovery_mails(mailsink, paid)) == 1, "no reminder after the order was paid"
    assert len(recovery_mails(mailsink, kept)) == 2
    after = detections(stack.cart)
    by_table = sum(after.get(s, 0) - before.get(s, 0) for s in ("window", "sweep"))
    assert by_table >= 3, f"the windowed table proposed the three reminders: {before} -> {after}"
    assert after.get("safety_net", 0) == before.get("safety_net", 0), f"the safety net had nothing to do: {after}"


async def test_no_mail_without_consent_when_the_shop_requires_it(
        stack: Stack, kafka_bootstrap: str, database_url: str, mailsink) -> None:
    shop = settings(uid("shop"), [1], requires_consent=True)
    await given_shop(kafka_bootstrap, database_url, shop)
    refused, agreed = f"{uid('no')}@example.com", f"{uid('yes')}@example.com"
    silent = checkout(shop.shop_id, uid("cart"), refused, consent=False)
    await send(kafka_bootstrap, silent, checkout(shop.shop_id, uid("cart"), agreed, consent=True))

    await mails_to(mailsink, agreed, 1)

    async def stopped() -> asyncpg.Record | None:
        row = (await watches(database_url, shop.shop_id)).get(silent.cart_id)
        return row if row is not None and row["state"] == "abandoned" else None

    row = await async_wait_for(stopped, timeout=30, message="the watch without consent decided")
    assert (row["reminders_sent"], row["reminders_stopped"]) == (0, "no_consent")
    await async_wait_for(lambda: relayed(database_url), timeout=30, message="outbox relayed")
    assert mailsink.messages(to=refused) == []


async def test_unsubscribe_by_page_and_by_one_click_stops_the_next_reminder(
        stack: Stack, kafka_bootstrap: str, database_url: str, mailsink) -> None:
    shop = settings(uid("shop"), [1, 8])
    await given_shop(kafka_bootstrap, database_url, shop)
    by_page, one_click, control = (f"{uid(n)}@example.com" for n in ("page", "click", "control"))
    carts = {email: checkout(shop.shop_id, uid("cart"), email) for email in (by_page, one_click, control)}
    await send(kafka_bootstrap, *carts.values())

    [page_mail] = await mails_to(mailsink, by_page, 1)
    [click_mail] = await mails_to(mailsink, one_click, 1)
    page_link = next(word for word in page_mail["text"].split() if "/unsubscribe?" in word)
    [click_header] = header(click_mail, "List-Unsubscribe")
    click_link = click_header[1:-1]

    async with httpx.AsyncClient(timeout=10) as http:
        shown = await http.get(page_link)
        assert shown.status_code == 200 and 'method="post"' in shown.text and by_page in shown.text
        asked = await http.get(page_link, headers={"Accept": "application/json"})
        assert asked.json()["unsubscribed"] is False, "showing the page (a link scanner) unsubscribes nobody"
        confirmed = await http.post(page_link, data={"confirm": "yes"})
        assert confirmed.status_code == 200 and "no more" in confirmed.text
        one = await http.post(click_link, data={"List-Unsubscribe": "One-Click"})
        assert one.status_code == 200 and one.json()["unsubscribed"] is True
        again = await http.post(click_link, data={"List-Unsubscribe": "One-Click"})
        assert again.status_code == 200, "a repeated one-click POST answers the same"
        forged = await http.post(click_link.replace(one_click.split("@")[0], "someone-else"),
                                 data={"List-Unsubscribe": "One-Click"})
        assert forged.status_code == 401

    await mails_to(mailsink, control, 2)  # the second reminder was due for all three at the same time

    async def decided() -> dict | None:
        rows = await watches(database_url, shop.shop_id)
        return rows if all(r["state"] == "abandoned" for r in rows.values()) and len(rows) == 3 else None

    rows = await async_wait_for(decided, timeout=30, message="the three watches decided")
    for email in (by_page, one_click):
        assert rows[carts[email].cart_id]["reminders_stopped"] == "unsubscribed"
        assert len(recovery_mails(mailsink, email)) == 1, f"no second reminder to {email}"
    conn = await asyncpg.connect(database_url)
    try:
        recorded = await conn.fetch("SELECT email, via FROM cart.unsubscribes WHERE shop_id = $1 ORDER BY via",
                                    shop.shop_id)
    finally:
        await conn.close()
    assert [(r["email"], r["via"]) for r in recorded] == [(by_page, "form"), (one_click, "one-click")]


def link_query(mail: dict) -> dict[str, str]:
    link = next(word for word in mail["text"].split() if "/cart/" in word)
    return {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}


async def test_the_recovery_link_of_an_unpaid_gateway_order_resumes_its_items_and_payment(
        stack: Stack, kafka_bootstrap: str, database_url: str, mailsink) -> None:
    shop = settings(uid("shop"), [1])
    await given_shop(kafka_bootstrap, database_url, shop)
    email = f"{uid('unpaid')}@example.com"
    started = checkout(shop.shop_id, uid("cart"), email)
    placed = order(started)
    plain = checkout(shop.shop_id, uid("cart"), f"{uid('cart')}@example.com")
    await send(kafka_bootstrap, c.CartUpdated(**envelope(shop.shop_id, seconds=-1), cart_id=started.cart_id,
                                              items=ITEMS),
               c.CartUpdated(**envelope(shop.shop_id, seconds=-1), cart_id=plain.cart_id, items=ITEMS),
               started, plain, placed, status(placed, c.OrderStatus.INCOMPLETE, c.PaymentStatus.INCOMPLETE))

    [mail] = await mails_to(mailsink, email, 1)
    link = next(word for word in mail["text"].split() if "/cart/" in word)
    query = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    async with httpx.AsyncClient(base_url=stack.cart.url, timeout=10) as http:
        view = (await http.get(f"/carts/{started.cart_id}", params=query)).json()
        assert view["resume"] == {"kind": "payment", "order_id": placed.order_id}
        assert [(i["sku"], i["quantity_asked"]) for i in view["items"]] == [("MUG-1", 1)], "the order's items"
        assert "customer" not in view

        [plain_mail] = await mails_to(mailsink, plain.customer.email, 1)
        plain_link = next(word for word in plain_mail["text"].split() if "/cart/" in word)
        plain_query = {k: v[0] for k, v in parse_qs(urlsplit(plain_link).query).items()}
        plain_view = (await http.get(f"/carts/{plain.cart_id}", params=plain_query)).json()
        assert plain_view["resume"] == {"kind": "cart"}
        assert [(i["sku"], i["quantity_asked"]) for i in plain_view["items"]] == [("MUG-1", 2)]

    await send(kafka_bootstrap, status(placed, c.OrderStatus.PENDING, c.PaymentStatus.PAID, seconds=1))

    async def paid_view() -> dict | None:
        async with httpx.AsyncClient(base_url=stack.cart.url, timeout=10) as http:
            body = (await http.get(f"/carts/{started.cart_id}", params=query)).json()
        return body if "resume" not in body else None

    paid = await async_wait_for(paid_view, timeout=30, message="the paid order no longer resumed")
    assert paid["items"] == [] and paid["status"] == "ordered"

    # The unpaid order canceled (by the customer) or expired (by orders' sweep) before it was paid: its link offers
    # the order's items for a new cart, not a payment the shop refuses, and the second reminder (due 8 s after the
    # checkout) never comes; a control checkout whose order stays unpaid gets its second one meanwhile.
    shop = settings(uid("shop"), [1, 8])
    await given_shop(kafka_bootstrap, database_url, shop)
    ends = {"expired": (c.EXPIRED_REASON, c.ChangedBy.SYSTEM), "canceled": ("changed my mind", c.ChangedBy.CUSTOMER),
            "kept": None}
    started_by = {name: checkout(shop.shop_id, uid("cart"), f"{uid(name)}@example.com") for name in ends}
    placed_by = {name: order(s) for name, s in started_by.items()}
    await send(kafka_bootstrap, *[e for name in ends for e in (
        c.CartUpdated(**envelope(shop.shop_id, seconds=-1), cart_id=started_by[name].cart_id, items=ITEMS),
        started_by[name], placed_by[name],
        status(placed_by[name], c.OrderStatus.INCOMPLETE, c.PaymentStatus.INCOMPLETE))])
    queries = {name: link_query((await mails_to(mailsink, s.customer.email, 1))[0])
               for name, s in started_by.items()}
    await send(kafka_bootstrap, *[status(placed_by[name], c.OrderStatus.CANCELED, c.PaymentStatus.INCOMPLETE,
                                         reason=reason, by=by, seconds=1)
                                  for name, (reason, by) in ((n, e) for n, e in ends.items() if e)])

    async def reorder_view(name: str) -> dict | None:
        async with httpx.AsyncClient(base_url=stack.cart.url, timeout=10) as http:
            body = (await http.get(f"/carts/{started_by[name].cart_id}", params=queries[name])).json()
        return body if body.get("resume", {}).get("kind") == "reorder" else None

    for name in ("expired", "canceled"):
        view = await async_wait_for(lambda name=name: reorder_view(name), timeout=30, message=f"{name}: reorder")
        assert view["resume"] == {"kind": "reorder", "order_id": placed_by[name].order_id, "reason": name}
        assert view["status"] == "ordered" and view["order_id"] == placed_by[name].order_id
        assert [(i["sku"], i["quantity_asked"]) for i in view["items"]] == [("MUG-1", 1)], "the order's items"
        assert "customer" not in view

    await mails_to(mailsink, started_by["kept"].customer.email, 2)  # the second reminder's time has come
    for name in ("expired", "canceled"):
        assert len(recovery_mails(mailsink, started_by[name].customer.email)) == 1, f"{name}: no second reminder"
    rows = await watches(database_url, shop.shop_id)
    assert {name: (rows[s.cart_id]["state"], rows[s.cart_id]["order_closed"], rows[s.cart_id]["reminders_sent"])
            for name, s in started_by.items()} == {
        "expired": ("canceled", "expired", 1), "canceled": ("canceled", "canceled", 1), "kept": ("abandoned", None, 2)}
    async with httpx.AsyncClient(base_url=stack.cart.url, timeout=10) as http:
        kept = (await http.get(f"/carts/{started_by['kept'].cart_id}", params=queries["kept"])).json()
    assert kept["resume"] == {"kind": "payment", "order_id": placed_by["kept"].order_id}


async def test_a_replay_from_the_start_sends_nothing_again(
        stack: Stack, kafka_bootstrap: str, database_url: str, mailsink, tmp_path: Path) -> None:
    shop = settings(uid("shop"), [1, 3])
    await given_shop(kafka_bootstrap, database_url, shop)
    email = f"{uid('replay')}@example.com"
    await send(kafka_bootstrap, checkout(shop.shop_id, uid("cart"), email))
    await mails_to(mailsink, email, 2)
    await async_wait_for(lambda: relayed(database_url), timeout=30, message="outbox relayed")
    before = len(mailsink.messages(subject=RECOVERY))

    # Fresh consumer groups read everything this module's workers read, from where they started.
    cart_ends = {tp: end for tp, end in (await topic_ends(kafka_bootstrap, CART_INPUTS)).items()
                 if end > stack.cart_from.get(tp, 0)}
    notify_ends = {tp: end for tp, end in (await topic_ends(kafka_bootstrap, NOTIFY_INPUTS)).items()
                   if end > stack.notify_from.get(tp, 0)}
    cart = await start_worker("cart", kafka_bootstrap, database_url, tmp_path, stack.cart_from, index=1,
                              ABANDON_SCAN_MS="200", PUBLIC_STORE_URL="https://shop.test")
    notify = await start_worker("notify", kafka_bootstrap, database_url, tmp_path, stack.notify_from, index=1,
                                **mailsink.env)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        async def caught_up() -> bool:
            for worker, ends in ((cart, cart_ends), (notify, notify_ends)):
                group = f"{worker.env['ORDERFLOW_APP_ID_PREFIX']}-{worker.service}"
                committed = await admin.list_consumer_group_offsets(group)
                if any(tp not in committed or committed[tp].offset < end for tp, end in ends.items()):
                    return False
            return True

        await async_wait_for(caught_up, timeout=90, message="the replaying workers to reach the ends", interval=0.5)
        await async_wait_for(lambda: relayed(database_url), timeout=30, message="outbox relayed")
    finally:
        await admin.close()
        cart.kill()
        notify.kill()
    assert len(recovery_mails(mailsink, email)) == 2
    assert len(mailsink.messages(subject=RECOVERY)) == before
