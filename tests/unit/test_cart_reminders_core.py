"""Recovery reminders, consent and unsubscribe links: the cart's pure rules (issue 16)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from services.cart import recovery
from services.cart.core import (
    Checkout,
    CheckoutState,
    Placed,
    RecoveryPolicy,
    ReminderOutcome,
    StatusChanged,
    abandoned_event,
    next_reminder,
    on_order_placed,
    on_order_status,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
CUSTOMER = {"email": "Ada@Example.com", "name": "Ada"}
ITEMS = [{"sku": "MUG-1", "quantity": 2, "name": "Mug", "unit_price_cents": 1250}]
KEY = recovery.key_from("token")


def due(consent: bool = True, sent: int = 0) -> Checkout:
    return Checkout("cart-1", "shop-1", CheckoutState.OPEN, CUSTOMER, ITEMS, uuid.uuid4(), T0,
                    T0 + timedelta(seconds=60), marketing_consent=consent, reminders_sent=sent)


def test_each_reminder_is_sent_then_the_next_is_due_after_the_gap_and_the_last_ends_the_watch() -> None:
    policy = RecoveryPolicy((60, 3600, 86400))
    first, outcome = next_reminder(due(), policy, unsubscribed=False)
    assert outcome is ReminderOutcome.SEND
    assert (first.state, first.reminders_sent, first.due_at) == (CheckoutState.OPEN, 1, T0 + timedelta(seconds=3600))
    second, _ = next_reminder(first, policy, unsubscribed=False)
    assert (second.state, second.reminders_sent, second.due_at) == (CheckoutState.OPEN, 2, T0 + timedelta(days=1))
    third, outcome = next_reminder(second, policy, unsubscribed=False)
    assert outcome is ReminderOutcome.SEND
    assert (third.state, third.reminders_sent) == (CheckoutState.ABANDONED, 3)


def test_no_reminder_without_consent_when_the_shop_requires_it() -> None:
    required = RecoveryPolicy((60, 120), requires_consent=True)
    stopped, outcome = next_reminder(due(consent=False), required, unsubscribed=False)
    assert outcome is ReminderOutcome.NO_CONSENT
    assert (stopped.state, stopped.reminders_sent, stopped.reminders_stopped) == (
        CheckoutState.ABANDONED, 0, "no_consent")
    assert next_reminder(due(consent=True), required, False)[1] is ReminderOutcome.SEND
    assert next_reminder(due(consent=False), RecoveryPolicy((60,)), False)[1] is ReminderOutcome.SEND, \
        "consent is not needed unless the shop asks for it"


def test_an_unsubscribed_email_stops_the_reminders_and_fewer_reminders_end_them() -> None:
    stopped, outcome = next_reminder(due(sent=1), RecoveryPolicy((60, 120)), unsubscribed=True)
    assert (outcome, stopped.state, stopped.reminders_stopped) == (
        ReminderOutcome.UNSUBSCRIBED, CheckoutState.ABANDONED, "unsubscribed")
    ended, outcome = next_reminder(due(sent=2), RecoveryPolicy((60, 120)), unsubscribed=False)
    assert (outcome, ended.state) == (ReminderOutcome.NO_MORE, CheckoutState.ABANDONED)


def test_a_payment_seen_stops_the_reminders_before_orders_says_paid() -> None:
    """A gateway's payment.confirmed that orders has not turned into order.status yet (orders down or behind):
    no reminder, whether the first or a later one, and whatever the other reasons say; the watch closes as paid."""
    for sent in (0, 1):
        stopped, outcome = next_reminder(due(sent=sent), RecoveryPolicy((60, 120)), unsubscribed=True,
                                         payment_seen=True)
        assert (outcome, stopped.state, stopped.reminders_sent, stopped.reminders_stopped) == (
            ReminderOutcome.PAID, CheckoutState.PAID, sent, "paid")
    assert next_reminder(due(), RecoveryPolicy((60,)), False, payment_seen=False)[1] is ReminderOutcome.SEND


def test_policy_defaults_to_one_reminder_at_the_abandon_delay() -> None:
    assert RecoveryPolicy.of(None, timedelta(seconds=90), False) == RecoveryPolicy((90,), False)
    assert RecoveryPolicy.of([5, 10, 20, 40], timedelta(seconds=90), True) == RecoveryPolicy((5, 10, 20), True)


def test_each_reminder_has_its_own_deterministic_id_and_the_first_keeps_the_old_one() -> None:
    c = due()
    first = abandoned_event(c, "https://shop.example", T0, KEY)
    assert abandoned_event(c, "https://shop.example", T0, KEY, reminder=0).event_id == first.event_id
    second = abandoned_event(c, "https://shop.example", T0, KEY, reminder=1)
    assert second.reminder == 1 and second.event_id != first.event_id
    assert abandoned_event(c, "https://shop.example", T0 + timedelta(hours=1), KEY, reminder=1).event_id == \
        second.event_id
    assert first.unsubscribe_url is None, "no cart service URL, no link"


def test_unsubscribe_link_is_signed_for_the_shop_and_the_email_only() -> None:
    event = abandoned_event(due(), "https://shop.example", T0, KEY, public_cart_url="https://cart.example/")
    link = urlsplit(event.unsubscribe_url or "")
    assert (link.netloc, link.path) == ("cart.example", "/unsubscribe")
    query = {k: v[0] for k, v in parse_qs(link.query).items()}
    assert (query["shop_id"], query["email"]) == ("shop-1", "ada@example.com")
    now = T0.timestamp()
    assert recovery.verify_unsubscribe(KEY, query["token"], "shop-1", "ADA@example.com", now)
    assert not recovery.verify_unsubscribe(KEY, query["token"], "shop-2", "ada@example.com", now)
    assert not recovery.verify_unsubscribe(KEY, query["token"], "shop-1", "bob@example.com", now)
    recovery_token = parse_qs(urlsplit(event.recovery_url).query)["token"][0]
    assert not recovery.verify_unsubscribe(KEY, recovery_token, "shop-1", "cart-1", now), \
        "a recovery link's token does not unsubscribe"


def test_an_unpaid_gateway_order_after_a_reminder_keeps_the_schedule_and_holds_the_orders_items() -> None:
    reminded = replace(due(sent=1), due_at=T0 + timedelta(hours=1))
    order_items = [{"sku": "MUG-1", "quantity": 1, "name": "Mug", "unit_price_cents": 1250}]
    placed = on_order_placed(reminded, Placed("cart-1", "shop-1", "o-1", CUSTOMER, order_items,
                                              T0 + timedelta(minutes=5), True), timedelta(seconds=60))
    assert placed is not None
    assert (placed.state, placed.due_at, placed.order_id, placed.items) == (
        CheckoutState.OPEN, T0 + timedelta(hours=1), "o-1", order_items)


def test_a_checkout_read_after_its_gateway_order_keeps_the_orders_items() -> None:
    from services.cart.core import Started, StatusChanged, on_checkout_started, on_order_status

    order_items = [{"sku": "MUG-1", "quantity": 1, "name": "Mug", "unit_price_cents": 1250}]
    watched = on_order_status(None, StatusChanged("cart-1", "shop-1", "o-1", "incomplete", "incomplete", CUSTOMER,
                                                  order_items, T0 + timedelta(seconds=1)), timedelta(seconds=60))
    assert watched is not None
    late = on_checkout_started(watched, Started("cart-1", "shop-1", uuid.uuid4(), CUSTOMER, ITEMS, T0, True),
                               timedelta(seconds=60))
    assert late is not None
    assert (late.items, late.marketing_consent, late.started_at, late.state) == (
        order_items, True, T0, CheckoutState.OPEN)


def test_no_reminder_after_the_unpaid_order_was_canceled_or_expired() -> None:
    """Before issue 16's fix a cancel changed nothing: the watch stayed open and the next reminder went out."""
    policy = RecoveryPolicy((60, 3600, 86400))
    first, _ = next_reminder(replace(due(), order_id="order-1", order_at=T0), policy, unsubscribed=False)
    assert first.state == CheckoutState.OPEN, "the second reminder is due"
    for reason in ("expired", "changed my mind"):
        canceled = on_order_status(first, StatusChanged("cart-1", "shop-1", "order-1", "canceled", "incomplete",
                                                        CUSTOMER, ITEMS, T0 + timedelta(seconds=120), reason),
                                   timedelta(seconds=60))
        assert canceled is not None and canceled.state == CheckoutState.CANCELED
        assert canceled.reminders_sent == 1 and canceled.due_at == first.due_at
        # PostgreSQL claims only `state = 'open'` rows (repository.claim_due_checkouts): a canceled watch is never
        # handed to next_reminder again, so the second and third reminders are never sent.
        assert canceled.state != CheckoutState.OPEN
