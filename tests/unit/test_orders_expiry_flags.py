"""Issue 17 items 4 and 5, the pure rules: which orders expire, which flags a decision raises (once per order), what
the back office shows, and that the services downstream do nothing for an expired order (no mail, no stock)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from babel import Locale

import contracts as c
from contracts import ChangedBy, OrderFlag, OrderStatus, PaymentStatus
from orderflow.i18n import format_money
from services.inventory import core as inventory
from services.notify import alerts
from services.notify import core as notify
from services.notify.render import render
from services.orders import core
from services.orders.core import OrderState, PaymentFacts

S, P, F = OrderStatus, PaymentStatus, OrderFlag
INCOMPLETE = OrderState(S.INCOMPLETE, P.INCOMPLETE)
PLACED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = 3600


# --- expiry -------------------------------------------------------------------------------------------------------


def test_an_incomplete_order_past_its_shops_setting_is_canceled_as_expired_by_the_system() -> None:
    decision = core.expire(INCOMPLETE, PLACED, PLACED + timedelta(seconds=HOUR), HOUR)
    assert decision.state == OrderState(S.CANCELED, P.INCOMPLETE)  # nothing was paid, nothing is owed
    (change,) = decision.changes
    assert change.before == INCOMPLETE and change.changed_by == ChangedBy.SYSTEM and change.reason == "expired"
    assert decision.refused is None and not decision.flags


def test_an_incomplete_order_younger_than_the_setting_stays() -> None:
    decision = core.expire(INCOMPLETE, PLACED, PLACED + timedelta(seconds=HOUR - 1), HOUR)
    assert decision.noop and decision.state == INCOMPLETE


@pytest.mark.parametrize("state", [
    OrderState(S.PENDING, P.PAID), OrderState(S.PENDING, P.AWAITING), OrderState(S.PROCESSED, P.PAID),
    OrderState(S.DELIVERED, P.PAID), OrderState(S.CANCELED, P.INCOMPLETE), OrderState(S.CANCELED, P.PAID),
])
def test_only_incomplete_orders_expire(state: OrderState) -> None:
    """A payment committed while the sweep waited wins: the sweep decides again on the row it claimed."""
    assert core.expire(state, PLACED, PLACED + timedelta(days=400), HOUR).noop


def test_the_default_is_the_contracts_seven_days() -> None:
    assert core.DEFAULT_EXPIRE_UNPAID_AFTER_SECONDS == c.ShopSettings.model_fields[
        "expire_unpaid_after_seconds"].default == 7 * 24 * HOUR


# --- flags --------------------------------------------------------------------------------------------------------

EXPIRED = OrderState(S.CANCELED, P.INCOMPLETE)
PAID = PaymentFacts(2500, "EUR")


def test_a_payment_after_expiry_or_cancel_is_refused_and_flagged() -> None:
    decision = core.confirm_payment(EXPIRED, PAID, 2500, "EUR")
    assert decision.refused and not decision.changes and decision.state == EXPIRED
    assert decision.flags == {F.PAYMENT_AFTER_CANCEL}
    assert core.raised_flags(frozenset(), decision, 2500, 0) == {F.PAYMENT_AFTER_CANCEL}


def test_a_mismatched_payment_after_cancel_raises_both_flags() -> None:
    decision = core.confirm_payment(EXPIRED, PaymentFacts(100, "EUR"), 2500, "EUR")
    assert decision.flags == {F.PAYMENT_AFTER_CANCEL, F.PAYMENT_MISMATCH} and decision.payment_mismatch


def test_a_mismatched_payment_flags_payment_mismatch_only() -> None:
    decision = core.confirm_payment(INCOMPLETE, PaymentFacts(2500, "USD"), 2500, "EUR")
    assert decision.flags == {F.PAYMENT_MISMATCH} and not decision.changes


def test_a_matching_payment_of_a_live_order_raises_nothing() -> None:
    decision = core.confirm_payment(INCOMPLETE, PAID, 2500, "EUR")
    assert decision.changes and not decision.flags
    assert core.raised_flags(frozenset(), decision, 2500, 0) == frozenset()


def test_a_flag_is_raised_once_per_order() -> None:
    """The second payment after cancel (another payment id, or the same one resent) raises nothing new: one alert."""
    decision = core.confirm_payment(EXPIRED, PAID, 2500, "EUR")
    assert core.raised_flags(frozenset({"payment_after_cancel"}), decision, 2500, 0) == frozenset()


def test_canceling_a_paid_order_raises_refund_due_and_a_refund_clears_what_shows() -> None:
    cancel = core.merchant_set_status(OrderState(S.PENDING, P.PAID), S.CANCELED)
    assert core.raised_flags(frozenset(), cancel, 2500, 0) == {F.REFUND_DUE}
    assert core.raised_flags(frozenset(), cancel, 2500, 2500) == frozenset()  # already refunded in full
    assert core.current_flags(frozenset({"refund_due"}), 2500) == {F.REFUND_DUE}
    assert core.current_flags(frozenset({"refund_due", "payment_mismatch"}), 0) == {F.PAYMENT_MISMATCH}


def test_canceling_an_unpaid_order_raises_nothing() -> None:
    cancel = core.merchant_set_status(OrderState(S.PENDING, P.AWAITING), S.CANCELED)
    assert core.raised_flags(frozenset(), cancel, 2500, 0) == frozenset()
    assert core.raised_flags(frozenset(), core.expire(INCOMPLETE, PLACED, PLACED + timedelta(days=8),
                                                      7 * 24 * HOUR), 2500, 0) == frozenset()


def test_held_payments_that_do_not_match_flag_the_new_order() -> None:
    placement = core.place_with_held("gateway", True, 2500, "EUR", [("p1", PaymentFacts(10, "EUR"))])
    assert placement.decision.flags == {F.PAYMENT_MISMATCH}


# --- downstream: an expired order moves no stock and sends no mail ------------------------------------------------


def expired_event() -> c.OrderStatusChanged:
    return c.OrderStatusChanged(
        event_id=uuid.uuid4(), occurred_at=c.now(), shop_id="shop-1", order_id="1001", status=S.CANCELED,
        payment_status=P.INCOMPLETE, previous_status=S.INCOMPLETE, previous_payment_status=P.INCOMPLETE,
        changed_by=ChangedBy.SYSTEM, reason=core.EXPIRED, customer=c.Customer(email="ada@example.com"),
        items=[c.OrderItem(sku="MUG-1", name="Mug", quantity=2, unit_price_cents=1250)], total_cents=2500,
        currency="EUR", payment=c.Payment(method="gateway", provider="paypal"),
    )


def test_notify_sends_no_mail_for_an_expired_order() -> None:
    assert notify.mails_for_status(expired_event()) == []


def test_inventory_moves_no_stock_for_an_expired_order() -> None:
    """The cancel closes an order that never deducted: nothing returned, and a later commit deducts nothing."""
    command = inventory.command_for_status(expired_event())
    assert isinstance(command, inventory.CancelOrder)
    book = inventory.Book(levels={("shop-1", "MUG-1"): 5})
    out = inventory.apply(book, [command])
    assert out.moves == [] and out.deductions() == [] and book.levels[("shop-1", "MUG-1")] == 5
    late_commit = inventory.CommitOrder("1001", "shop-1", (("MUG-1", 2),))
    assert inventory.apply(book, [late_commit]).moves == [] and book.levels[("shop-1", "MUG-1")] == 5


# --- the merchant's alert mail --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", list(F))
def test_one_alert_mail_per_order_and_flag(flag: OrderFlag) -> None:
    event = c.OrderFlagged(event_id=uuid.uuid4(), occurred_at=c.now(), shop_id="shop-1", order_id="1001", flag=flag,
                           detail="payment of 100 JPY does not match", status=S.CANCELED, payment_status=P.PAID,
                           customer=c.Customer(email="ada@example.com", name="Ada"), total_cents=1200,
                           currency="JPY", refund_due_cents=1200 if flag == F.REFUND_DUE else 0)
    (mail,) = alerts.mails_for_flag(event)
    assert (mail.ref, mail.kind, mail.audience, mail.to_addr) == ("shop-1/1001", f"alert_{flag.value}", "merchant",
                                                                   None)
    english = render("alert", mail.context, "Boutique")
    assert english.subject == "Boutique: order 1001 needs your attention"
    assert "¥1,200" in english.text and "Recorded: payment of 100 JPY does not match" in english.text  # no decimals
    french = render("alert", mail.context, "Boutique", Locale.parse("fr"))
    assert french.subject == "Boutique : la commande 1001 demande votre attention"
    assert f"Total : {format_money(1200, 'JPY', 'fr')}" in french.text  # the shop's language, money its way
    said = {F.PAYMENT_MISMATCH: ("does not match the order", "ne correspond pas"),
            F.PAYMENT_AFTER_CANCEL: ("arrived for a canceled order", "commande annulée"),
            F.REFUND_DUE: ("¥1,200 is due to the customer", "sont dus au client")}[flag]
    assert said[0] in english.text and said[0] in english.html.replace("<strong>", "").replace("</strong>", "")
    assert said[1] in french.text
