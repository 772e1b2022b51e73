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

from contracts import CartItem, CheckoutAbandoned, Customer, derived_event_id
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


COMMITTED_STATUSES = frozenset({"pending", "processed", "delivered"})

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


def on_checkout_started(cur: Checkout | None, s: Started, abandon_after: timedelta) -> Checkout | None:
    """A checkout newer than everything known starts a new watch; an older one (a replay, a late event) never
    reopens anything: it only fills in what the checkout looked like when it led to an order already known."""
    new_watch = Checkout(cart_id=s.cart_id, shop_id=s.shop_id, state=CheckoutState.OPEN, customer=s.customer,
                         items=s.items, started_event_id=s.event_id, started_at=s.at, due_at=s.at + abandon_after)
    if cur is None:
        return new_watch
    if cur.started_at is not None and s.at <= cur.started_at:
        return None
    if cur.order_at is not None and s.at <= cur.order_at:
        return replace(cur, customer=s.customer, items=s.items, started_event_id=s.event_id, started_at=s.at)
    return new_watch


def _belongs_to_older_checkout(cur: Checkout | None, order_id: str, at: datetime) -> bool:
    return (cur is not None and cur.order_id != order_id and cur.started_at is not None and at < cur.started_at)


def on_order_placed(cur: Checkout | None, p: Placed, abandon_after: timedelta) -> Checkout | None:
    """Manual payment closes the watch; a gateway order keeps it open, due abandon_after after placement,
    until its order.status says pending or paid."""
    if _belongs_to_older_checkout(cur, p.order_id, p.at):
        return None
    if cur is not None and (cur.order_id == p.order_id or cur.state in {CheckoutState.ORDERED, CheckoutState.PAID}):
        return None
    base = cur or Checkout(cart_id=p.cart_id, shop_id=p.shop_id, state=CheckoutState.OPEN, customer=p.customer,
                           items=p.items)
    placed = replace(base, order_id=p.order_id, order_at=p.at)
    if not p.gateway:
        return replace(placed, state=CheckoutState.ORDERED)
    if base.state == CheckoutState.ABANDONED:  # one recovery per checkout: an unpaid order does not reopen it
        return placed
    return replace(placed, state=CheckoutState.OPEN, due_at=p.at + abandon_after)


def on_order_status(cur: Checkout | None, st: StatusChanged, abandon_after: timedelta) -> Checkout | None:
    """pending/processed/delivered or paid closes the watch as paid (even after an abandonment: nothing more is
    sent); incomplete (an unpaid gateway order, possibly seen before its order.placed) watches the order."""
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
        return replace(base, state=CheckoutState.OPEN, order_id=st.order_id, order_at=st.at,
                       due_at=st.at + abandon_after)
    return None


def recovery_url(public_store_url: str, shop_id: str, cart_id: str, token: str) -> str:
    """The storefront page that resumes the cart: PUBLIC_STORE_URL/cart/<cart_id>?shop_id=<shop>&token=<signed>. The
    storefront passes shop_id and token on to GET /carts/{cart_id}, which opens for them without credentials."""
    return (f"{public_store_url.rstrip('/')}/cart/{quote(cart_id, safe='')}?"
            + urlencode({"shop_id": shop_id, "token": token}))


def abandoned_event(c: Checkout, public_store_url: str, occurred_at: datetime,
                    recovery_key: bytes) -> CheckoutAbandoned:
    """The one checkout.abandoned of this checkout; its id is derived from the shop, the checkout (and the unpaid
    order), so a re-send after a crash dedupes downstream."""
    return CheckoutAbandoned(
        event_id=derived_event_id("checkout.abandoned", c.shop_id, c.cart_id, c.started_event_id or "-",
                                  c.order_id or "-"),
        occurred_at=occurred_at,
        shop_id=c.shop_id,
        cart_id=c.cart_id,
        customer=Customer.model_validate(c.customer),
        items=[CartItem.model_validate(i) for i in c.items],
        started_at=c.started_at or c.order_at or occurred_at,
        order_id=c.order_id,
        recovery_url=recovery_url(public_store_url, c.shop_id, c.cart_id, recovery.sign(
            recovery_key, c.shop_id, c.cart_id, recovery.expiry(c.due_at or c.started_at or occurred_at))),
    )
