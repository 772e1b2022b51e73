"""The cart's rules, pure: how a cart is shown against stock, and how a checkout watch moves between states.

No I/O here: the handlers load rows, call these functions, and write what they return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode
from uuid import UUID

from contracts import (
    COMMITTED_STATUSES,
    EXPIRED_REASON,
    CartItem,
    CheckoutAbandoned,
    Customer,
    OrderStatus,
    PaymentStatus,
    derived_event_id,
)
from services.cart import recovery

# --- the cart as shown ---------------------------------------------------------------------------------------


class LineStatus(StrEnum):
    OK = "ok"
    LIMITED = "limited"
    OUT_OF_STOCK = "out_of_stock"


@dataclass(frozen=True)
class CartLine:
    """One item as the storefront shows it: what the customer asked for and what stock allows."""

    sku: str
    name: str | None
    unit_price_cents: int | None
    quantity_asked: int
    quantity_shown: int
    status: LineStatus
    message: str | None
    stock: str  # "known" or "unknown" (a SKU the inventory never reported counts as available)


def show_line(item: Mapping[str, Any], available: int | None) -> CartLine:
    """Out of stock stays in the cart at 0; more asked than left shows what is left; unknown stock shows as asked."""
    asked = int(item["quantity"])
    common = {"sku": item["sku"], "name": item.get("name"), "unit_price_cents": item.get("unit_price_cents"),
              "quantity_asked": asked}
    if available is None:
        return CartLine(**common, quantity_shown=asked, status=LineStatus.OK, message=None, stock="unknown")
    if available <= 0 and asked > 0:
        return CartLine(**common, quantity_shown=0, status=LineStatus.OUT_OF_STOCK, message="out of stock",
                        stock="known")
    if asked > available:
        return CartLine(**common, quantity_shown=available, status=LineStatus.LIMITED,
                        message=f"only {available} left", stock="known")
    return CartLine(**common, quantity_shown=asked, status=LineStatus.OK, message=None, stock="known")


def show_cart(items: Iterable[Mapping[str, Any]], levels: Mapping[str, int]) -> list[CartLine]:
    return [show_line(item, levels.get(item["sku"])) for item in items]


# --- checkout watches ----------------------------------------------------------------------------------------


class CheckoutState(StrEnum):
    OPEN = "open"            # watched: abandoned at due_at unless an order closes it
    ORDERED = "ordered"      # a manual-payment order was placed from the cart
    PAID = "paid"            # the order is committed (pending/processed/delivered or paid)
    ABANDONED = "abandoned"  # checkout.abandoned was staged; terminal for this checkout
    CANCELED = "canceled"    # its unpaid gateway order was canceled or expired: no reminder, the link offers a reorder


class OrderClosed(StrEnum):
    """Why the unpaid gateway order of a CANCELED watch ended (the `reason` of the view's reorder)."""

    EXPIRED = "expired"    # past the shop's expire_unpaid_after_seconds (order.status reason EXPIRED_REASON)
    CANCELED = "canceled"  # canceled by the customer (or the shop) before it was paid


NEVER_PAID = frozenset({PaymentStatus.INCOMPLETE, PaymentStatus.AWAITING})

CartKey = tuple[str, str]
"""(shop_id, cart_id): cart ids are unique within a shop only."""


@dataclass(frozen=True)
class Checkout:
    """The watch on one cart's latest checkout (one row per cart)."""

    cart_id: str
    shop_id: str
    state: CheckoutState
    customer: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)
    started_event_id: UUID | None = None
    started_at: datetime | None = None
    due_at: datetime | None = None
    order_id: str | None = None
    order_at: datetime | None = None
    marketing_consent: bool = False
    reminders_sent: int = 0  # recovery reminders of this checkout already decided (sent or stopped)
    reminders_stopped: str | None = None  # why the reminders ended before the last one (ReminderOutcome)
    order_closed: str | None = None  # CANCELED: why its order ended (OrderClosed)

    @property
    def key(self) -> CartKey:
        return (self.shop_id, self.cart_id)


@dataclass(frozen=True)
class Started:
    cart_id: str
    shop_id: str
    event_id: UUID
    customer: dict[str, Any]
    items: list[dict[str, Any]]
    at: datetime
    marketing_consent: bool = False


