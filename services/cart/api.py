"""GET /carts/{cart_id}: the cart as the storefront shows it, read from PostgreSQL so any worker can answer.

Cart ids are unique within a shop only, and a cart holds a customer's e-mail and name, so the view needs one of:
- the shop's **storefront key** (`Authorization: Bearer ofs_…`, `orderflow shop credentials create SHOP --kind
  storefront`): that shop's carts, with the customer;
- a recovery link's **signed token** (`?shop_id=…&token=…`, see `recovery.py`): that one cart, without the customer;
- the operator's **BACKOFFICE_TOKEN** (support): any shop's cart (`?shop_id=`; without it, 409 when several shops
  use the id), without the customer.
Otherwise 401. Another shop's cart is 404 like a missing one. Failed keys and tokens count against the address's
budget (10 a minute, then 429). Items out of stock stay listed with quantity_shown 0 and "out of stock".

The view says how the storefront resumes it (`resume`, decided by `core.resume`): `{"kind": "cart"}` and the
cart's items for an open cart; for a cart whose gateway order was never paid, the order's items and `{"kind":
"payment", "order_id": …}`, so the customer who follows a recovery link lands on something to pay, not on an empty
cart; once that unpaid order was canceled or expired, the order's items and `{"kind": "reorder", "order_id": …,
"reason": "expired" | "canceled"}`: the shop takes no payment for it any more, so the storefront offers the items in
a new cart. An ordered cart otherwise has no `resume`.

GET/POST /unsubscribe?shop_id=&email=&token=: a recovery e-mail's unsubscribe link (`recovery.sign_unsubscribe`).
GET only shows what a POST would do (mail scanners fetch links); POST records it — the page's button, or RFC 8058's
one-click POST (`List-Unsubscribe=One-Click`) from the mail client.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict

import asyncpg
from aiohttp import web
from prometheus_client import Counter

from orderflow.auth.credentials import Throttle, Verifier
from orderflow.runtime.http import ApiError, error, json_response
from orderflow.runtime.openapi import TEXT, Param, RouteDoc
from services.cart import recovery, repository
from services.cart.core import LineStatus, resume, show_cart

MISSING = "a storefront key (Authorization: Bearer ofs_…), a recovery link's token (?shop_id=&token=) or the " \
          "operator's token is needed"

CART_VIEW_DOC = RouteDoc(
    "the cart as the storefront shows it: a storefront key, a recovery link's token or the operator's token",
    tags=("carts",), bearer=True, errors=(404, 409, 429),
    query=(Param("shop_id", TEXT, "the cart's shop (a recovery link; the operator when several shops use the id)"),
           Param("token", TEXT, "a recovery link's signed token (with shop_id)")))


def _bearer(request: web.Request) -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def cart_view_handler(pool: Callable[[], Awaitable[asyncpg.Pool]], out_of_stock_shown: Counter,
                      verifier: Verifier, recovery_key: bytes, throttle: Throttle | None = None,
                      ) -> Callable[[web.Request], Awaitable[web.Response]]:
    throttle = throttle or Throttle()

    def refused(who: str) -> web.Response:
        throttle.record(who)
        return error(401, MISSING)

    async def get_cart(request: web.Request) -> web.Response:
        cart_id = request.match_info["cart_id"]
        named = request.query.get("shop_id") or None
        who = request.remote or "unknown"
        if (wait := throttle.retry_after(who)) > 0:
            response = error(429, "too many failed keys or tokens from this address; try again shortly")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        db = await pool()
        bearer = _bearer(request)
        if bearer is not None:
            principal = await verifier.principal(bearer, kinds=("storefront",))
            if principal is None:
                return refused(who)
            with_customer = principal.kind == "storefront"
            if principal.operator:
                shops = [named] if named else await repository.shops_with_cart(db, cart_id)
                if len(shops) > 1:
                    return json_response({"error": f"cart {cart_id!r} exists in several shops: name one with "
                                                   "?shop_id=", "shops": shops}, status=409)
                shop_id = shops[0] if shops else ""
            elif named not in (None, principal.shop_id):
                raise ApiError(404, f"no cart {cart_id!r}")
            else:
                shop_id = principal.shop_id or ""
        elif "token" in request.query:
            if named is None or not recovery.verify(recovery_key, request.query["token"], named, cart_id, time.time()):
                return refused(who)
            shop_id, with_customer = named, False
        else:
            return error(401, MISSING)
        cart = await repository.load_cart(db, shop_id, cart_id)
        if cart is None:
            raise ApiError(404, f"no cart {cart_id!r}")
        body = {"cart_id": cart["cart_id"], "shop_id": cart["shop_id"], "status": cart["status"],
                "updated_at": cart["updated_at"]}
        if with_customer:
            body["customer"] = cart["customer"]
        items = cart["items"]
        if cart["status"] == "ordered":
            # An order empties the cart; what it held stays visible for reference only, unless the order is a
            # gateway order never paid: then its items are what the customer comes back for, to pay it or, once
            # it was canceled or expired, to put them in a new cart (core.resume).
            watch = await repository.load_checkout(db, shop_id, cart_id)
            how = resume(cart["status"], cart["order_id"], watch)
            if how is None or watch is None:
                body.update(order_id=cart["order_id"], items=[], ordered_items=cart["items"])
                return json_response(body)
            items = watch.items
            body.update(order_id=cart["order_id"], resume=how)
        else:
            body["resume"] = resume(cart["status"], cart["order_id"], None)
        levels = await repository.levels_for(db, cart["shop_id"], [i["sku"] for i in items])
        lines = show_cart(items, levels)
        out_of_stock_shown.inc(sum(1 for line in lines if line.status == LineStatus.OUT_OF_STOCK))
        body["items"] = [asdict(line) for line in lines]
        return json_response(body)

    return get_cart



UNSUBSCRIBE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body><main>
<h1>{title}</h1>
<p>{text}</p>
{form}
</main></body></html>
"""

