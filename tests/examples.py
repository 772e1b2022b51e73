"""One valid example of every event model, with fresh ids each call so tests never collide on a shared broker."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import contracts as c


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _envelope() -> dict[str, Any]:
    return {"event_id": c.new_event_id(), "occurred_at": c.now(), "shop_id": _id("shop")}


def _customer() -> c.Customer:
    return c.Customer(email="ada@example.com", name="Ada Lovelace", customer_id=_id("cust"))


def _order_items() -> list[c.OrderItem]:
    return [c.OrderItem(sku="MUG-1", name="Mug", quantity=2, unit_price_cents=1250),
            c.OrderItem(sku="TEE-M", name="T-shirt M", quantity=1, unit_price_cents=2000)]


def _cart_items() -> list[c.CartItem]:
    return [c.CartItem(sku="MUG-1", quantity=2, name="Mug", unit_price_cents=1250)]


_FACTORIES: dict[type[c.Event], Callable[[], dict[str, Any]]] = {
    c.CartUpdated: lambda: {"cart_id": _id("cart"), "customer": c.CartCustomer(email="ada@example.com"),
                            "items": _cart_items()},
    c.CheckoutStarted: lambda: {"cart_id": _id("cart"), "customer": _customer(), "items": _cart_items(),
                                "total_cents": 2500, "currency": "EUR"},
    c.OrderPlaced: lambda: {"order_id": _id("order"), "cart_id": _id("cart"), "customer": _customer(),
                            "items": _order_items(), "total_cents": 4500, "currency": "EUR",
                            "payment": c.Payment(method="gateway", provider="paypal")},
    c.PaymentConfirmed: lambda: {"order_id": _id("order"), "payment_id": _id("pay"), "amount_cents": 4500,
                                 "currency": "EUR", "provider": "paypal"},
    c.StockAdjusted: lambda: {"sku": "MUG-1", "delta": 10, "reason": "restock"},
    c.ShopSettings: lambda: {"name": "Ada's Mugs", "merchant_email": "shop@example.com",
                             "abandon_after_seconds": 600, "ignore_incomplete_orders": True},
    c.OrderCancelRequested: lambda: {"order_id": _id("order"), "reason": "changed my mind"},
    c.PaymentRefunded: lambda: {"order_id": _id("order"), "refund_id": _id("refund"), "amount_cents": 1250,
                                "currency": "EUR", "provider": "paypal", "reason": "one mug arrived broken"},
    c.OrderStatusChanged: lambda: {"order_id": _id("order"), "cart_id": _id("cart"), "status": "pending",
                                   "payment_status": "paid", "previous_status": "incomplete",
                                   "previous_payment_status": "incomplete", "changed_by": "system",
                                   "customer": _customer(), "items": _order_items(), "total_cents": 4500,
                                   "currency": "EUR", "payment": c.Payment(method="gateway", provider="ideal")},
    c.CustomerMessageRequested: lambda: {"order_id": _id("order"), "message_id": _id("msg"),
                                         "text": "Your parcel leaves <today> & arrives soon.",
                                         "customer": _customer()},
    c.InventoryLevel: lambda: {"sku": "MUG-1", "available": 7, "updated_at": c.now()},
    c.InventoryDeduction: lambda: {"order_id": _id("order"), "kind": "deducted",
                                   "lines": [c.DeductionLine(sku="MUG-1", asked=2, moved=1)]},
    c.CheckoutAbandoned: lambda: {"cart_id": _id("cart"), "customer": _customer(), "items": _cart_items(),
                                  "started_at": c.now() - timedelta(hours=2), "order_id": _id("order"),
                                  "recovery_url": "https://shop.example.com/cart/resume?c=abc"},
    c.OrderFlagged: lambda: {"order_id": _id("order"), "flag": "payment_after_cancel",
                             "detail": "the order is canceled; a payment cannot reopen it", "status": "canceled",
                             "payment_status": "incomplete", "customer": _customer(), "total_cents": 4500,
                             "currency": "EUR"},
    c.MailStatusChanged: lambda: {"subject": "order", "subject_id": _id("order"), "kind": "confirmation",
                                  "audience": "customer", "state": "failed", "attempts": 1,
                                  "reply": "550 5.1.1 <ada@example.com>: no such user",
                                  "message_id": "<abc@orderflow.example>", "changed_at": c.now()},
}


def example(model: type[c.Event], **overrides: Any) -> c.Event:
    """A valid instance of `model`; keyword arguments replace fields."""
    try:
        fields = _FACTORIES[model]()
    except KeyError:
        raise KeyError(f"no example for {model.__name__}: add one to tests/examples.py") from None
    return model(**{**_envelope(), **fields, **overrides})
