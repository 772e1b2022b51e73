"""Fill a cart, place its order, and read the cart back with the shop's storefront key (Python).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python docs/examples/place_order.py
    # and, to read the cart back: CART_URL=http://127.0.0.1:8102 STOREFRONT_KEY=ofs_... (same command)

The events go out with the typed `contracts` producer: each model to its topic, keyed, as JSON. SHOP_ID, ORDER_ID
and EVENT_ID may be set; a retry must reuse the same EVENT_ID. Ids are unique within a shop only: the storefront key
(`orderflow shop credentials create SHOP --kind storefront`) names the shop whose cart is read. Prints
`cart <cart_id> <status>` when it read the cart, then the order id.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import contracts as c
from contracts.producer import StorefrontProducer


def read_cart(cart_url: str, storefront_key: str, cart_id: str, timeout: float = 30.0) -> dict:
    """GET /carts/{cart_id} with the storefront key, until the cart service has the cart (404 until then)."""
    request = urllib.request.Request(f"{cart_url.rstrip('/')}/carts/{urllib.parse.quote(cart_id, safe='')}",
                                     headers={"Authorization": f"Bearer {storefront_key}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)  # the cart service has not applied cart.updated yet: ask again


async def main() -> None:
    shop_id = os.environ.get("SHOP_ID", "demo-shop")
    order_id = os.environ.get("ORDER_ID") or f"order-{uuid.uuid4().hex[:12]}"
    cart_id = f"cart-{order_id}"
    customer = c.Customer(email="ada@example.com", name="Ada Lovelace")
    cart = c.CartUpdated(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop_id, cart_id=cart_id,
                         customer=c.CartCustomer(**customer.model_dump()),
                         items=[c.CartItem(sku="MUG-1", quantity=2, name="Mug", unit_price_cents=1250)])
    order = c.OrderPlaced(
        event_id=os.environ.get("EVENT_ID") or c.new_event_id(),  # keep it when retrying
        occurred_at=c.now(),
        shop_id=shop_id,
        order_id=order_id,
        cart_id=cart_id,
        customer=customer,
        items=[c.OrderItem(sku="MUG-1", name="Mug", quantity=2, unit_price_cents=1250)],
        total_cents=2500,
        currency="EUR",
        payment=c.Payment(method="manual", provider="transfer"),
    )
    async with StorefrontProducer(os.environ["KAFKA_BOOTSTRAP_SERVERS"]) as producer:
        await producer.send(cart)  # topic cart.updated, key = cart_id
        await producer.send(order)  # topic order.placed, key = order_id, waits for acks=all
    if os.environ.get("CART_URL") and os.environ.get("STOREFRONT_KEY"):
        seen = await asyncio.to_thread(read_cart, os.environ["CART_URL"], os.environ["STOREFRONT_KEY"], cart_id)
        print(f"cart {seen['cart_id']} {seen['status']}")
    print(order_id)


if __name__ == "__main__":
    asyncio.run(main())