@dataclass(frozen=True)
class Placed:
    cart_id: str
    shop_id: str
    order_id: str
    customer: dict[str, Any]
    items: list[dict[str, Any]]
    at: datetime
    gateway: bool


@dataclass(frozen=True)
class StatusChanged:
    cart_id: str
    shop_id: str
    order_id: str
    status: str
    payment_status: str
    customer: dict[str, Any]
    items: list[dict[str, Any]]
    at: datetime
    reason: str | None = None


def on_checkout_started(cur: Checkout | None, s: Started, abandon_after: timedelta) -> Checkout | None:
    """A checkout newer than everything known starts a new watch; an older one (a replay, a late event) never
    reopens anything: it only fills in what the checkout looked like when it led to an order already known."""
    new_watch = Checkout(cart_id=s.cart_id, shop_id=s.shop_id, state=CheckoutState.OPEN, customer=s.customer,
                         items=s.items, started_event_id=s.event_id, started_at=s.at, due_at=s.at + abandon_after,
                         marketing_consent=s.marketing_consent)
    if cur is None:
        return new_watch
    if cur.started_at is not None and s.at <= cur.started_at:
        return None
    if cur.order_at is not None and s.at <= cur.order_at:
        # The order's items stay: they are what its recovery link resumes (the order came first here, or was read
        # first: the topics are consumed apart).
        return replace(cur, customer=s.customer, started_event_id=s.event_id, started_at=s.at,
                       marketing_consent=s.marketing_consent)
    return new_watch


def _belongs_to_older_checkout(cur: Checkout | None, order_id: str, at: datetime) -> bool:
    return (cur is not None and cur.order_id != order_id and cur.started_at is not None and at < cur.started_at)


def on_order_placed(cur: Checkout | None, p: Placed, abandon_after: timedelta) -> Checkout | None:
    """Manual payment closes the watch; a gateway order keeps it open, due abandon_after after placement,
    until its order.status says pending or paid. The watch then holds the order's items: they are what a
    recovery link resumes (the order, to pay), since placing the order emptied the cart."""
    if _belongs_to_older_checkout(cur, p.order_id, p.at):
        return None
    if cur is not None and (cur.order_id == p.order_id or cur.state in {CheckoutState.ORDERED, CheckoutState.PAID}):
        return None
    base = cur or Checkout(cart_id=p.cart_id, shop_id=p.shop_id, state=CheckoutState.OPEN, customer=p.customer,
                           items=p.items)
    placed = replace(base, order_id=p.order_id, order_at=p.at)
    if not p.gateway:
        return replace(placed, state=CheckoutState.ORDERED)
    placed = replace(placed, items=p.items)
    if base.state == CheckoutState.CANCELED:
        # another unpaid order after a canceled one, with no checkout between: its link offers payment again, but
        # the reminders of this checkout are over
        return replace(placed, state=CheckoutState.ABANDONED, order_closed=None)
    if base.state == CheckoutState.ABANDONED or base.reminders_sent > 0:
        return placed  # reminders already under way: an unpaid order neither reopens nor re-times them
    return replace(placed, state=CheckoutState.OPEN, due_at=p.at + abandon_after)


def on_order_status(cur: Checkout | None, st: StatusChanged, abandon_after: timedelta) -> Checkout | None:
    """pending/processed/delivered or paid closes the watch as paid (even after an abandonment: nothing more is
    sent); incomplete (an unpaid gateway order, possibly seen before its order.placed) watches the order; canceled
    before any payment ends the watch of that order (`on_order_canceled`)."""
    if _belongs_to_older_checkout(cur, st.order_id, st.at):
        return None
    base = cur or Checkout(cart_id=st.cart_id, shop_id=st.shop_id, state=CheckoutState.OPEN, customer=st.customer,
                           items=st.items)
    if st.status in COMMITTED_STATUSES or st.payment_status == "paid":
        if cur is not None and cur.order_id == st.order_id and cur.state in {CheckoutState.PAID,
                                                                            CheckoutState.ORDERED}:
            return None
        return replace(base, state=CheckoutState.PAID, order_id=st.order_id, order_at=base.order_at or st.at)
    if st.status == "incomplete":
        if cur is not None and (cur.order_id == st.order_id or cur.state != CheckoutState.OPEN):
            return None
        if cur is not None and cur.reminders_sent > 0:
            return replace(cur, order_id=st.order_id, order_at=st.at, items=st.items)
        return replace(base, items=st.items, state=CheckoutState.OPEN, order_id=st.order_id, order_at=st.at,
                       due_at=st.at + abandon_after)
    if st.status == OrderStatus.CANCELED and st.payment_status in NEVER_PAID:
        return on_order_canceled(cur, st)
    return None


