"""Place one order with the Python `contracts` producer: a typed model goes to its topic, keyed, as JSON.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python docs/examples/place_order.py

SHOP_ID, ORDER_ID and EVENT_ID may be set; a retry must reuse the same EVENT_ID. Prints the order id.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import contracts as c
from contracts.producer import StorefrontProducer


async def main() -> None:
    order_id = os.environ.get("ORDER_ID") or f"order-{uuid.uuid4().hex[:12]}"
    event = c.OrderPlaced(
        event_id=os.environ.get("EVENT_ID") or c.new_event_id(),  # keep it when retrying
        occurred_at=c.now(),
        shop_id=os.environ.get("SHOP_ID", "demo-shop"),
        order_id=order_id,
        cart_id=f"cart-{order_id}",
        customer=c.Customer(email="ada@example.com", name="Ada Lovelace"),
        items=[c.OrderItem(sku="MUG-1", name="Mug", quantity=2, unit_price_cents=1250)],
        total_cents=2500,
        currency="EUR",
        payment=c.Payment(method="manual", provider="transfer"),
    )
    async with StorefrontProducer(os.environ["KAFKA_BOOTSTRAP_SERVERS"]) as producer:
        await producer.send(event)  # topic order.placed, key = order_id, waits for acks=all
    print(order_id)


if __name__ == "__main__":
    asyncio.run(main())
