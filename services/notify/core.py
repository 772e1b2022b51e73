"""Which e-mails an event implies, and the rules of the mail outbox (keys, Message-IDs, retries).

Pure: no I/O, no faust, no asyncpg. Every mail is keyed by (ref, kind); the outbox stores each key once, so
a duplicate, a replay or a restart decides the same mails again and they are simply not inserted twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from babel import Locale

from contracts import (
    Address,
    CheckoutAbandoned,
    CustomerMessageRequested,
    DeductionKind,
    InventoryDeduction,
    MailState,
    MailStatusChanged,
    OrderStatus,
    OrderStatusChanged,
    derived_event_id,
)
from orderflow import i18n

Audience = Literal["merchant", "customer"]

SHOP_SETTINGS_GRACE_SECONDS = 60.0
"""How long a customer mail waits for its shop's settings (name) before going out under the shop id."""

SHOP_SETTINGS_RECHECK_SECONDS = 600.0
"""How often a merchant mail waiting for its shop's settings is looked at again; shop.settings wakes it at once."""


def wait_for_shop_seconds(audience: Audience, waited_seconds: float) -> float:
    """How long to put a mail aside that cannot be addressed yet (see `resolve_recipient`)."""
    if audience == "customer":
        return max(1.0, SHOP_SETTINGS_GRACE_SECONDS - waited_seconds)
    return SHOP_SETTINGS_RECHECK_SECONDS


@dataclass(frozen=True)
class MailIntent:
    """One e-mail to send, once per (ref, kind). `to_addr` None means the shop's merchant address."""

    ref: str
    kind: str
    shop_id: str
    audience: Audience
    template: str
    to_addr: str | None
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def message_id(self) -> str:
        return message_id(self.ref, self.kind)


def order_ref(shop_id: str, order_id: str) -> str:
    """Ids are only unique within a shop; the slash cannot occur in an Identifier, so the pair is unambiguous."""
    return f"{shop_id}/{order_id}"


def message_id(ref: str, kind: str) -> str:
    """Deterministic: a re-send of the same mail carries the same Message-ID, so mail clients can fold it."""
    digest = hashlib.sha256(f"{ref}|{kind}".encode()).hexdigest()[:32]
    return f"<{digest}@orderflow>"


def kind_family(kind: str) -> str:
    """Metric label for a kind: `message:<id>` counts as `message` (bounded cardinality)."""
    return kind.split(":", 1)[0]


def address_lines(address: Address | None) -> list[str]:
    """A postal address as the lines of a parcel label (empty parts left out); [] without an address."""
    if address is None:
        return []
    city = " ".join(part for part in (address.postal_code, address.city) if part)
    lines = [address.name, address.line1, address.line2, city, address.region, address.country]
    return [line for line in lines if line] + ([f"Tel. {address.phone}"] if address.phone else [])


def _order_context(e: OrderStatusChanged) -> dict[str, Any]:
    """What the order's mails show. Amounts stay integer minor units with the currency and the payment status its
    value: the sender writes them in the mail's locale when it renders the mail (services/notify/render.py)."""
    shipping = e.shipping
    return {
        "order_id": e.order_id,
        "customer_name": e.customer.name or "",
        "customer_email": e.customer.email,
        "currency": e.currency,
        "items": [{"sku": i.sku, "name": i.name, "quantity": i.quantity, "unit_price_cents": i.unit_price_cents}
                  for i in e.items],
        "total_cents": e.total_cents,
        "payment_status": e.payment_status.value,
        "payment_method": e.payment.method,
        "payment_provider": e.payment.provider,
        "reason": e.reason or "",
        # contract v1.1, all optional: empty when the order was placed without them
        "locale": e.locale,
        "shipping_address": address_lines(e.shipping_address),
        "billing_address": address_lines(e.billing_address),
        "shipping": shipping.model_dump(mode="json") if shipping else "",
        "discount_cents": e.discount_cents or 0,
        "tax_cents": e.tax_cents,
        "note": e.note or "",
    }