def on_order_canceled(cur: Checkout | None, st: StatusChanged) -> Checkout | None:
    """The unpaid gateway order a watch holds was canceled or expired: the watch ends (CANCELED, never claimed, so
    no further reminder, whether or not one was sent), keeping the order's items for the recovery link to offer
    again, and why (`OrderClosed`). Only the watch of that very order (or none yet: the cancel was read before its
    order.placed, which then changes nothing) is touched; a watch of another order or a newer checkout is left as
    it is, and so is one already paid or of a manual order (the view shows those as ordered)."""
    closed = OrderClosed.EXPIRED if st.reason == EXPIRED_REASON else OrderClosed.CANCELED
    if cur is None:
        return Checkout(cart_id=st.cart_id, shop_id=st.shop_id, state=CheckoutState.CANCELED, customer=st.customer,
                        items=st.items, order_id=st.order_id, order_at=st.at, order_closed=closed.value)
    if cur.order_id != st.order_id or cur.state not in {CheckoutState.OPEN, CheckoutState.ABANDONED}:
        return None
    return replace(cur, state=CheckoutState.CANCELED, items=st.items or cur.items, order_closed=closed.value)


def resume(cart_status: str, cart_order_id: str | None, watch: Checkout | None) -> dict[str, str] | None:
    """What GET /carts/{cart_id} tells the storefront to do with a cart (its `resume`), or None for an ordered cart
    that is only shown for reference:

    - an open cart: `{"kind": "cart"}`, its items;
    - ordered, its gateway order unpaid (watched, reminded or not): `{"kind": "payment", "order_id"}`, pay that order;
    - ordered, that unpaid order canceled or expired: `{"kind": "reorder", "order_id", "reason": "expired" |
      "canceled"}`, the order's items to put in a new cart (the shop no longer accepts a payment for it).

    For payment and reorder the items shown are the watch's (the order's), since placing the order emptied the cart.
    """
    if cart_status != "ordered":
        return {"kind": "cart"}
    if watch is None or cart_order_id is None or watch.order_id != cart_order_id:
        return None
    if watch.state in {CheckoutState.OPEN, CheckoutState.ABANDONED}:
        return {"kind": "payment", "order_id": cart_order_id}
    if watch.state == CheckoutState.CANCELED:
        reason = watch.order_closed or OrderClosed.CANCELED.value
        return {"kind": "reorder", "order_id": cart_order_id, "reason": reason}
    return None


def recovery_url(public_store_url: str, shop_id: str, cart_id: str, token: str) -> str:
    """The storefront page that resumes the cart: PUBLIC_STORE_URL/cart/<cart_id>?shop_id=<shop>&token=<signed>. The
    storefront passes shop_id and token on to GET /carts/{cart_id}, which opens for them without credentials."""
    return (f"{public_store_url.rstrip('/')}/cart/{quote(cart_id, safe='')}?"
            + urlencode({"shop_id": shop_id, "token": token}))


def unsubscribe_url(public_cart_url: str, shop_id: str, email: str, token: str) -> str:
    """The cart service's unsubscribe page for this e-mail in this shop (GET confirms, POST unsubscribes; RFC 8058
    one-click POSTs `List-Unsubscribe=One-Click` to the same URL)."""
    return f"{public_cart_url.rstrip('/')}/unsubscribe?" + urlencode({"shop_id": shop_id, "email": email,
                                                                       "token": token})


# --- recovery reminders --------------------------------------------------------------------------------------

MAX_REMINDERS = 3


