"""GET /carts/{cart_id}: the cart as the storefront shows it, read from PostgreSQL so any worker can answer.

No back-office token: the storefront calls it for its customer, and the cart id (an unguessable id the storefront
chose) is the capability. Items out of stock stay listed with quantity_shown 0 and "out of stock".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from orderflow.runtime.http import ApiError, json_response
from services.cart import repository
from services.cart.core import LineStatus, show_cart


def cart_view_handler(pool: Callable[[], Awaitable[asyncpg.Pool]], out_of_stock_shown: Counter,
                      ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def get_cart(request: web.Request) -> web.Response:
        cart_id = request.match_info["cart_id"]
        db = await pool()
        shop_id = request.query.get("shop_id")
        if not shop_id:
            shops = await repository.shops_with_cart(db, cart_id)
            if len(shops) > 1:
                raise ApiError(409, f"cart {cart_id!r} exists in several shops: name one with ?shop_id=")
            shop_id = shops[0] if shops else ""
        cart = await repository.load_cart(db, shop_id, cart_id)
        if cart is None:
            raise ApiError(404, f"no cart {cart_id!r}")
        body = {"cart_id": cart["cart_id"], "shop_id": cart["shop_id"], "status": cart["status"],
                "customer": cart["customer"], "updated_at": cart["updated_at"]}
        if cart["status"] == "ordered":
            # An order empties the cart; what it held stays visible for reference only.
            body.update(order_id=cart["order_id"], items=[], ordered_items=cart["items"])
            return json_response(body)
        levels = await repository.levels_for(db, cart["shop_id"], [i["sku"] for i in cart["items"]])
        lines = show_cart(cart["items"], levels)
        out_of_stock_shown.inc(sum(1 for line in lines if line.status == LineStatus.OUT_OF_STOCK))
        body["items"] = [asdict(line) for line in lines]
        return json_response(body)

    return get_cart