_COMMITTED_BEFORE = {OrderStatus.PENDING, OrderStatus.PROCESSED, OrderStatus.DELIVERED}
_CUSTOMER_STATUS_MAILS = {
    OrderStatus.PROCESSED: "processed",
    OrderStatus.DELIVERED: "delivered",
    OrderStatus.CANCELED: "canceled",
}


def mails_for_status(e: OrderStatusChanged) -> list[MailIntent]:
    """New committed order: merchant + customer confirmation; later status changes: one customer mail each.

    A refund's change: the customer's "refunded" mail, once per refund_id.
    Incomplete orders (gateway not paid) get nothing; a payment-only change (awaiting → paid) gets nothing;
    cancelling an order that was never committed gets nothing.
    """
    ref = order_ref(e.shop_id, e.order_id)
    ctx = _order_context(e)
    if e.refund_id is not None and e.refund_cents:
        return [_refunded(e, ref, ctx, e.refund_id, e.refund_cents)]
    if e.status == OrderStatus.PENDING:
        if e.previous_status not in (None, OrderStatus.INCOMPLETE):
            return []
        return [
            MailIntent(ref, "new_order", e.shop_id, "merchant", "new_order", None, ctx),
            MailIntent(ref, "confirmation", e.shop_id, "customer", "confirmation", e.customer.email, ctx),
        ]
    kind = _CUSTOMER_STATUS_MAILS.get(e.status)
    if kind is None or e.previous_status == e.status:
        return []
    if e.status == OrderStatus.CANCELED and e.previous_status not in _COMMITTED_BEFORE:
        return []
    return [MailIntent(ref, kind, e.shop_id, "customer", kind, e.customer.email, ctx)]


def _refunded(e: OrderStatusChanged, ref: str, ctx: dict[str, Any], refund_id: str, refund_cents: int) -> MailIntent:
    """The customer's "refunded" mail: one per refund (DESIGN.md), keyed by its refund_id, so a redelivered or
    replayed order.status inserts nothing new. A refund changes no order status, so it is the change's only mail."""
    context = {**ctx, "refund_id": refund_id, "refund_cents": refund_cents, "refunded_cents": e.refunded_cents}
    return MailIntent(ref, f"refunded:{refund_id}", e.shop_id, "customer", "refunded", e.customer.email, context)


def mails_for_deduction(e: InventoryDeduction) -> list[MailIntent]:
    """A deduction that moved less than asked: one alert to the merchant naming the short items."""
    if e.kind != DeductionKind.DEDUCTED:
        return []
    short = [{"sku": line.sku, "asked": line.asked, "moved": line.moved, "missing": line.asked - line.moved}
             for line in e.lines if line.moved < line.asked]
    if not short:
        return []
    ref = order_ref(e.shop_id, e.order_id)
    return [MailIntent(ref, "shortfall", e.shop_id, "merchant", "shortfall", None,
                       {"order_id": e.order_id, "short_items": short})]


def mails_for_abandoned(e: CheckoutAbandoned) -> list[MailIntent]:
    """One recovery mail per reminder of the checkout: the first keeps the kind `recovery` it always had (so a
    replay finds the mails sent before reminders existed), the next ones are `recovery:<n>`."""
    ctx = {
        "cart_id": e.cart_id,
        "customer_name": e.customer.name or "",
        "items": [{"sku": i.sku, "name": i.name or i.sku, "quantity": i.quantity} for i in e.items],
        "recovery_url": e.recovery_url,
        "unsubscribe_url": e.unsubscribe_url,
    }
    ref = order_ref(e.shop_id, e.cart_id)
    kind = f"recovery:{e.reminder}" if e.reminder else "recovery"
    return [MailIntent(ref, kind, e.shop_id, "customer", "recovery", e.customer.email, ctx)]


