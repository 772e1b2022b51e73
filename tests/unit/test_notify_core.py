"""Which e-mails an event implies (DESIGN.md "Notifications" and the French seed), and the sending rules."""

from __future__ import annotations

import uuid

import pytest

import contracts as c
from services.notify import core

SHOP = "shop-1"
ORDER = "order-1"


def status_event(status: str, previous: str | None, payment: str = "paid", method: str = "gateway",
                 previous_payment: str | None = None) -> c.OrderStatusChanged:
    return c.OrderStatusChanged(
        event_id=uuid.uuid4(), occurred_at=c.now(), shop_id=SHOP, order_id=ORDER, status=status,
        payment_status=payment, previous_status=previous, previous_payment_status=previous_payment,
        changed_by="system", customer=c.Customer(email="ada@example.com", name="Ada"),
        items=[c.OrderItem(sku="MUG-1", name="Mug", quantity=2, unit_price_cents=1250)], total_cents=2500,
        currency="EUR", payment=c.Payment(method=method, provider="paypal"),
    )


def kinds(intents: list[core.MailIntent]) -> list[tuple[str, str]]:
    return [(i.kind, i.audience) for i in intents]


def test_incomplete_order_sends_nothing() -> None:
    assert core.mails_for_status(status_event("incomplete", None, payment="incomplete")) == []


def test_gateway_payment_commits_the_order_merchant_and_customer_mails_show_paid() -> None:
    intents = core.mails_for_status(status_event("pending", "incomplete", payment="paid"))
    assert kinds(intents) == [("new_order", "merchant"), ("confirmation", "customer")]
    assert intents[0].to_addr is None  # the merchant's address comes from shop.settings at send time
    assert intents[1].to_addr == "ada@example.com"
    assert all(i.context["payment_status"] == "paid" for i in intents)  # written out at render, in the mail's locale
    assert {i.ref for i in intents} == {f"{SHOP}/{ORDER}"}


def test_manual_order_placed_pending_shows_awaiting_payment() -> None:
    intents = core.mails_for_status(status_event("pending", None, payment="awaiting", method="manual"))
    assert kinds(intents) == [("new_order", "merchant"), ("confirmation", "customer")]
    assert all(i.context["payment_status"] == "awaiting" for i in intents)
    assert (intents[0].context["total_cents"], intents[0].context["currency"]) == (2500, "EUR")


def test_marking_paid_is_not_a_new_order() -> None:
    event = status_event("pending", "pending", payment="paid", previous_payment="awaiting")
    assert core.mails_for_status(event) == []


@pytest.mark.parametrize("status,previous", [("processed", "pending"), ("delivered", "processed"),
                                             ("canceled", "pending"), ("canceled", "processed")])
def test_each_later_status_mails_the_customer_once(status: str, previous: str) -> None:
    assert kinds(core.mails_for_status(status_event(status, previous))) == [(status, "customer")]


def test_cancel_of_a_never_committed_order_sends_nothing() -> None:
    assert core.mails_for_status(status_event("canceled", "incomplete", payment="incomplete")) == []


def test_shortfall_alert_names_only_the_short_items() -> None:
    event = c.InventoryDeduction(
        event_id=uuid.uuid4(), occurred_at=c.now(), shop_id=SHOP, order_id=ORDER, kind="deducted",
        lines=[c.DeductionLine(sku="MUG-1", asked=3, moved=1), c.DeductionLine(sku="TEE", asked=1, moved=1)],
    )
    [intent] = core.mails_for_deduction(event)
    assert (intent.kind, intent.audience) == ("shortfall", "merchant")
    assert intent.context["short_items"] == [{"sku": "MUG-1", "asked": 3, "moved": 1, "missing": 2}]


def test_full_deduction_and_returns_send_no_alert() -> None:
    full = c.InventoryDeduction(event_id=uuid.uuid4(), occurred_at=c.now(), shop_id=SHOP, order_id=ORDER,
                                kind="deducted", lines=[c.DeductionLine(sku="MUG-1", asked=2, moved=2)])
    returned = full.model_copy(update={"kind": c.DeductionKind.RETURNED,
                                       "lines": [c.DeductionLine(sku="MUG-1", asked=2, moved=0)]})
    assert core.mails_for_deduction(full) == []
    assert core.mails_for_deduction(returned) == []


def test_recovery_and_message_mails() -> None:
    abandoned = c.CheckoutAbandoned(
        event_id=uuid.uuid4(), occurred_at=c.now(), shop_id=SHOP, cart_id="cart-9",
        customer=c.Customer(email="bob@example.com"), items=[c.CartItem(sku="MUG-1", quantity=1)],
        started_at=c.now(), recovery_url="http://shop.test/cart/cart-9",
    )
    [recovery] = core.mails_for_abandoned(abandoned)
    assert (recovery.ref, recovery.kind, recovery.to_addr) == (f"{SHOP}/cart-9", "recovery", "bob@example.com")
    assert recovery.context["recovery_url"] == "http://shop.test/cart/cart-9"
    message = c.CustomerMessageRequested(event_id=uuid.uuid4(), occurred_at=c.now(), shop_id=SHOP, order_id=ORDER,
                                         message_id="m1", text="Hello", customer=c.Customer(email="a@b.co"))
    [mail] = core.mails_for_message(message)
    assert mail.kind == "message:m1" and core.kind_family(mail.kind) == "message"


def test_message_id_is_deterministic_per_key() -> None:
    a = core.message_id("s/o", "confirmation")
    assert a == core.message_id("s/o", "confirmation")
    assert a != core.message_id("s/o", "new_order")
    assert a.startswith("<") and a.endswith("@orderflow>") and len(a) == len("<@orderflow>") + 32


def test_backoff_doubles_up_to_a_cap_and_never_ends() -> None:
    assert [core.backoff_seconds(n, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert core.backoff_seconds(30, 1.0, cap=600) == 600
    assert core.backoff_seconds(10_000, 0.2, cap=2) == 2  # the thousandth failure waits the cap, no overflow
    assert not hasattr(core, "after_failure")  # there is no last attempt any more


def test_merchant_mail_waits_for_the_shop_settings_customer_mail_only_a_while() -> None:
    assert core.resolve_recipient("merchant", None, None, None, SHOP, waited_seconds=3600) is None
    merchant = core.resolve_recipient("merchant", None, "Mugs", "m@shop.co", SHOP, 0)
    assert merchant == core.Recipient("m@shop.co", "Mugs", None)
    assert core.resolve_recipient("customer", "a@b.co", None, None, SHOP, 1) is None
    late = core.resolve_recipient("customer", "a@b.co", None, None, SHOP, core.SHOP_SETTINGS_GRACE_SECONDS + 1)
    assert late == core.Recipient("a@b.co", SHOP, None)
    assert core.resolve_recipient("customer", "a@b.co", "Mugs", "m@shop.co", SHOP, 0).reply_to == "m@shop.co"


def test_a_mail_waiting_for_its_shop_is_put_aside_not_polled() -> None:
    assert core.wait_for_shop_seconds("merchant", 5) == core.SHOP_SETTINGS_RECHECK_SECONDS
    assert core.wait_for_shop_seconds("customer", 10) == core.SHOP_SETTINGS_GRACE_SECONDS - 10
    assert core.wait_for_shop_seconds("customer", 10_000) == 1.0