@dataclass(frozen=True)
class RecoveryPolicy:
    """A shop's recovery reminders: delays in seconds after the checkout (strictly increasing, at most three; the
    first is the abandon delay), and whether the customer's marketing_consent is needed for any of them."""

    reminders: tuple[int, ...]
    requires_consent: bool = False

    @classmethod
    def of(cls, reminders: Iterable[int] | None, abandon_after: timedelta, requires_consent: bool) -> RecoveryPolicy:
        given = tuple(reminders or ())[:MAX_REMINDERS]
        return cls(given or (int(abandon_after.total_seconds()),), requires_consent)


class ReminderOutcome(StrEnum):
    SEND = "send"
    NO_CONSENT = "no_consent"      # the shop requires marketing_consent and the customer did not give it
    UNSUBSCRIBED = "unsubscribed"  # the customer's e-mail unsubscribed from this shop's reminders
    NO_MORE = "no_more"            # the shop now asks for fewer reminders than this checkout already had
    PAID = "paid"                  # a gateway's payment for the watch's order came; orders has not said paid yet


def next_reminder(c: Checkout, policy: RecoveryPolicy, unsubscribed: bool,
                  payment_seen: bool = False) -> tuple[Checkout, ReminderOutcome]:
    """What a due (claimed) watch becomes: reminder number `c.reminders_sent` is sent, or the reminders stop.

    After a sent reminder the watch stays open, due again after the gap to the next delay, while the shop asks for
    more; then it is abandoned (terminal). Any stop is terminal too, with its reason kept. A payment seen for the
    watch's order closes it as paid, whatever orders later decides of that payment: a customer who paid, even the
    wrong amount, is never asked to come back and pay (the merchant is alerted of a mismatch).
    """
    if payment_seen:
        return replace(c, state=CheckoutState.PAID, reminders_stopped=ReminderOutcome.PAID.value), ReminderOutcome.PAID
    index = c.reminders_sent
    stop = (ReminderOutcome.NO_CONSENT if policy.requires_consent and not c.marketing_consent
            else ReminderOutcome.UNSUBSCRIBED if unsubscribed
            else ReminderOutcome.NO_MORE if index >= len(policy.reminders) else None)
    if stop is not None:
        return replace(c, state=CheckoutState.ABANDONED, reminders_stopped=stop.value), stop
    sent = replace(c, reminders_sent=index + 1)
    if index + 1 < len(policy.reminders) and c.due_at is not None:
        gap = timedelta(seconds=policy.reminders[index + 1] - policy.reminders[index])
        return replace(sent, state=CheckoutState.OPEN, due_at=c.due_at + gap), ReminderOutcome.SEND
    return replace(sent, state=CheckoutState.ABANDONED), ReminderOutcome.SEND


def abandoned_event(c: Checkout, public_store_url: str, occurred_at: datetime, recovery_key: bytes,
                    reminder: int = 0, public_cart_url: str | None = None) -> CheckoutAbandoned:
    """The checkout.abandoned of this checkout's reminder number `reminder`; its id is derived from the shop, the
    checkout (and the unpaid order) and the reminder, so a re-send after a crash dedupes downstream (the first
    reminder keeps the id it had before reminders existed). With `public_cart_url`, it carries the unsubscribe
    link of the customer's e-mail in this shop."""
    since = c.due_at or c.started_at or occurred_at
    unsubscribe = None
    if public_cart_url is not None and c.customer.get("email"):
        email = recovery.normalized_email(c.customer["email"])
        unsubscribe = unsubscribe_url(public_cart_url, c.shop_id, email, recovery.sign_unsubscribe(
            recovery_key, c.shop_id, email, recovery.unsubscribe_expiry(since)))
    return CheckoutAbandoned(
        event_id=derived_event_id("checkout.abandoned", c.shop_id, c.cart_id, c.started_event_id or "-",
                                  c.order_id or "-", *([f"reminder-{reminder}"] if reminder else [])),
        reminder=reminder,
        unsubscribe_url=unsubscribe,
        occurred_at=occurred_at,
        shop_id=c.shop_id,
        cart_id=c.cart_id,
        customer=Customer.model_validate(c.customer),
        items=[CartItem.model_validate(i) for i in c.items],
        started_at=c.started_at or c.order_at or occurred_at,
        order_id=c.order_id,
        recovery_url=recovery_url(public_store_url, c.shop_id, c.cart_id, recovery.sign(
            recovery_key, c.shop_id, c.cart_id, recovery.expiry(since))),
    )
