"""Every event of the current contract, v1.1: the v1 models (`contracts/v1.py`, frozen) with optional fields only.

Contract v1.1 (DESIGN.md, "Contract v1.1"): a v1 producer's messages stay valid and mean what they meant. Each model
that gained fields extends its v1 model, so the v1 fields keep their types, bounds and validators by construction;
the models v1.1 left alone are v1's own classes. What is new:

- `order.placed`: `shipping_address`, `billing_address`, `shipping`, `discount_cents`, `tax_cents`, `note`, `locale`;
- `checkout.started`: `marketing_consent` (default false);
- `shop.settings`: `locale` (default `en`), `expire_unpaid_after_seconds` (default 7 days),
  `recovery_reminders_seconds`, `recovery_requires_consent` (default false), `manage_stock` (default true);
- `order.status`: payment statuses `partially_refunded` and `refunded`; `refunded_cents`, `refund_due_cents`
  (default 0); `refund_id` and `refund_cents` on the change a refund made (notify's "refunded" mail, once per
  refund); and the order's own v1.1 fields as order.placed gave them (all optional), for the merchant's mail;
- `checkout.abandoned`: `reminder` (which of the shop's recovery reminders, from 0; default 0) and `unsubscribe_url`
  (the link that stops further reminders for that e-mail in that shop; optional);
- the input topic `payment.refunded` (`PaymentRefunded`);
- the output topic `order.flagged` (`OrderFlagged`): one per (order, flag) the orders service raises (a payment of
  another amount or currency, a payment after cancel or expiry, a refund due), turned by notify into one alert mail
  to the merchant, as inventory.deductions' shortfalls are;
- the output topic `mail.status` (`MailStatusChanged`): notify's word on each e-mail, for the back office.

Bounds as everywhere else (`contracts/base.py`): money ≤ MAX_INT cents, texts bounded and free of control characters,
lists bounded, durations bounded.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator

from contracts import v1
from contracts.base import (
    MAX_INT,
    Cents,
    Country,
    Currency,
    Event,
    Identifier,
    LocaleTag,
    Model,
    Note,
    Text,
    Url,
    UtcDatetime,
)
from contracts.v1 import (
    CartCustomer,
    CartItem,
    CartUpdated,
    ChangedBy,
    Customer,
    CustomerMessageRequested,
    DeductionKind,
    DeductionLine,
    InventoryDeduction,
    InventoryLevel,
    OrderCancelRequested,
    OrderItem,
    OrderStatus,
    Payment,
    PaymentConfirmed,
    StockAdjusted,
)

VERSION = "1.1"

__all__ = [
    "COMMITTED_STATUSES", "EXPIRED_REASON", "OrderFlag", "OrderFlagged",
    "VERSION", "Address", "CartCustomer", "CartItem", "CartUpdated", "ChangedBy", "CheckoutAbandoned",
    "CheckoutStarted", "Customer", "CustomerMessageRequested", "DeductionKind", "DeductionLine", "InventoryDeduction",
    "InventoryLevel", "MailState", "MailStatusChanged", "OrderCancelRequested", "OrderItem", "OrderPlaced",
    "OrderStatus", "OrderStatusChanged",
    "Payment", "PaymentConfirmed", "PaymentRefunded", "PaymentStatus", "ShippingChoice", "ShopSettings",
    "StockAdjusted",
]

DAY = 24 * 3600

Line = Annotated[Text, Field(min_length=1)]
"""One line of an address or a label: 1-500 characters, no control characters."""
Phone = Annotated[Text, Field(min_length=1, max_length=64)]
PostalCode = Annotated[Text, Field(max_length=32)]
ReminderDelay = Annotated[int, Field(gt=0, le=30 * DAY)]


class PaymentStatus(StrEnum):
    """v1's three statuses, then v1.1's two refund statuses."""

    INCOMPLETE = "incomplete"
    AWAITING = "awaiting"
    PAID = "paid"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


class OrderFlag(StrEnum):
    """What the merchant must look at on an order (DESIGN.md, "Order and payment rules")."""

    PAYMENT_MISMATCH = "payment_mismatch"
    """A payment of another amount or currency than the order's."""
    PAYMENT_AFTER_CANCEL = "payment_after_cancel"
    """A payment for an order already canceled (by the customer, the merchant or expiry)."""
    REFUND_DUE = "refund_due"
    """A canceled paid order that still owes the customer money (`refund_due_cents`)."""


# --- rules every consumer of order.status reads the same way ---------------------------------------------------

COMMITTED_STATUSES = frozenset({OrderStatus.PENDING, OrderStatus.PROCESSED, OrderStatus.DELIVERED})
"""The statuses of a committed order (DESIGN.md, "Order and payment rules"): its stock is deducted and the customer
was sent a confirmation; `incomplete` is an unpaid gateway order, `canceled` the end of either kind."""

EXPIRED_REASON = "expired"
"""The `reason` of the order.status that cancels an unpaid gateway order past its shop's
`expire_unpaid_after_seconds` (status `canceled`, changed_by `system`, DESIGN.md)."""


# --- parts -------------------------------------------------------------------------------------------------


class Address(Model):
    """A postal address as a label shows it. `postal_code` may be empty where a country has none (e.g. HK)."""

    name: Line
    line1: Line
    line2: Text | None = None
    postal_code: PostalCode
    city: Line
    region: Text | None = None
    country: Country
    phone: Phone | None = None


class ShippingChoice(Model):
    """How the order travels and what the customer pays for it."""

    method: Line
    carrier: Text | None = None
    cost_cents: Cents


# --- inputs --------------------------------------------------------------------------------------------------


