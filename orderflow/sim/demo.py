"""`orderflow demo`: the seeds' story end to end on a running stack, in under a minute, with a report of every rule.

Three customers of one fresh shop (abandon delay a few seconds):
1. Alice fills a cart and leaves; a SKU in it runs out; she returns and finds the cart, that item at quantity 0;
   she pays by PayPal and the gateway confirms twice.
2. Bob places a PayPal order and never pays: incomplete, no stock moved, no mail; then one recovery mail.
3. Carol pays by bank transfer: stock at once, awaiting payment; the merchant marks it paid twice, then processed
   and delivered.
4. A shop with two recovery reminders: Erin's second one is stopped by her payment, Frank's by his one-click
   unsubscribe (RFC 8058's POST to the mail's List-Unsubscribe link); Gina, who does neither, gets both.
5. A twin shop reuses the first shop's ids (shops are tenants: ids are unique within a shop only): Dave's order
   carries Alice's order id, his cart her cart id, the SKUs are the same names, and the twin's gateway confirms a
   payment for Bob's order id. The twin's order and stock are its own; nothing of the first shop changes.

Connection settings come from the environment (`eval $(orderflow env)`), else from the local stack's state file.
Every wait polls a condition with a deadline; a rule that does not hold is reported, never hidden; exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiokafka.errors import KafkaError

from contracts import (
    CartCustomer,
    CartItem,
    CartUpdated,
    CheckoutStarted,
    Customer,
    OrderItem,
    OrderPlaced,
    Payment,
    PaymentConfirmed,
    ShopSettings,
    StockAdjusted,
    new_event_id,
    now,
)
from contracts.producer import StorefrontProducer
from orderflow.infra.mailbox import Mailbox, open_mailbox
from orderflow.ops.broker import options

ABANDON_AFTER_SECONDS = 3
REMINDERS = (3, 12)
"""The reminder shop's recovery_reminders_seconds."""
WAIT = 45.0
"""How long each rule waits for what it checks; a healthy stack answers in a second or two. 25 s was once too short
on a loaded CI machine (carol's status mails came later, cause not found), so a rule fails only on a long outage."""
PRICES = {"mug": 1200, "tee": 1900, "poster": 900}
NAMES = {"mug": "Mug", "tee": "T-shirt", "poster": "Poster"}
INITIAL_STOCK = {"mug": 10, "tee": 5, "poster": 3}
ENV_NAMES = ("KAFKA_BOOTSTRAP_SERVERS", "MAILBOX_URL", "ORDERS_URL", "CART_URL", "INVENTORY_URL", "BACKOFFICE_TOKEN")


class DemoError(RuntimeError):
    """The stack is not there or not answering: one line for the operator."""


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    orders: str
    cart: str
    inventory: str
    mailbox: str
    token: str

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Endpoints:
        env = dict(os.environ if env is None else env)
        missing = [n for n in ENV_NAMES if not env.get(n)]
        if missing:
            from orderflow import stack
            from orderflow.infra.ports import InfraError

            try:
                env = {**stack.env_vars(), **{k: v for k, v in env.items() if v}}
            except InfraError as exc:
                raise DemoError(f"set {', '.join(missing)} (eval $(orderflow env)) or run `orderflow up`: {exc}") \
                    from None
            missing = [n for n in ENV_NAMES if not env.get(n)]
            if missing:
                raise DemoError(f"missing {', '.join(missing)}: is every service and the mail sink running?")
        return cls(env["KAFKA_BOOTSTRAP_SERVERS"], env["ORDERS_URL"].rstrip("/"), env["CART_URL"].rstrip("/"),
                   env["INVENTORY_URL"].rstrip("/"), env["MAILBOX_URL"].rstrip("/"), env["BACKOFFICE_TOKEN"])


@dataclass
class Rule:
    name: str
    held: bool
    detail: str = ""