def mails_for_message(e: CustomerMessageRequested) -> list[MailIntent]:
    ctx = {"order_id": e.order_id, "customer_name": e.customer.name or "", "text": e.text}
    ref = order_ref(e.shop_id, e.order_id)
    return [MailIntent(ref, f"message:{e.message_id}", e.shop_id, "customer", "message", e.customer.email, ctx)]


# --- sending rules -----------------------------------------------------------------------------------------


def backoff_seconds(failures: int, base: float, cap: float = 600.0) -> float:
    """Exponential: base, 2·base, 4·base ... after the 1st, 2nd, 3rd failure; never above cap (MAIL_RETRY_MAX_SECONDS).

    There is no last attempt: a transient failure (the server away, a 4xx) is retried for as long as it lasts, at
    most `cap` seconds apart; only a refusal for good (a 5xx about the mail, an unusable address) ends in `failed`.
    """
    return min(cap, base * (2 ** min(max(0, failures - 1), 60)))


@dataclass(frozen=True)
class Recipient:
    to_addr: str
    shop_name: str
    reply_to: str | None


def mail_locale(audience: Audience, order_locale: str | None, shop_locale: str | None) -> Locale:
    """A customer reads the mail in the order's own locale when it names one we write, else in the shop's; the
    merchant always in the shop's (orderflow/i18n.py: English when neither has a catalog)."""
    return i18n.choose(order_locale, shop_locale) if audience == "customer" else i18n.choose(shop_locale)


def resolve_recipient(audience: Audience, to_addr: str | None, shop_name: str | None, merchant_email: str | None,
                      shop_id: str, waited_seconds: float) -> Recipient | None:
    """Who gets the mail and in whose name; None while it must wait for the shop's settings.

    A merchant mail waits as long as it takes (it has no address without them); a customer mail waits a grace
    period for the shop's name, then goes out under the shop id rather than not at all.
    """
    if audience == "merchant":
        if merchant_email is None or shop_name is None:
            return None
        return Recipient(merchant_email, shop_name, None)
    if to_addr is None:
        raise ValueError("a customer mail needs its address")
    if shop_name is None:
        if waited_seconds < SHOP_SETTINGS_GRACE_SECONDS:
            return None
        return Recipient(to_addr, shop_id, None)
    return Recipient(to_addr, shop_name, merchant_email)


# --- what the back office sees of a mail (topic mail.status) ----------------------------------------------------

def mail_subject(kind: str) -> Literal["order", "cart"]:
    """Recovery mails are about a cart (their ref names the cart); every other kind is about an order."""
    return "cart" if kind.startswith("recovery") else "order"


def shown_state(row_state: str, last_error: str | None) -> MailState:
    """The outbox row's state as a merchant reads it: a waiting row with an error is being retried."""
    if row_state == "sent":
        return MailState.SENT
    if row_state == "failed":
        return MailState.FAILED
    return MailState.RETRYING if last_error else MailState.QUEUED


def mail_status_event(row: dict[str, Any]) -> MailStatusChanged:
    """One mail.status event for a changed outbox row (services/notify/repository.take_unpublished_states).

    Its id is derived from the mail and the moment of the change, so the same change staged again (it is not:
    the flag commits with it) would still be one event downstream.
    """
    shop_id, subject_id = row["ref"].split("/", 1)
    changed_at = row["status_changed_at"]
    return MailStatusChanged(
        event_id=derived_event_id("mail.status", row["ref"], row["kind"], changed_at.isoformat()),
        occurred_at=changed_at, shop_id=shop_id, subject=mail_subject(row["kind"]), subject_id=subject_id,
        kind=row["kind"], audience=row["audience"], state=shown_state(row["state"], row["last_error"]),
        attempts=row["attempts"], reply=_one_line(row["last_error"]), message_id=row["message_id"],
        changed_at=changed_at,
    )


def _one_line(error: str | None) -> str | None:
    """A server's reply, fit for the contract's Text: one line, no control characters, at most 500 characters."""
    if not error:
        return None
    return " ".join("".join(ch if ch.isprintable() else " " for ch in error).split())[:500] or None