class CheckoutStarted(v1.CheckoutStarted):
    marketing_consent: bool = Field(default=False, description="whether the customer agreed to reminder e-mails")


class OrderPlaced(v1.OrderPlaced):
    shipping_address: Address | None = None
    billing_address: Address | None = None
    shipping: ShippingChoice | None = None
    discount_cents: Cents | None = None
    tax_cents: Cents | None = None
    note: Note | None = Field(default=None, description="the customer's note, up to 2,000 characters")
    locale: LocaleTag | None = Field(default=None, description="the customer's language, BCP 47 (fr-FR)")


class ShopSettings(v1.ShopSettings):
    locale: LocaleTag = Field(default="en", description="the shop's language, BCP 47; mails and back office")
    expire_unpaid_after_seconds: int = Field(default=7 * DAY, gt=0, le=365 * DAY,
                                             description="unpaid gateway orders are canceled (expired) after this")
    recovery_reminders_seconds: list[ReminderDelay] | None = Field(
        default=None, min_length=1, max_length=3,
        description="one recovery e-mail per entry, in seconds after checkout.started, strictly increasing; the "
                    "first entry replaces abandon_after_seconds when both are given",
    )
    recovery_requires_consent: bool = Field(default=False,
                                            description="no recovery e-mail without the customer's marketing_consent")
    manage_stock: bool = Field(default=True, description="false: no stock checks, unknown SKUs never refused")

    @field_validator("recovery_reminders_seconds")
    @classmethod
    def _strictly_increasing(cls, reminders: list[int] | None) -> list[int] | None:
        if reminders is not None and any(a >= b for a, b in zip(reminders, reminders[1:], strict=False)):
            raise ValueError("entries must be strictly increasing (one reminder per delay)")
        return reminders


class PaymentRefunded(Event):
    """A gateway (or the merchant through the back office) refunded part or all of a payment; deduplicated by
    (shop_id, order_id, refund_id)."""

    order_id: Identifier
    refund_id: Identifier
    amount_cents: int = Field(gt=0, le=MAX_INT)
    currency: Currency
    provider: Identifier
    reason: Text | None = None


# --- outputs -------------------------------------------------------------------------------------------------


class CheckoutAbandoned(v1.CheckoutAbandoned):
    """One per (checkout, reminder): the shop's `recovery_reminders_seconds` may ask for up to three."""

    reminder: int = Field(default=0, ge=0, le=2, description="which reminder this is: 0 for the first, up to 2")
    unsubscribe_url: Url | None = Field(default=None,
                                        description="stops further reminders for this e-mail in this shop")


class OrderStatusChanged(v1.OrderStatusChanged):
    """One per real change of an order's status or payment status (topic `order.status`)."""

    payment_status: PaymentStatus
    previous_payment_status: PaymentStatus | None = None
    refunded_cents: Cents = Field(default=0, description="what has been refunded so far")
    refund_due_cents: Cents = Field(default=0, description="what a canceled paid order still owes the customer")
    refund_id: Identifier | None = Field(default=None, description="the refund this change applied (a refund's "
                                         "order.status only): its refund_id, once per (shop, order, refund_id)")
    refund_cents: Cents | None = Field(default=None, description="the amount of that refund")
    # What order.placed carried (v1.1), passed on so a consumer (the merchant's new-order mail) can show it; absent
    # for an order placed without them.
    shipping_address: Address | None = None
    billing_address: Address | None = None
    shipping: ShippingChoice | None = None
    discount_cents: Cents | None = None
    tax_cents: Cents | None = None
    note: Note | None = Field(default=None, description="the customer's note, up to 2,000 characters")
    locale: LocaleTag | None = Field(default=None, description="the customer's language, BCP 47 (fr-FR)")


class MailState(StrEnum):
    """What the back office shows of an e-mail: notify's outbox row state, with a waiting row split by its cause."""

    QUEUED = "queued"  # waiting for its first try, or re-queued by an operator
    RETRYING = "retrying"  # a transient failure (server away, 4xx): tried again with backoff, never given up
    SENT = "sent"
    FAILED = "failed"  # refused for good (a 5xx naming the recipient, an unusable address); `reply` says why


class MailStatusChanged(Event):
    """One per change of an e-mail's state that a merchant should see (topic `mail.status`, produced by notify).

    The newest `changed_at` wins: a consumer keeps the latest per (shop_id, subject, subject_id, kind), so a
    redelivered or replayed older state changes nothing.
    """

    subject: Literal["order", "cart"]
    subject_id: Identifier = Field(description="the order_id or cart_id the mail is about")
    kind: Annotated[Text, Field(min_length=1, max_length=200)] = Field(
        description="confirmation, new_order, processed, delivered, canceled, shortfall, recovery, message:<id>, …")
    audience: Literal["merchant", "customer"]
    state: MailState
    attempts: int = Field(ge=0, le=MAX_INT)
    reply: Text | None = Field(default=None, description="the SMTP server's last reply or the error, if any")
    message_id: Annotated[Text, Field(min_length=1)]
    changed_at: UtcDatetime


class OrderFlagged(Event):
    """An order raised a flag (topic `order.flagged`): once per (shop, order, flag), its event id derived from the
    three; notify mails the merchant one alert per (order, flag)."""

    order_id: Identifier
    flag: OrderFlag
    detail: Text | None = Field(default=None, description="why, as the back office shows it")
    status: OrderStatus
    payment_status: PaymentStatus
    customer: Customer
    total_cents: Cents
    currency: Currency
    refund_due_cents: Cents = Field(default=0, description="what a canceled paid order still owes the customer")