@dataclass
class Story:
    """One run's ids and what it observed."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    rules: list[Rule] = field(default_factory=list)
    stock_before: dict[str, int] = field(default_factory=dict)
    stock_after: dict[str, int] = field(default_factory=dict)
    say: Callable[[str], None] = print

    twin: bool = False
    """The twin shop of a run: same tag, so the same order, cart and payment ids and SKU names."""

    @property
    def shop_id(self) -> str:
        return f"demo-{self.tag}-twin" if self.twin else f"demo-{self.tag}"

    def email(self, who: str) -> str:
        return f"{who}.{self.tag}@demo.example"

    def check(self, name: str, held: bool, detail: str = "") -> bool:
        self.rules.append(Rule(name, bool(held), detail))
        self.say(f"  {'ok  ' if held else 'FAIL'} {name}" + (f" ({detail})" if detail and not held else ""))
        return bool(held)


async def poll(fn: Callable[[], Awaitable[Any]], timeout: float = WAIT, interval: float = 0.1) -> Any:
    """The first truthy value of `fn()` within `timeout` seconds, else the last (falsy) one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await fn()
        except httpx.HTTPError:
            value = None
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)  # polling interval of a deadline loop


class Demo:
    def __init__(self, ep: Endpoints, producer: StorefrontProducer, http: httpx.AsyncClient, story: Story) -> None:
        self.ep, self.producer, self.http, self.story = ep, producer, http, story
        self.auth = {"Authorization": f"Bearer {ep.token}"}
        self.mailbox: Mailbox | None = None

    # --- small helpers ---------------------------------------------------------------------------------------

    def _env(self) -> dict[str, Any]:
        return {"event_id": new_event_id(), "occurred_at": now(), "shop_id": self.story.shop_id}

    def _sku(self, name: str) -> str:
        return f"{name}-{self.story.tag}"

    async def stock(self, name: str) -> int | None:
        r = await self.http.get(f"{self.ep.inventory}/stock/{self.story.shop_id}/{self._sku(name)}",
                                headers=self.auth)
        return r.json()["available"] if r.status_code == 200 else None

    async def stock_is(self, name: str, value: int, timeout: float = WAIT) -> bool:
        async def check() -> bool:
            return await self.stock(name) == value
        return bool(await poll(check, timeout))

    async def order(self, order_id: str) -> dict | None:
        r = await self.http.get(f"{self.ep.orders}/orders/{order_id}", headers=self.auth,
                                params={"shop_id": self.story.shop_id})
        return r.json() if r.status_code == 200 else None

    async def order_is(self, order_id: str, status: str, payment_status: str) -> dict | None:
        async def check() -> dict | None:
            o = await self.order(order_id)
            return o if o and (o["status"], o["payment_status"]) == (status, payment_status) else None
        return await poll(check)

    async def cart(self, cart_id: str) -> dict | None:
        r = await self.http.get(f"{self.ep.cart}/carts/{cart_id}", headers=self.auth,
                                params={"shop_id": self.story.shop_id})
        return r.json() if r.status_code == 200 else None

    async def mails(self, who: str | None = None) -> list[dict]:
        """Mail to `who` (all of this run's when None), through Mailpit's API or the local sink's alike."""
        if self.mailbox is None:
            self.mailbox = await open_mailbox(self.ep.mailbox, self.http)
        return await self.mailbox.messages(self.story.email(who) if who else self.story.tag)

    def _customer(self, who: str) -> Customer:
        return Customer(email=self.story.email(who), name=who.title(), customer_id=f"{who}-{self.story.tag}")

    def _items(self, lines: dict[str, int]) -> list[CartItem]:
        return [CartItem(sku=self._sku(n), quantity=q, name=NAMES[n], unit_price_cents=PRICES[n])
                for n, q in lines.items()]

    async def cart_updated(self, who: str, cart_id: str, lines: dict[str, int]) -> None:
        await self.producer.send(CartUpdated(**self._env(), cart_id=cart_id,
                                             customer=CartCustomer(**self._customer(who).model_dump()),
                                             items=self._items(lines)))

    async def checkout(self, who: str, cart_id: str, order_id: str, lines: dict[str, int], method: str,
                       provider: str) -> OrderPlaced:
        total = sum(PRICES[n] * q for n, q in lines.items())
        await self.producer.send(CheckoutStarted(**self._env(), cart_id=cart_id, customer=self._customer(who),
                                                 items=self._items(lines), total_cents=total, currency="EUR"))
        placed = OrderPlaced(**self._env(), order_id=order_id, cart_id=cart_id, customer=self._customer(who),
                             items=[OrderItem(sku=self._sku(n), name=NAMES[n], quantity=q,
                                              unit_price_cents=PRICES[n]) for n, q in lines.items()],
                             total_cents=total, currency="EUR", payment=Payment(method=method, provider=provider))
        await self.producer.send(placed)
        return placed

    async def merchant(self, order_id: str, path: str, status: str) -> httpx.Response:
        return await self.http.post(f"{self.ep.orders}/orders/{order_id}/{path}", json={"status": status},
                                    headers=self.auth, params={"shop_id": self.story.shop_id})

    # --- the story ---------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        s = self.story
        s.say(f"shop {s.shop_id}: settings (abandon after {ABANDON_AFTER_SECONDS} s) and stock")
        merchant = s.email("merchant2" if s.twin else "merchant")
        r = await self.http.put(f"{self.ep.orders}/shops/{s.shop_id}", headers=self.auth,
                                json={"name": f"Demo shop {s.shop_id}", "merchant_email": merchant,
                                      "abandon_after_seconds": ABANDON_AFTER_SECONDS,
                                      "ignore_incomplete_orders": True})
        if r.status_code != 200:
            raise DemoError(f"PUT /shops/{s.shop_id} answered {r.status_code}: {r.text[:200]}")
        for name, level in INITIAL_STOCK.items():
            await self.producer.send(StockAdjusted(**self._env(), sku=self._sku(name), set_to=level,
                                                   reason="demo: initial count"))
        for name, level in INITIAL_STOCK.items():
            if not await self.stock_is(name, level):
                raise DemoError(f"inventory never showed {self._sku(name)} = {level} (is the inventory service up?)")
        s.stock_before = dict(INITIAL_STOCK)

    # --- reminders: one stopped by payment, one by unsubscribe -------------------------------------------------

    @property
    def reminder_shop(self) -> str:
        return f"demo-{self.story.tag}-reminders"

    async def reminder_settings(self) -> None:
        """Sent early, so the cart knows the shop's reminders long before its checkouts come."""
        await self.producer.send(ShopSettings(
            event_id=new_event_id(), occurred_at=now(), shop_id=self.reminder_shop,
            name=f"Demo reminders {self.story.tag}", merchant_email=self.story.email("merchant3"),
            recovery_reminders_seconds=list(REMINDERS), manage_stock=False))

    async def recovery_mails(self, who: str) -> list[dict]:
        return [m for m in await self.mails(who) if "cart is waiting" in m["subject"]]

    async def reminders(self) -> None:
        s, shop = self.story, self.reminder_shop
        s.say(f"shop {shop}: recovery reminders {REMINDERS[0]} s and {REMINDERS[1]} s after the checkout")
        env = {"shop_id": shop}
        for who in ("erin", "frank", "gina"):
            await self.producer.send(CheckoutStarted(
                event_id=new_event_id(), occurred_at=now(), **env, cart_id=f"cart-{who}-{s.tag}",
                customer=self._customer(who), items=self._items({"mug": 1}), total_cents=PRICES["mug"],
                currency="EUR"))
        erin_order = OrderPlaced(
            event_id=new_event_id(), occurred_at=now(), **env, order_id=f"order-erin-{s.tag}",
            cart_id=f"cart-erin-{s.tag}", customer=self._customer("erin"),
            items=[OrderItem(sku=self._sku("mug"), name=NAMES["mug"], quantity=1, unit_price_cents=PRICES["mug"])],
            total_cents=PRICES["mug"], currency="EUR", payment=Payment(method="gateway", provider="paypal"))
        await self.producer.send(erin_order)
        s.say("erin (PayPal, not paid yet), frank and gina leave at checkout")

        async def first_ones() -> dict[str, list[dict]] | None:
            found = {who: await self.recovery_mails(who) for who in ("erin", "frank", "gina")}
            return found if all(found.values()) else None
        first = await poll(first_ones, timeout=REMINDERS[0] + WAIT)
        if not s.check("the first reminder reaches erin, frank and gina", bool(first)):
            return
        s.say("erin pays; frank presses his mail client's unsubscribe button (one-click POST)")
        await self.producer.send(PaymentConfirmed(
            event_id=new_event_id(), occurred_at=now(), **env, order_id=erin_order.order_id,
            payment_id=f"pay-erin-{s.tag}", amount_cents=PRICES["mug"], currency="EUR", provider="paypal"))
        link = next((w for w in (first["frank"][0].get("text") or "").split() if "/unsubscribe?" in w), "")
        query = link.split("?", 1)[1] if "?" in link else ""
        r = await self.http.post(f"{self.ep.cart}/unsubscribe?{query}", data={"List-Unsubscribe": "One-Click"})
        s.check("the one-click unsubscribe is recorded", r.status_code == 200, f"{r.status_code} {r.text[:200]}")

        async def gina_twice() -> list[dict] | None:
            mails = await self.recovery_mails("gina")
            return mails if len(mails) >= 2 else None
        s.check(f"gina gets the second reminder {REMINDERS[1]} s after her checkout",
                bool(await poll(gina_twice, timeout=REMINDERS[1] + WAIT)))
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:  # a short quiet period: a late reminder would show up in it
            await asyncio.sleep(0.25)
        counts = {who: len(await self.recovery_mails(who)) for who in ("erin", "frank")}
        s.check("erin's second reminder stopped by her payment", counts["erin"] == 1, f"got {counts['erin']}")
        s.check("frank's second reminder stopped by his unsubscribe", counts["frank"] == 1, f"got {counts['frank']}")

    async def alice(self) -> None:
        s, cart_id, order_id = self.story, f"cart-alice-{self.story.tag}", f"order-alice-{self.story.tag}"
        s.say("alice: fills a cart (2 mugs, 1 poster) and leaves")
        await self.cart_updated("alice", cart_id, {"mug": 2, "poster": 1})
        cart = await poll(lambda: self.cart(cart_id))
        s.check("the cart persists while the customer is away", cart and len(cart.get("items", [])) == 2,
                f"cart: {cart}")
        s.say("merchant: counts the posters: none left")
        await self.producer.send(StockAdjusted(**self._env(), sku=self._sku("poster"), set_to=0,
                                               reason="demo: counted, none left"))

        async def poster_out() -> dict | None:
            c = await self.cart(cart_id)
            lines = {i["sku"]: i for i in (c or {}).get("items", [])}
            line = lines.get(self._sku("poster"))
            return c if line and line["quantity_shown"] == 0 and line.get("message") == "out of stock" else None
        cart = await poll(poster_out)
        s.say("alice: returns; the poster is still in her cart, at quantity 0, out of stock")
        s.check("an out-of-stock item stays in the cart at quantity 0 with 'out of stock'", cart is not None)
        s.say("alice: removes it, checks out and pays by PayPal; the gateway confirms twice")
        await self.cart_updated("alice", cart_id, {"mug": 2})
        await self.checkout("alice", cart_id, order_id, {"mug": 2}, "gateway", "paypal")
        confirmed = PaymentConfirmed(**self._env(), order_id=order_id, payment_id=f"pp-{s.tag}", amount_cents=2400,
                                     currency="EUR", provider="paypal")
        await self.producer.send(confirmed)
        await self.producer.send(confirmed.model_copy(update={"event_id": new_event_id(), "occurred_at": now()}))
        order = await self.order_is(order_id, "pending", "paid")
        s.check("a gateway order becomes pending/paid on its payment", order is not None,
                f"order: {await self.order(order_id)}")
        s.check("stock deducted once despite the duplicated confirmation (mug 10 -> 8)",
                await self.stock_is("mug", 8), f"mug = {await self.stock('mug')}")
        cart = await poll(lambda: self._cart_ordered(cart_id))
        s.check("an order placed from a cart empties it", cart is not None)

    async def _cart_ordered(self, cart_id: str) -> dict | None:
        c = await self.cart(cart_id)
        return c if c and c.get("status") == "ordered" and not c.get("items") else None

    async def bob(self) -> None:
        s, cart_id, order_id = self.story, f"cart-bob-{self.story.tag}", f"order-bob-{self.story.tag}"
        s.say("bob: puts a T-shirt in his cart, orders with iDEAL and closes the gateway page")
        await self.cart_updated("bob", cart_id, {"tee": 1})
        await self.checkout("bob", cart_id, order_id, {"tee": 1}, "gateway", "ideal")
        order = await self.order_is(order_id, "incomplete", "incomplete")
        s.check("an unpaid gateway order is incomplete", order is not None, f"order: {await self.order(order_id)}")
        incomplete = await self.http.get(f"{self.ep.orders}/orders", headers=self.auth,
                                         params={"tab": "incomplete", "shop_id": s.shop_id})
        pending = await self.http.get(f"{self.ep.orders}/orders", headers=self.auth,
                                      params={"tab": "pending", "shop_id": s.shop_id})
        s.check("it is listed only under the incomplete tab",
                order_id in _ids(incomplete) and order_id not in _ids(pending))
        s.check("no stock moved for it (tee stays 5)", await self.stock("tee") == 5, f"tee = {await self.stock('tee')}")
        s.check("no mail for an incomplete order", not await self.mails("bob") and
                not [m for m in await self.mails("merchant") if order_id in m["subject"]])

    async def bob_recovered(self) -> None:
        s = self.story
        mails = await poll(lambda: self.mails("bob"), timeout=ABANDON_AFTER_SECONDS + WAIT)
        s.say(f"bob: {ABANDON_AFTER_SECONDS} s later, a recovery mail")
        s.check("an abandoned checkout yields a recovery mail with a link to the cart",
                bool(mails) and "http" in (mails[0].get("text") or ""), f"mails: {len(mails or [])}")

    async def carol(self) -> None:
        s, cart_id, order_id = self.story, f"cart-carol-{self.story.tag}", f"order-carol-{self.story.tag}"
        s.say("carol: orders 2 T-shirts and pays by bank transfer")
        await self.cart_updated("carol", cart_id, {"tee": 2})
        await self.checkout("carol", cart_id, order_id, {"tee": 2}, "manual", "transfer")
        order = await self.order_is(order_id, "pending", "awaiting")
        s.check("a manual-payment order is pending/awaiting at once", order is not None,
                f"order: {await self.order(order_id)}")
        s.check("its stock is deducted at once (tee 5 -> 3)", await self.stock_is("tee", 3),
                f"tee = {await self.stock('tee')}")
        s.say("merchant: marks it paid, paid again, processed, delivered")
        first, second = await self.merchant(order_id, "payment", "paid"), await self.merchant(order_id, "payment",
                                                                                                "paid")
        s.check("marking paid works; marking it paid again is a no-op",
                first.status_code == 200 and first.json().get("changed") is True
                and second.status_code == 200 and second.json().get("changed") is False,
                f"{first.status_code} {first.text[:120]} / {second.status_code} {second.text[:120]}")
        processed = await self.merchant(order_id, "status", "processed")
        delivered = await self.merchant(order_id, "status", "delivered")
        order = await self.order(order_id)
        s.check("processed then delivered, paid",
                processed.status_code == 200 and delivered.status_code == 200 and order is not None
                and (order["status"], order["payment_status"]) == ("delivered", "paid"),
                f"{processed.status_code} / {delivered.status_code} / {order and order['status']}")
        async def both_mails() -> bool:  # two mails, each sent when its status came: either may arrive first
            return bool(await self._mail_about(order_id, "delivered")) and bool(
                await self._mail_about(order_id, "on its way"))

        s.check("the customer hears it was processed and delivered", bool(await poll(both_mails)))
        s.check("paid and shipped never touch the stock again (tee stays 3)", await self.stock("tee") == 3)

    # --- a French shop and a refund ---------------------------------------------------------------------------

    @property
    def french_shop(self) -> str:
        return f"demo-{self.story.tag}-fr"

    async def french_refund(self) -> None:
        """A French shop: hugo's order of two mugs paid by cheque, then half refunded by the merchant (the same refund
        sent twice); his mails are in French, money as a French reader writes it."""
        s, shop = self.story, self.french_shop
        order_id, params = f"order-hugo-{s.tag}", {"shop_id": self.french_shop}
        s.say(f"shop {shop} (locale fr): hugo pays 2 mugs by cheque; the merchant refunds one, twice by mistake")
        r = await self.http.put(f"{self.ep.orders}/shops/{shop}", headers=self.auth, json={
            "name": f"Boutique {s.tag}", "merchant_email": s.email("marchand"), "locale": "fr",
            "manage_stock": False})
        if r.status_code != 200:
            raise DemoError(f"PUT /shops/{shop} answered {r.status_code}: {r.text[:200]}")
        total = 2 * PRICES["mug"]
        await self.producer.send(OrderPlaced(
            event_id=new_event_id(), occurred_at=now(), shop_id=shop, order_id=order_id,
            cart_id=f"cart-hugo-{s.tag}", customer=self._customer("hugo"),
            items=[OrderItem(sku=self._sku("mug"), name=NAMES["mug"], quantity=2, unit_price_cents=PRICES["mug"])],
            total_cents=total, currency="EUR", payment=Payment(method="manual", provider="cheque"), locale="fr-FR"))

        async def order() -> dict | None:
            got = await self.http.get(f"{self.ep.orders}/orders/{order_id}", headers=self.auth, params=params)
            return got.json() if got.status_code == 200 else None

        await poll(order)
        paid = await self.http.post(f"{self.ep.orders}/orders/{order_id}/payment", json={"status": "paid"},
                                    headers=self.auth, params=params)
        refunds = [await self.http.post(f"{self.ep.orders}/orders/{order_id}/refunds", headers=self.auth,
                                        params=params, json={"refund_id": f"refund-{s.tag}",
                                                             "amount_cents": PRICES["mug"]}) for _ in range(2)]

        async def partially_refunded() -> dict | None:
            o = await order()
            return o if o and o["payment_status"] == "partially_refunded" else None

        o = await poll(partially_refunded)
        s.check("a refund of one mug leaves the paid order partially refunded (12.00 of 24.00 EUR)",
                paid.status_code == 200 and all(r.status_code == 200 for r in refunds) and o is not None
                and o.get("refunded_cents") == PRICES["mug"],
                f"payment {paid.status_code}, refunds {[r.status_code for r in refunds]}, order {o}")

        async def french_mails() -> list[dict] | None:
            mails = await self.mails("hugo")
            return mails if len(mails) >= 2 else None

        mails = await poll(french_mails) or []
        texts = [" ".join((m.get("text") or "").replace("\u00a0", " ").replace("\u202f", " ").split())
                 for m in mails]
        refunded = [t for t in texts if "Nous vous avons remboursé 12,00 €" in t]
        s.check("hugo's mails are in French: a confirmation, and one 'remboursé 12,00 €' for the refund sent twice",
                len(mails) == 2 and len(refunded) == 1, f"{len(mails)} mails: {[m['subject'] for m in mails]}")

    async def _mail_about(self, order_id: str, words: str) -> list[dict]:
        return [m for m in await self.mails() if order_id in m["subject"] and words in m["subject"]]

    async def twin(self, first: Demo) -> None:
        """The twin shop reuses the first shop's ids; each shop's orders, carts, stock and mails stay its own."""
        s, tag = self.story, self.story.tag
        alice_cart, alice_order, bob_order = f"cart-alice-{tag}", f"order-alice-{tag}", f"order-bob-{tag}"
        s.say(f"twin shop {s.shop_id}: the same SKU names; dave reuses alice's cart id and order id")
        await self.cart_updated("dave", alice_cart, {"mug": 1})
        await self.checkout("dave", alice_cart, alice_order, {"mug": 1}, "manual", "cheque")
        s.say("twin's gateway confirms a payment for bob's order id, which only the first shop has")
        await self.producer.send(PaymentConfirmed(**self._env(), order_id=bob_order, payment_id=f"pp-{tag}",
                                                  amount_cents=PRICES["tee"], currency="EUR", provider="ideal"))
        mine = await self.order_is(alice_order, "pending", "awaiting")
        s.check("the twin's order under a reused id is the twin's own (pending/awaiting, dave's)",
                mine is not None and mine["customer"]["email"] == s.email("dave"), f"order: {mine}")
        s.check("the twin's stock moved for it (mug 10 -> 9)", await self.stock_is("mug", 9),
                f"twin mug = {await self.stock('mug')}")
        twin_cart = await poll(lambda: self._cart_ordered(alice_cart))
        s.check("the twin's cart under a reused id is the twin's own (1 mug)", twin_cart is not None
                and _quantities(twin_cart.get("ordered_items", [])) == {self._sku("mug"): 1}, f"cart: {twin_cart}")

        async def payment_held() -> bool:
            r = await self.http.get(f"{self.ep.orders}/orders/{bob_order}", headers=self.auth,
                                    params={"shop_id": first.story.shop_id})
            return r.status_code == 200 and r.json()["status"] == "incomplete"

        theirs = await first.order(alice_order)
        s.check("the first shop's order with that id is untouched (alice's, pending/paid)",
                theirs is not None and theirs["customer"]["email"] == s.email("alice")
                and (theirs["status"], theirs["payment_status"]) == ("pending", "paid"), f"order: {theirs}")
        s.check("the twin's payment for an id only the first shop has leaves that order incomplete",
                await payment_held(), f"order: {await first.order(bob_order)}")
        s.check("the first shop's stock did not move for the twin (mug stays 8)", await first.stock("mug") == 8,
                f"mug = {await first.stock('mug')}")
        cart = await first.cart(alice_cart)
        s.check("the first shop's cart with that id is still alice's (2 mugs)", cart is not None
                and _quantities(cart.get("ordered_items", [])) == {self._sku("mug"): 2}, f"cart: {cart}")
        ambiguous = await self.http.get(f"{self.ep.orders}/orders/{alice_order}", headers=self.auth)
        s.check("the operator asking for the id alone is told which shops have it (409)",
                ambiguous.status_code == 409
                and {s.shop_id, first.story.shop_id} <= set(ambiguous.json().get("shops", [])),
                f"{ambiguous.status_code} {ambiguous.text[:200]}")
        mails = await poll(lambda: self._mails_both("dave", "merchant2"))
        s.check("the twin's customer and merchant get the twin's mails", bool(mails), f"mails: {mails}")

    async def _mails_both(self, *who: str) -> bool:
        return all([len(await self.mails(w)) == 1 for w in who])

    async def mails_once(self) -> None:
        """Each mail exactly once: wait for the expected count, then make sure no copy follows."""
        s = self.story
        expected = {"alice": 1, "bob": 1, "carol": 3, "merchant": 2}

        async def complete() -> dict[str, int] | None:
            counts = {who: len(await self.mails(who)) for who in expected}
            return counts if all(counts[w] >= n for w, n in expected.items()) else None
        await poll(complete, timeout=WAIT)
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:  # a short quiet period: a duplicate would show up in it
            await asyncio.sleep(0.25)
        counts = {who: len(await self.mails(who)) for who in expected}
        s.check("each mail sent exactly once (alice 1, bob 1, carol 3, merchant 2)", counts == expected,
                f"got {counts}")
        for name in INITIAL_STOCK:
            s.stock_after[name] = await self.stock(name)  # type: ignore[assignment]
        s.check("stock after: mug 8, tee 3, poster 0",
                s.stock_after == {"mug": 8, "tee": 3, "poster": 0}, f"got {s.stock_after}")

    async def report(self) -> None:
        s = self.story
        s.say("")
        s.say(f"== report for shop {s.shop_id} ==")
        for tab in ("pending", "closed", "incomplete"):
            r = await self.http.get(f"{self.ep.orders}/orders", headers=self.auth,
                                    params={"tab": tab, "shop_id": s.shop_id})
            rows = r.json().get("orders", []) if r.status_code == 200 else []
            s.say(f"orders, {tab} tab: {len(rows)}")
            for o in rows:
                s.say(f"  {o['order_id']:<24} {o['status']:<10} {o['payment_status']:<10} {o['customer']['email']}")
        s.say("stock (before -> after):")
        for name in INITIAL_STOCK:
            s.say(f"  {self._sku(name):<20} {s.stock_before.get(name)} -> {s.stock_after.get(name)}")
        s.say("mails sent:")
        for m in await self.mails():
            s.say(f"  to {m['to']:<36} {m['subject']}")
        failed = [r for r in s.rules if not r.held]
        s.say("")
        if failed:
            s.say(f"RULES FAILED ({len(failed)} of {len(s.rules)}):")
            for r in failed:
                s.say(f"  - {r.name}" + (f": {r.detail}" if r.detail else ""))
        else:
            s.say(f"ALL RULES HELD ({len(s.rules)} checks)")


