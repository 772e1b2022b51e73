"""The inventory worker's wiring: order.status and stock.adjusted in, inventory.deductions and inventory.levels out.

The rules are in `core.py`, the handlers in `handlers.py`, the SQL in `repository.py`, the HTTP reads in `api.py`.
"""

from __future__ import annotations

from contracts import topics
from orderflow.runtime.app import Runtime
from orderflow.services import ServiceSpec
from orderflow.settings import Settings
from services.inventory import api, handlers


def build(settings: Settings) -> Runtime:
    rt = Runtime(settings)
    rt.context = handlers.Context(metrics=handlers.InventoryMetrics(rt.metrics.registry))
    # Restocks first: an order is never refused for an unknown SKU only because order.status was read before the
    # stock.adjusted that created the SKU: after a replay or rebuild, order.status waits until stock.adjusted caught
    # up (`after`); at any time, a refusal waits until stock.adjusted is applied up to the order's time.
    rt.consume(topics.ORDER_STATUS, handlers.order_status, batch=1000, after=[topics.STOCK_ADJUSTED],
               refusals_wait_for=[topics.STOCK_ADJUSTED])
    rt.consume(topics.STOCK_ADJUSTED, handlers.stock_adjusted, batch=500)
    api.add_routes(rt)
    return rt


SERVICE = ServiceSpec(
    name="inventory",
    port_env="INVENTORY_HTTP_PORT",
    default_port=8103,
    build=build,
    description="Stock per shop and SKU: deducted once per committed order, returned once on cancel.",
)
