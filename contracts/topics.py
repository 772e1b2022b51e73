"""The topic catalogue: the one place that names every topic, its key, its model and how it is kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from contracts import events as ev
from contracts.base import Event

MAX_EVENT_BYTES = 512 * 1024
"""Larger values are dead-lettered unread; the broker itself accepts up to 2 MiB so they can be kept there."""

DAY_MS = 24 * 3600 * 1000
FOREVER = -1
"""retention.ms=-1: kept until deleted by hand. Sources of truth a replay or rebuild reads from are kept forever."""
DLQ_RETENTION_MS = 30 * DAY_MS
"""Dead letters are kept 30 days: time to fix the cause and redrive."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    model: type[Event]
    key: Callable[[Event], str]
    key_doc: str
    produced_by: str
    compacted: bool = False
    retention_ms: int = FOREVER
    """How long the broker keeps a record (retention.ms); compacted topics keep the latest per key forever."""

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    @property
    def cleanup_policy(self) -> Literal["compact", "delete"]:
        return "compact" if self.compacted else "delete"

    @property
    def configs(self) -> dict[str, str]:
        """The topic settings the catalogue declares (`orderflow topics` creates with them and reports drift)."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}

    @property
    def dlq_configs(self) -> dict[str, str]:
        return {"cleanup.policy": "delete", "retention.ms": str(DLQ_RETENTION_MS)}

    def key_of(self, event: Event) -> str:
        return self.key(event)


def _by(field: str) -> Callable[[Event], str]:
    return lambda e: str(getattr(e, field))


def _shop_sku(e: Event) -> str:
    return f"{e.shop_id}/{e.sku}"  # type: ignore[attr-defined]


CART_UPDATED = TopicSpec("cart.updated", ev.CartUpdated, _by("cart_id"), "cart_id", "storefront",
                         retention_ms=90 * DAY_MS)
CHECKOUT_STARTED = TopicSpec("checkout.started", ev.CheckoutStarted, _by("cart_id"), "cart_id", "storefront",
                             retention_ms=90 * DAY_MS)  # abandonment windows are at most 30 days
ORDER_PLACED = TopicSpec("order.placed", ev.OrderPlaced, _by("order_id"), "order_id", "storefront")
PAYMENT_CONFIRMED = TopicSpec(
    "payment.confirmed", ev.PaymentConfirmed, _by("order_id"), "order_id", "payment gateway"
)
STOCK_ADJUSTED = TopicSpec("stock.adjusted", ev.StockAdjusted, _shop_sku, "shop_id/sku", "back office")
SHOP_SETTINGS = TopicSpec(
    "shop.settings", ev.ShopSettings, _by("shop_id"), "shop_id", "back office", compacted=True
)
ORDER_CANCEL_REQUESTED = TopicSpec(
    "order.cancel_requested", ev.OrderCancelRequested, _by("order_id"), "order_id", "storefront"
)
PAYMENT_REFUNDED = TopicSpec(
    "payment.refunded", ev.PaymentRefunded, _by("order_id"), "order_id", "payment gateway, back office"
)
ORDER_STATUS = TopicSpec("order.status", ev.OrderStatusChanged, _by("order_id"), "order_id", "orders")
ORDER_MESSAGE = TopicSpec("order.message", ev.CustomerMessageRequested, _by("order_id"), "order_id", "orders",
                          retention_ms=90 * DAY_MS)  # notify records what it sent
ORDER_FLAGGED = TopicSpec("order.flagged", ev.OrderFlagged, _by("order_id"), "order_id", "orders",
                          retention_ms=90 * DAY_MS)  # notify records the alerts it sent
INVENTORY_LEVELS = TopicSpec(
    "inventory.levels", ev.InventoryLevel, _shop_sku, "shop_id/sku", "inventory", compacted=True
)
INVENTORY_DEDUCTIONS = TopicSpec(
    "inventory.deductions", ev.InventoryDeduction, _by("order_id"), "order_id", "inventory", retention_ms=90 * DAY_MS
)
CHECKOUT_ABANDONED = TopicSpec(
    "checkout.abandoned", ev.CheckoutAbandoned, _by("cart_id"), "cart_id", "cart", retention_ms=90 * DAY_MS
)
MAIL_STATUS = TopicSpec(
    "mail.status", ev.MailStatusChanged, _by("subject_id"), "order_id or cart_id (subject_id)", "notify"
)

INPUTS: tuple[TopicSpec, ...] = (
    CART_UPDATED,
    CHECKOUT_STARTED,
    ORDER_PLACED,
    PAYMENT_CONFIRMED,
    STOCK_ADJUSTED,
    SHOP_SETTINGS,
    ORDER_CANCEL_REQUESTED,
    PAYMENT_REFUNDED,
)
OUTPUTS: tuple[TopicSpec, ...] = (
    ORDER_STATUS,
    ORDER_MESSAGE,
    ORDER_FLAGGED,
    INVENTORY_LEVELS,
    INVENTORY_DEDUCTIONS,
    CHECKOUT_ABANDONED,
    MAIL_STATUS,
)
ALL: tuple[TopicSpec, ...] = INPUTS + OUTPUTS
BY_NAME: dict[str, TopicSpec] = {t.name: t for t in ALL}
BY_MODEL: dict[type[Event], TopicSpec] = {t.model: t for t in ALL}


def spec_for(model_or_name: type[Event] | str) -> TopicSpec:
    if isinstance(model_or_name, str):
        return BY_NAME[model_or_name]
    return BY_MODEL[model_or_name]