def _quantities(items: list[dict]) -> dict[str, int]:
    return {i["sku"]: i["quantity"] for i in items}


def _ids(response: httpx.Response) -> set[str]:
    if response.status_code != 200:
        return set()
    return {o["order_id"] for o in response.json().get("orders", [])}


async def run_demo(ep: Endpoints, say: Callable[[str], None] = print) -> Story:
    story = Story(say=say)
    started = time.monotonic()
    async with StorefrontProducer(**options(ep.bootstrap)) as producer, httpx.AsyncClient(timeout=10) as http:
        demo = Demo(ep, producer, http, story)
        twin = Demo(ep, producer, http, Story(tag=story.tag, rules=story.rules, say=say, twin=True))
        await demo.setup()
        await demo.reminder_settings()
        await demo.alice()
        await demo.bob()
        await demo.carol()
        await demo.reminders()
        await demo.french_refund()
        await twin.setup()
        await twin.twin(demo)
        await demo.bob_recovered()
        await demo.mails_once()
        await demo.report()
    say(f"demo took {time.monotonic() - started:.1f} s")
    return story


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(prog="orderflow demo", description=__doc__.splitlines()[0]).parse_args(argv)
    return run(argparse.Namespace())


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="the seeds' story end to end on the running stack, with a report")
    p.set_defaults(func=run)
    return p


def run(_args: argparse.Namespace) -> int:
    try:
        story = asyncio.run(run_demo(Endpoints.from_env()))
    except (DemoError, KafkaError, httpx.HTTPError, OSError) as exc:
        print(f"orderflow demo: error: {exc}", file=sys.stderr)
        return 1
    return 0 if all(r.held for r in story.rules) else 1


if __name__ == "__main__":
    sys.exit(main())
