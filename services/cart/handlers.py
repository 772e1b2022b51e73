"""The cart service's stream handlers: plain functions over a unit of work (`orderflow/runtime/unit.py`).

Carts are snapshots kept newest-by-occurred_at, levels and settings likewise, so redelivery changes nothing.
Checkout watches move through the pure rules of `core` (on_checkout_started / on_order_placed / on_order_status);
their input events are deduplicated by event id too, since a storefront or the orders relay may resend one at a
new offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from contracts import (
    CartUpdated,
    CheckoutStarted,
    InventoryLevel,
    OrderPlaced,
    OrderStatusChanged,
    PaymentConfirmed,
    ShopSettings,
)
from orderflow.runtime.unit import UnitOfWork
from services.cart import core, repository


class CartMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.snapshots = Counter("orderflow_cart_snapshots_total", "Cart snapshots applied", registry=r)
        self.open_carts = Gauge("orderflow_cart_open_carts", "Carts not yet turned into an order", registry=r)
        self.abandoned = Counter("orderflow_cart_abandoned_checkouts_total", "Abandoned checkouts detected",
                                 registry=r)
        self.out_of_stock_shown = Counter("orderflow_cart_out_of_stock_items_shown_total",
                                          "Cart lines shown as out of stock by GET /carts", registry=r)
        self.reminders_stopped = Counter(
            "orderflow_cart_reminders_stopped_total",
            "Due recovery reminders not sent, by reason (no_consent, unsubscribed, no_more, paid)", ["reason"],
            registry=r)
        self.unsubscribes = Counter("orderflow_cart_unsubscribes_total",
                                    "Unsubscribe requests recorded (first per shop and e-mail), by way", ["via"],
                                    registry=r)
        self.detections = Counter(
            "orderflow_cart_abandon_detections_total",
            "Due checkouts claimed (one per checkout and reminder), by what proposed them: the windowed table's "
            "window close or sweep, or the PostgreSQL safety net", ["source"], registry=r)
        self.parked = Counter("orderflow_cart_parked_checkouts_total",
                              "Due checkouts whose checkout.abandoned could not be built (parked with a reason)",
                              registry=r)


@dataclass(frozen=True)
class Context:
    default_abandon_after: timedelta = timedelta(hours=1)
    metrics: CartMetrics | None = field(default=None)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


async def carts_updated(uow: UnitOfWork, events: list[CartUpdated]) -> None:
    await repository.save_snapshots(uow.conn, [(e.cart_id, e.shop_id, _dump(e.customer), [_dump(i) for i in e.items],
                                                e.occurred_at) for e in events])
    metrics = getattr(uow.context, "metrics", None)
    if metrics is not None:
        uow.after_commit(lambda: metrics.snapshots.inc(len(events)))


async def levels_reported(uow: UnitOfWork, events: list[InventoryLevel]) -> None:
    await repository.save_levels(uow.conn, [(e.shop_id, e.sku, e.available, e.updated_at) for e in events])


async def shop_settings_changed(uow: UnitOfWork, events: list[ShopSettings]) -> None:
    await repository.save_shop_settings(uow.conn, [(e.shop_id, e.abandon_after_seconds, e.recovery_reminders_seconds,
                                                    e.recovery_requires_consent, e.occurred_at) for e in events])


Decide = Callable[[core.Checkout | None, Any, timedelta], core.Checkout | None]


async def _watch(uow: UnitOfWork, facts: list[tuple[Any, Any]], decide: Decide) -> None:
    """Apply checkout transitions (`decide` is a core.on_* rule) for the facts of new events, in offset order."""
    new = {e.event_id for e in await uow.fresh([event for event, _ in facts])}
    fresh = []
    for event, fact in facts:
        if event.event_id in new:
            new.discard(event.event_id)
            fresh.append(fact)
    if not fresh:
        return
    current = await repository.lock_checkouts(uow.conn, [(f.shop_id, f.cart_id) for f in fresh])
    after = await repository.abandon_after_by_shop(uow.conn, [f.shop_id for f in fresh])
    default = getattr(uow.context, "default_abandon_after", timedelta(hours=1))
    changed: dict[core.CartKey, core.Checkout] = {}
    for f in fresh:
        key = (f.shop_id, f.cart_id)
        seconds = after.get(f.shop_id)
        decided = decide(current.get(key), f, timedelta(seconds=seconds) if seconds else default)
        if decided is not None:
            current[key] = changed[key] = decided
    await repository.save_checkouts(uow.conn, changed.values())


def started_facts(e: CheckoutStarted) -> core.Started:
    return core.Started(e.cart_id, e.shop_id, e.event_id, _dump(e.customer), [_dump(i) for i in e.items],
                        e.occurred_at, e.marketing_consent)


async def checkouts_started(uow: UnitOfWork, events: list[CheckoutStarted]) -> None:
    await _watch(uow, [(e, started_facts(e)) for e in events], core.on_checkout_started)


async def orders_placed(uow: UnitOfWork, events: list[OrderPlaced]) -> None:
    await repository.mark_ordered(uow.conn, [(e.cart_id, e.shop_id, e.order_id, e.occurred_at,
                                              [i.model_dump(mode="json", include={"sku", "quantity", "name",
                                                                                  "unit_price_cents"})
                                               for i in e.items], _dump(e.customer)) for e in events])
    await _watch(uow, [(e, core.Placed(e.cart_id, e.shop_id, e.order_id, _dump(e.customer),
                                       [i.model_dump(mode="json") for i in e.items], e.occurred_at,
                                       e.payment.method == "gateway")) for e in events], core.on_order_placed)


async def order_status_changed(uow: UnitOfWork, events: list[OrderStatusChanged]) -> None:
    await _watch(uow, [(e, core.StatusChanged(e.cart_id, e.shop_id, e.order_id, e.status.value,
                                              e.payment_status.value, _dump(e.customer),
                                              [i.model_dump(mode="json") for i in e.items], e.occurred_at,
                                              e.reason))
                       for e in events if e.cart_id], core.on_order_status)


async def payments_confirmed(uow: UnitOfWork, events: list[PaymentConfirmed]) -> None:
    """Remember each order a gateway confirmed a payment for: its checkout's reminders stop when next due
    (`core.next_reminder`), even while orders has not said paid."""
    await repository.record_payments(uow.conn, [(e.shop_id, e.order_id) for e in events])
