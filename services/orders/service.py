"""The orders service's wiring: order.placed, payment.confirmed, payment.refunded, order.cancel_requested,
shop.settings, inventory.deductions, inventory.levels and mail.status in; order.status, order.message and
shop.settings out; the back-office HTTP API and pages.

The rules are in `core.py`, the stream handlers in `handlers.py`, the batch writes in `batch.py`, the SQL in
`repository.py`, the HTTP surface in `api.py` and `web/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from contracts import topics
from orderflow.services import ServiceSpec
from services.orders import handlers

if TYPE_CHECKING:
    from orderflow.runtime.app import Runtime
    from orderflow.settings import Settings


class Orders:
    """What the HTTP surface shares with the handlers: the metrics it counts its own changes in."""

    def __init__(self, rt: Runtime, metrics: handlers.OrdersMetrics) -> None:
        self.rt = rt
        self.metrics = metrics

    def count(self, decisions: list) -> None:  # noqa: ANN001
        self.metrics.count(decisions)


def build(settings: Settings) -> Runtime:
    from orderflow.runtime.app import Runtime
    from services.orders import api, expiry, web
    from services.orders.access import Access

    rt = Runtime(settings)
    metrics = handlers.OrdersMetrics(rt.metrics.registry)
    rt.context = handlers.Context(metrics=metrics)
    rt.consume(topics.ORDER_PLACED, handlers.order_placed, batch=500)
    rt.consume(topics.PAYMENT_CONFIRMED, handlers.payment_confirmed, batch=500)
    rt.consume(topics.PAYMENT_REFUNDED, handlers.payment_refunded, batch=500)
    rt.consume(topics.ORDER_CANCEL_REQUESTED, handlers.cancel_requested, batch=100)
    rt.consume(topics.SHOP_SETTINGS, handlers.shop_settings, batch=100)
    rt.consume(topics.INVENTORY_DEDUCTIONS, handlers.inventory_deductions, batch=500)
    rt.consume(topics.INVENTORY_LEVELS, handlers.inventory_levels, batch=500)  # the Stock page's read model
    rt.consume(topics.MAIL_STATUS, handlers.mail_states, batch=500)  # each mail's state, for the order page
    expiry.register(rt, settings.expire_scan_seconds)  # unpaid gateway orders canceled as `expired`, once
    orders = Orders(rt, metrics)
    access = Access(rt)  # BACKOFFICE_TOKEN (every shop) or a shop's merchant credential, shared by API and pages
    api.add_routes(rt, orders, access)
    web.add_routes(rt, orders, access)  # the back-office pages under /backoffice
    return rt


SERVICE = ServiceSpec(
    name="orders",
    port_env="ORDERS_HTTP_PORT",
    default_port=8101,
    build=build,
    description="Order lifecycle and back office: order.placed/payment.confirmed in, order.status out.",
)