UNSUBSCRIBE_FORM = ('<form method="post"><input type="hidden" name="confirm" value="yes">'
                    '<button type="submit">Unsubscribe</button></form>')


def _page(title: str, text: str, form: str = "", status: int = 200) -> web.Response:
    return web.Response(text=UNSUBSCRIBE_PAGE.format(title=html.escape(title), text=html.escape(text), form=form),
                        content_type="text/html", status=status)


def _wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def unsubscribe_handler(pool: Callable[[], Awaitable[asyncpg.Pool]], recovery_key: bytes,
                        recorded: Callable[[str], None], throttle: Throttle | None = None,
                        ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """GET shows the confirmation, POST records the unsubscribe (a repeat changes nothing and answers the same)."""
    throttle = throttle or Throttle()

    async def unsubscribe(request: web.Request) -> web.Response:
        who = request.remote or "unknown"
        if (wait := throttle.retry_after(who)) > 0:
            response = error(429, "too many failed tokens from this address; try again shortly")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        shop_id, email = request.query.get("shop_id", ""), request.query.get("email", "")
        if not (shop_id and email and recovery.verify_unsubscribe(recovery_key, request.query.get("token"),
                                                                   shop_id, email, time.time())):
            throttle.record(who)  # errors are JSON, like every other answer of the API
            return error(401, "this unsubscribe link is not valid (or has expired)")
        email = recovery.normalized_email(email)
        db = await pool()
        if request.method == "GET":
            done = await repository.is_unsubscribed(db, shop_id, email)
            if _wants_json(request):
                return json_response({"shop_id": shop_id, "email": email, "unsubscribed": done})
            if done:
                return _page("Unsubscribed", f"{email} gets no more cart reminders from this shop.")
            return _page("Unsubscribe", f"Stop cart reminder e-mails to {email} from this shop?", UNSUBSCRIBE_FORM)
        form = await request.post()
        via = "one-click" if form.get("List-Unsubscribe") == "One-Click" else "form"
        if await repository.record_unsubscribe(db, shop_id, email, via):
            recorded(via)
        if _wants_json(request) or via == "one-click":
            return json_response({"shop_id": shop_id, "email": email, "unsubscribed": True})
        return _page("Unsubscribed", f"{email} gets no more cart reminders from this shop.")

    return unsubscribe
