"""Contract v1 as released, frozen: every event, inputs (storefronts, gateways, back office) and outputs (services).

Do not change a field here. The current contract (`contracts/events.py`, v1.1) extends these models with optional
fields only, so every v1 field keeps its type, bounds and validators by construction; its JSON Schemas are kept as
released under `contracts/schemas/v1/`, and `tests/unit/test_contracts_compat.py` checks that these models still
export exactly them and that the current schemas accept every v1 message.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from contracts.base import (
    MAX_INT,
    Cents,
    Currency,
    Email,
    Event,
    Identifier,
    LongText,
    Model,
    Sku,
    Text,
    Url,
    UtcDatetime,
)


class OrderStatus(StrEnum):
    INCOMPLETE = "incomplete"
    PENDING = "pending"
    PROCESSED = "processed"
    DELIVERED = "delivered"
    CANCELED = "canceled"


class PaymentStatus(StrEnum):
    INCOMPLETE = "incomplete"
    AWAITING = "awaiting"
    PAID = "paid"


class ChangedBy(StrEnum):
    SYSTEM = "system"
    MERCHANT = "merchant"
    CUSTOMER = "customer"


class DeductionKind(StrEnum):
    DEDUCTED = "deducted"
    RETURNED = "returned"


# --- parts -------------------------------------------------------------------------------------------------


class CartCustomer(Model):
    customer_id: Identifier | None = None
    email: Email | None = None
    name: Text | None = None


class Customer(Model):
    email: Email
    name: Text | None = None
    customer_id: Identifier | None = None


class CartItem(Model):
    sku: Sku
    quantity: int = Field(ge=0, le=100_000)
    name: Text | None = None
    unit_price_cents: Cents | None = None


class OrderItem(Model):
    sku: Sku
    name: Text
    quantity: int = Field(gt=0, le=100_000)
    unit_price_cents: Cents


class Payment(Model):
    method: Literal["gateway", "manual"]
    provider: Identifier


class DeductionLine(Model):
    sku: Sku
    asked: int = Field(ge=0, le=MAX_INT)
    moved: int = Field(ge=0, le=MAX_INT)


# --- inputs --------------------------------------------------------------------------------------------------


class CartUpdated(Event):
    """The whole cart as it now is: a snapshot, not a delta."""

    cart_id: Identifier
    customer: CartCustomer = CartCustomer()
    items: list[CartItem] = Field(max_length=500)


class CheckoutStarted(Event):
    cart_id: Identifier
    customer: Customer
    items: list[CartItem] = Field(max_length=500)
    total_cents: Cents
    currency: Currency


class OrderPlaced(Event):
    order_id: Identifier
    cart_id: Identifier
    customer: Customer
    items: list[OrderItem] = Field(min_length=1, max_length=500)
    total_cents: Cents
    currency: Currency
    payment: Payment


class PaymentConfirmed(Event):
    """May arrive more than once, and before its order.placed."""

    order_id: Identifier
    payment_id: Identifier
    amount_cents: Cents
    currency: Currency
    provider: Identifier


class StockAdjusted(Event):
    """A merchant's restock (delta) or count (set_to); exactly one of the two."""

    sku: Sku
    delta: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    set_to: int | None = Field(default=None, ge=0, le=1_000_000_000)
    reason: Text | None = None

    @model_validator(mode="after")
    def _exactly_one_change(self) -> StockAdjusted:
        if (self.delta is None) == (self.set_to is None):
            raise ValueError("exactly one of delta or set_to is required")
        return self


class ShopSettings(Event):
    name: Text = Field(min_length=1)
    merchant_email: Email
    abandon_after_seconds: int | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    ignore_incomplete_orders: bool = True


class OrderCancelRequested(Event):
    order_id: Identifier
    reason: Text | None = None


# --- outputs -------------------------------------------------------------------------------------------------


class OrderStatusChanged(Event):
    """One per real change of an order's status or payment status (topic `order.status`)."""

    order_id: Identifier
    cart_id: Identifier | None = None
    status: OrderStatus
    payment_status: PaymentStatus
    previous_status: OrderStatus | None = None
    previous_payment_status: PaymentStatus | None = None
    changed_by: ChangedBy
    reason: Text | None = None
    customer: Customer
    items: list[OrderItem]
    total_cents: Cents
    currency: Currency
    payment: Payment


class InventoryLevel(Event):
    sku: Sku
    available: int = Field(ge=0, le=MAX_INT)
    updated_at: UtcDatetime


class InventoryDeduction(Event):
    """One per order and kind; a line with moved < asked is a shortfall."""

    order_id: Identifier
    kind: DeductionKind
    lines: list[DeductionLine]


class CheckoutAbandoned(Event):
    cart_id: Identifier
    customer: Customer
    items: list[CartItem]
    started_at: UtcDatetime
    order_id: Identifier | None = None
    recovery_url: Url


class CustomerMessageRequested(Event):
    """A merchant's free-text message about an order, to be mailed to its customer (topic `order.message`)."""

    order_id: Identifier
    message_id: Identifier
    text: LongText
    customer: Customer


VERSION = "1"
MODELS: dict[str, type[Event]] = {
    "cart.updated": CartUpdated,
    "checkout.started": CheckoutStarted,
    "order.placed": OrderPlaced,
    "payment.confirmed": PaymentConfirmed,
    "stock.adjusted": StockAdjusted,
    "shop.settings": ShopSettings,
    "order.cancel_requested": OrderCancelRequested,
    "order.status": OrderStatusChanged,
    "order.message": CustomerMessageRequested,
    "inventory.levels": InventoryLevel,
    "inventory.deductions": InventoryDeduction,
    "checkout.abandoned": CheckoutAbandoned,
}
"""Each topic of contract v1 and its model."""
