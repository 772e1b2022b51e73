"""The cart's pure rules: how items show against stock, and how a checkout watch changes state."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from services.cart import recovery
from services.cart.core import (
    Checkout,
    CheckoutState,
    LineStatus,
    Placed,
    Started,
    StatusChanged,
    abandoned_event,
    on_checkout_started,
    on_order_placed,
    on_order_status,
    recovery_url,
    resume,
    show_cart,
    show_line,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
AFTER = timedelta(seconds=60)
CUSTOMER = {"email": "ada@example.com", "name": "Ada"}
ITEMS = [{"sku": "MUG-1", "quantity": 2, "name": "Mug", "unit_price_cents": 1250}]


def started(at: datetime = T0, cart: str = "cart-1") -> Started:
    return Started(cart, "shop-1", uuid.uuid4(), CUSTOMER, ITEMS, at)


def placed(at: datetime, *, gateway: bool, order: str = "order-1") -> Placed:
    return Placed("cart-1", "shop-1", order, CUSTOMER, ITEMS, at, gateway)


def status(at: datetime, st: str, pay: str, order: str = "order-1", reason: str | None = None) -> StatusChanged:
    return StatusChanged("cart-1", "shop-1", order, st, pay, CUSTOMER, ITEMS, at, reason)


# --- cart view -----------------------------------------------------------------------------------------------


def test_item_in_stock_shows_what_was_asked() -> None:
    line = show_line({"sku": "A", "quantity": 2}, 10)
    assert (line.quantity_shown, line.status, line.message, line.stock) == (2, LineStatus.OK, None, "known")


def test_sold_out_item_stays_with_quantity_zero_and_says_so() -> None:
    line = show_line({"sku": "A", "quantity": 3}, 0)
    assert (line.quantity_asked, line.quantity_shown, line.status, line.message) == (
        3, 0, LineStatus.OUT_OF_STOCK, "out of stock")


def test_asking_more_than_left_shows_what_is_left() -> None:
    line = show_line({"sku": "A", "quantity": 5}, 2)
    assert (line.quantity_shown, line.status, line.message) == (2, LineStatus.LIMITED, "only 2 left")


def test_sku_never_reported_counts_as_available() -> None:
    line = show_line({"sku": "A", "quantity": 4}, None)
    assert (line.quantity_shown, line.status, line.stock) == (4, LineStatus.OK, "unknown")


def test_show_cart_keeps_every_item_in_order() -> None:
    lines = show_cart([{"sku": "A", "quantity": 1}, {"sku": "B", "quantity": 1}], {"A": 0})
    assert [(line.sku, line.status) for line in lines] == [("A", LineStatus.OUT_OF_STOCK), ("B", LineStatus.OK)]


# --- checkout watches ----------------------------------------------------------------------------------------


def test_checkout_opens_a_watch_due_after_abandon_after() -> None:
    c = on_checkout_started(None, started(), AFTER)
    assert c is not None and c.state == CheckoutState.OPEN and c.due_at == T0 + AFTER


def test_replayed_or_older_checkout_changes_nothing_even_after_abandonment() -> None:
    s = started()
    abandoned = Checkout("cart-1", "shop-1", CheckoutState.ABANDONED, CUSTOMER, ITEMS, s.event_id, T0, T0 + AFTER)
    assert on_checkout_started(abandoned, s, AFTER) is None
    assert on_checkout_started(abandoned, started(T0 - timedelta(seconds=1)), AFTER) is None


def test_newer_checkout_after_a_completed_one_starts_a_new_watch() -> None:
    paid = Checkout("cart-1", "shop-1", CheckoutState.PAID, CUSTOMER, ITEMS, uuid.uuid4(), T0, T0 + AFTER,
                    "order-1", T0 + timedelta(seconds=5))
    later = started(T0 + timedelta(minutes=10))
    c = on_checkout_started(paid, later, AFTER)
    assert c is not None and c.state == CheckoutState.OPEN and c.order_id is None
    assert c.started_event_id == later.event_id


def test_late_checkout_older_than_its_order_does_not_reopen() -> None:
    ordered = on_order_placed(None, placed(T0 + timedelta(seconds=5), gateway=False), AFTER)
    c = on_checkout_started(ordered, started(T0), AFTER)
    assert c is not None and c.state == CheckoutState.ORDERED and c.started_at == T0


def test_manual_order_closes_the_watch() -> None:
    c = on_order_placed(on_checkout_started(None, started(), AFTER), placed(T0 + timedelta(seconds=5),
                                                                            gateway=False), AFTER)
    assert c is not None and c.state == CheckoutState.ORDERED and c.order_id == "order-1"


def test_gateway_order_keeps_the_watch_open_due_from_placement() -> None:
    at = T0 + timedelta(seconds=30)
    c = on_order_placed(on_checkout_started(None, started(), AFTER), placed(at, gateway=True), AFTER)
    assert c is not None and c.state == CheckoutState.OPEN and c.order_id == "order-1" and c.due_at == at + AFTER


def test_payment_closes_the_gateway_watch_whatever_arrives_first() -> None:
    open_ = on_checkout_started(None, started(), AFTER)
    at = T0 + timedelta(seconds=5)
    paid_first = on_order_status(open_, status(at, "pending", "paid"), AFTER)
    assert paid_first is not None and paid_first.state == CheckoutState.PAID
    assert on_order_placed(paid_first, placed(at, gateway=True), AFTER) is None
    placed_first = on_order_placed(open_, placed(at, gateway=True), AFTER)
    assert on_order_status(placed_first, status(at, "pending", "paid"), AFTER).state == CheckoutState.PAID


def test_incomplete_status_watches_the_unpaid_order() -> None:
    at = T0 + timedelta(seconds=5)
    c = on_order_status(on_checkout_started(None, started(), AFTER), status(at, "incomplete", "incomplete"), AFTER)
    assert c is not None and c.state == CheckoutState.OPEN and c.order_id == "order-1" and c.due_at == at + AFTER
    assert on_order_placed(c, placed(at, gateway=True), AFTER) is None


def test_payment_after_abandonment_records_paid_and_unpaid_order_never_reopens() -> None:
    abandoned = Checkout("cart-1", "shop-1", CheckoutState.ABANDONED, CUSTOMER, ITEMS, uuid.uuid4(), T0, T0 + AFTER)
    gateway = on_order_placed(abandoned, placed(T0 + 2 * AFTER, gateway=True), AFTER)
    assert gateway is not None and gateway.state == CheckoutState.ABANDONED
    assert on_order_status(gateway, status(T0 + 3 * AFTER, "pending", "paid"), AFTER).state == CheckoutState.PAID


def test_events_of_an_older_order_do_not_touch_a_newer_checkout() -> None:
    open_ = on_checkout_started(None, started(T0 + timedelta(minutes=5)), AFTER)
    assert on_order_placed(open_, placed(T0, gateway=False, order="old"), AFTER) is None
    assert on_order_status(open_, status(T0, "pending", "paid", order="old"), AFTER) is None


def test_a_canceled_order_the_watch_does_not_hold_changes_nothing() -> None:
    open_ = on_checkout_started(None, started(), AFTER)
    assert on_order_status(open_, status(T0 + AFTER, "canceled", "awaiting"), AFTER) is None, "no order on it"
    newer = on_checkout_started(None, started(T0 + 2 * AFTER), AFTER)
    assert on_order_status(newer, status(T0 + 3 * AFTER, "canceled", "incomplete", reason="expired"), AFTER) is None, \
        "an older order expiring after a newer checkout leaves the newer checkout's watch alone"
    manual = on_order_placed(open_, placed(T0 + timedelta(seconds=5), gateway=False), AFTER)
    assert on_order_status(manual, status(T0 + AFTER, "canceled", "awaiting"), AFTER) is None
    paid = on_order_status(open_, status(T0 + timedelta(seconds=5), "pending", "paid"), AFTER)
    assert on_order_status(paid, status(T0 + AFTER, "canceled", "paid"), AFTER) is None, "paid stays paid"


def unpaid_gateway_watch() -> Checkout:
    c = on_order_placed(on_checkout_started(None, started(), AFTER), placed(T0 + timedelta(seconds=5), gateway=True),
                        AFTER)
    return on_order_status(c, status(T0 + timedelta(seconds=6), "incomplete", "incomplete"), AFTER) or c


@pytest.mark.parametrize(("reason", "closed"), [("expired", "expired"), ("changed my mind", "canceled"),
                                                (None, "canceled")])
@pytest.mark.parametrize("reminded", [False, True])
def test_an_unpaid_gateway_order_canceled_or_expired_ends_its_watch_with_why(reason: str | None, closed: str,
                                                                             reminded: bool) -> None:
    watch = unpaid_gateway_watch()
    if reminded:
        watch = replace(watch, state=CheckoutState.ABANDONED, reminders_sent=1)
    c = on_order_status(watch, status(T0 + 10 * AFTER, "canceled", "incomplete", reason=reason), AFTER)
    assert c is not None and (c.state, c.order_closed, c.order_id) == (CheckoutState.CANCELED, closed, "order-1")
    assert c.items == ITEMS, "the order's items stay, for the link to offer again"
    assert c.reminders_sent == watch.reminders_sent
    assert on_order_status(c, status(T0 + 11 * AFTER, "canceled", "incomplete", reason=reason), AFTER) is None
    assert on_order_placed(c, placed(T0 + timedelta(seconds=5), gateway=True), AFTER) is None, "a late order.placed"
    assert on_order_status(c, status(T0 + 12 * AFTER, "incomplete", "incomplete"), AFTER) is None


def test_a_cancel_read_before_its_order_placed_still_ends_the_watch() -> None:
    c = on_order_status(None, status(T0 + AFTER, "canceled", "incomplete", reason="expired"), AFTER)
    assert c is not None and (c.state, c.order_closed, c.order_id) == (CheckoutState.CANCELED, "expired", "order-1")
    assert on_order_placed(c, placed(T0, gateway=True), AFTER) is None


def test_a_new_checkout_or_another_unpaid_order_after_a_cancel_moves_on() -> None:
    canceled = on_order_status(unpaid_gateway_watch(), status(T0 + 10 * AFTER, "canceled", "incomplete",
                                                              reason="expired"), AFTER)
    fresh = on_checkout_started(canceled, started(T0 + 20 * AFTER), AFTER)
    assert fresh is not None and fresh.state == CheckoutState.OPEN and fresh.order_id is None
    other = on_order_placed(canceled, placed(T0 + 20 * AFTER, gateway=True, order="order-2"), AFTER)
    assert other is not None and (other.state, other.order_id, other.order_closed) == (
        CheckoutState.ABANDONED, "order-2", None), "payable again, but this checkout's reminders are over"


def test_resume_says_what_the_recovery_link_offers() -> None:
    watch = unpaid_gateway_watch()
    assert resume("open", None, None) == {"kind": "cart"}
    assert resume("open", None, watch) == {"kind": "cart"}, "a newer snapshot reopened the cart"
    assert resume("ordered", "order-1", watch) == {"kind": "payment", "order_id": "order-1"}
    abandoned = replace(watch, state=CheckoutState.ABANDONED, reminders_sent=1)
    assert resume("ordered", "order-1", abandoned) == {"kind": "payment", "order_id": "order-1"}
    for reason, said in (("expired", "expired"), ("customer asked", "canceled")):
        canceled = on_order_status(watch, status(T0 + 10 * AFTER, "canceled", "incomplete", reason=reason), AFTER)
        assert resume("ordered", "order-1", canceled) == {"kind": "reorder", "order_id": "order-1", "reason": said}
    assert resume("ordered", "order-2", watch) is None, "the cart's newer order is not the watched one"
    assert resume("ordered", "order-1", None) is None
    paid = on_order_status(watch, status(T0 + AFTER, "pending", "paid"), AFTER)
    assert resume("ordered", "order-1", paid) is None
    manual = on_order_placed(on_checkout_started(None, started(), AFTER), placed(T0, gateway=False), AFTER)
    assert resume("ordered", "order-1", manual) is None


@pytest.mark.parametrize("order_id", [None, "order-9"])
def test_abandoned_event_is_deterministic_and_names_the_unpaid_order(order_id: str | None) -> None:
    c = Checkout("cart-1", "shop-1", CheckoutState.OPEN, CUSTOMER, ITEMS, uuid.uuid4(), T0, T0 + AFTER, order_id,
                 T0 if order_id else None)
    key = recovery.key_from("token")
    first = abandoned_event(c, "https://shop.example/", T0 + AFTER, key)
    again = abandoned_event(c, "https://shop.example/", T0 + 2 * AFTER, key)
    assert first.event_id == again.event_id
    assert first.recovery_url == again.recovery_url, "a re-emission carries the same signed link"
    assert first.order_id == order_id
    link = urlsplit(first.recovery_url)
    assert (link.scheme, link.netloc, link.path) == ("https", "shop.example", "/cart/cart-1")
    query = parse_qs(link.query)
    assert query["shop_id"] == ["shop-1"]
    assert recovery.verify(key, query["token"][0], "shop-1", "cart-1", now=T0.timestamp())
    assert recovery_url("https://s.example", "s", "a b", "1.x") == "https://s.example/cart/a%20b?shop_id=s&token=1.x"


def test_a_recovery_token_opens_its_own_cart_of_its_own_shop_until_it_expires() -> None:
    key = recovery.key_from("token")
    token = recovery.sign(key, "shop-1", "cart-1", T0 + timedelta(days=30))
    now = T0.timestamp()
    assert recovery.verify(key, token, "shop-1", "cart-1", now)
    assert not recovery.verify(key, token, "shop-2", "cart-1", now), "another shop's cart with the same id"
    assert not recovery.verify(key, token, "shop-1", "cart-2", now), "another cart"
    assert not recovery.verify(key, token, "shop-1", "cart-1", (T0 + timedelta(days=31)).timestamp()), "expired"
    assert not recovery.verify(recovery.key_from("other"), token, "shop-1", "cart-1", now), "another deployment"
    later = token.split(".")[1]
    assert not recovery.verify(key, f"{int(now) + 10**8}.{later}", "shop-1", "cart-1", now), "expiry moved"
    for bad in (None, "", "x", "123", "123.", ".abc"):
        assert not recovery.verify(key, bad, "shop-1", "cart-1", now)
