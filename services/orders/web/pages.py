"""The merchant's back office as server-rendered pages under /backoffice (Jinja2, autoescaped, plain HTML forms).

The pages run the same use cases as the JSON API (services/orders/api.py): the repository reads and writes, the
pure core decides — including which buttons an order shows — and every event leaves through the outbox.
Sign-in takes the operator's BACKOFFICE_TOKEN (every shop) or a shop's merchant credential (that shop only: the shop
fields disappear, another shop's order is "No such order"), at most 10 failed tries a minute per address. It sets an
HttpOnly, SameSite=Strict cookie holding an HMAC-signed session (never the token; a merchant's session names its
credential, checked on every request, so revoking it signs the merchant out at once); every POST
carries the session's CSRF token in a hidden field. A form that emits an event carries a one-off `form_id`, from
which the event id is derived, so a form submitted twice emits the same event twice and consumers drop the repeat.

Stock levels come from orders' own read model of the compacted `inventory.levels` topic (`stock_levels`), never
from the inventory service's API or tables: services talk only through topics (DESIGN.md).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from babel import Locale
from pydantic import ValidationError

from contracts import (
    CustomerMessageRequested,
    MailState,
    OrderFlag,
    OrderStatus,
    PaymentStatus,
    ShopSettings,
    StockAdjusted,
    derived_event_id,
    now,
)
from orderflow import i18n
from orderflow.auth.credentials import OPERATOR, Principal
from orderflow.i18n import N_
from orderflow.runtime.http import ApiError
from services.orders import core
from services.orders import repository as repo
from services.orders.access import PRINCIPAL, Access, address, principal_of
from services.orders.api import Ambiguous, MessageBody, ShopBody, find_order, order_view, requested_shop
from services.orders.web.session import MERCHANT_SCOPE, OPERATOR_SCOPE, Session, SessionKeys

if TYPE_CHECKING:
    import asyncpg

    from orderflow.runtime.app import Runtime
    from orderflow.runtime.unit import UnitOfWork
    from services.orders.service import Orders

PREFIX = "/backoffice"
COOKIE = "orderflow_backoffice"
LOCALE = "orderflow.locale"
"""The request's locale: the shop's (shop.settings `locale`) that the page is about; English otherwise."""
PER_PAGE = 25
STOCK_ROWS = 500
"""SKUs the Stock page lists (out of stock first); it says how many more there are."""
MAIL_STATES = tuple(m.value for m in MailState)
HERE = Path(__file__).parent
FORM_ID = re.compile(r"^[0-9a-f]{32}$")

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

NOTICES = {
    "status": N_("Status changed."),
    "payment": N_("Marked paid."),
    "unchanged": N_("Nothing to change: the order already had that status."),
    "message": N_("Message queued for the customer."),
    "stock": N_("Stock adjustment sent; the level updates once the inventory has applied it."),
    "shop": N_("Shop settings saved."),
}
"""Fixed texts a redirect may name (`?done=`): nothing a link can make the page say is taken from the URL."""

TAB_LABELS = {"pending": N_("Pending"), "closed": N_("Closed"), "incomplete": N_("Incomplete")}
WORDS = (N_("pending"), N_("processed"), N_("delivered"), N_("canceled"), N_("incomplete"), N_("awaiting"),
         N_("paid"), N_("partially_refunded"), N_("refunded"), N_("system"), N_("merchant"), N_("customer"),
         N_("gateway"), N_("manual"), N_("queued"), N_("sent"), N_("retrying"), N_("failed"), N_("held"))
"""Statuses and other values the pages show as they are stored (`{{ _(order.status) }}`)."""
PAYMENT_FILTERS = {"awaiting": N_("Awaiting payment"), "paid": N_("Paid"), "incomplete": N_("Not paid"),
                   "partially_refunded": N_("Partially refunded"), "refunded": N_("Refunded")}
"""The payment-status filter of the orders list (the French seed's "Statut du paiement" search)."""
FLAG_FILTERS = {"payment_mismatch": N_("Payment mismatch"), "payment_after_cancel": N_("Payment after cancel"),
                "refund_due": N_("Refund due")}
"""The flag filter: orders the merchant must look at."""


@dataclass(frozen=True)
class Button:
    action: str  # the form's path under the order: "status" or "payment"
    value: str
    label: str


STATUS_BUTTONS = ((OrderStatus.PROCESSED, N_("Processed")), (OrderStatus.DELIVERED, N_("Delivered")),
                  (OrderStatus.CANCELED, N_("Cancel")))


def allowed_buttons(state: core.OrderState) -> list[Button]:
    """Exactly the changes the core would make now; a change it would refuse or ignore gets no button."""
    buttons = [Button("status", target.value, label) for target, label in STATUS_BUTTONS
               if core.merchant_set_status(state, target).changes]
    if core.mark_paid(state).changes:
        buttons.append(Button("payment", "paid", N_("Mark paid")))
    return buttons


@jinja2.pass_context
def money(context: jinja2.runtime.Context, cents: int, currency: str) -> str:
    """An amount as the page's locale writes that currency (orderflow/i18n.py): `12,50 €`, `€12.50`, `¥1,200`."""
    return i18n.format_money(cents, currency, context["locale"])


@jinja2.pass_context
def when(context: jinja2.runtime.Context, value: datetime | None) -> str:
    return i18n.format_when(value, context["locale"])


def order_lines(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ordered item with what the inventory did for it (the API's `stock` list is in item order)."""
    return [{**item, **stock} for item, stock in zip(view["items"], view["stock"], strict=True)]


def page_url(path: str, **params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "") and not (k == "page" and v == 1)}
    return f"{PREFIX}{path}" + (f"?{urlencode(kept)}" if kept else "")


@cache
def _environment(language: str) -> jinja2.Environment:
    """One environment per language: Jinja2's i18n extension binds one catalog (orderflow/locale) to it."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             extensions=["jinja2.ext.i18n"])
    i18n.install(env, Locale.parse(language))
    env.filters["money"] = money
    env.filters["when"] = when
    env.globals.update(url=page_url, prefix=PREFIX, tab_labels=TAB_LABELS)
    return env


def add_routes(rt: Runtime, orders: Orders, access: Access) -> None:
    keys = SessionKeys(rt.settings.backoffice_token)
    css = (HERE / "static" / "backoffice.css").read_bytes()

    def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        section = {"order.html": "orders"}.get(template, template.removesuffix(".html"))
        principal: Principal | None = request.get(PRINCIPAL)
        merchant_shop = principal.shop_id if principal is not None and not principal.operator else None
        locale: Locale = request.get(LOCALE) or i18n.choose(None)
        # the fixed texts a handler passes (notices, errors, titles) in the page's language; others stay as they are
        gettext = i18n.gettext_for(locale).gettext
        context.update({k: gettext(v) for k in ("notice", "error", "title", "text")
                        if isinstance(v := context.get(k), str)})
        html = _environment(locale.language).get_template(template).render(
            session=request.get("session"), section=section, merchant_shop=merchant_shop, locale=locale,
            language=locale.language, **context)
        return web.Response(text=html, status=status, content_type="text/html", headers=HEADERS)

    async def principal_for(session: Session) -> Principal | None:
        """Who the session is, if its credential is still live (a revoked one ends the session at once)."""
        if session.scope == OPERATOR_SCOPE:
            return OPERATOR
        if session.credential_id is not None:
            return await access.verifier.by_id(session.credential_id, "merchant")
        return None

    def own_shop(request: web.Request, named: str) -> str:
        """The shop a stock or settings page is about: the merchant's own; the one the operator named."""
        principal = principal_of(request)
        return named if principal.operator else principal.shop_id or ""

    def signed_in(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):  # noqa: ANN202
        """A page for the signed-in operator or merchant; a POST must also carry the session's CSRF token."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            session = keys.open(request.cookies.get(COOKIE))
            principal = await principal_for(session) if session is not None else None
            if session is None or principal is None:
                if request.method == "GET":
                    raise web.HTTPSeeOther(f"{PREFIX}/login")
                return render(request, "login.html", status=401, error=N_("Your session ended: please sign in again."))
            request["session"] = session
            request[PRINCIPAL] = principal
            # the page's language: the merchant's shop's, or that of the shop the operator named
            shop_id = request.query.get("shop_id", "").strip() if principal.operator else principal.shop_id
            request[LOCALE] = i18n.choose(await repo.shop_locale(await rt.pool(), shop_id) if shop_id else None)
            if request.method == "POST" and not keys.csrf_ok(session, (await request.post()).get("csrf")):
                return render(request, "message.html", status=403, title=N_("Form expired"),
                              text=N_("This form was not sent from this back office, or your session changed. "
                                      "Go back, reload the page and try again."))
            return await handler(request)

        return guarded

    async def form(request: web.Request) -> dict[str, str]:
        return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}

    # --- sign-in ----------------------------------------------------------------------------------------------

    async def login_page(request: web.Request) -> web.StreamResponse:
        session = keys.open(request.cookies.get(COOKIE))
        if session is not None and await principal_for(session) is not None:
            raise web.HTTPSeeOther(f"{PREFIX}/orders")
        return render(request, "login.html", error=None)

    async def login(request: web.Request) -> web.StreamResponse:
        who = address(request)
        if (wait := access.throttle.retry_after(who)) > 0:
            response = render(request, "login.html", status=429,
                              error=f"Too many sign-in attempts from this address: try again in {math.ceil(wait)} s.")
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        token = (await form(request)).get("token", "").strip()
        principal = await access.verifier.principal(token, kinds=("merchant",))
        if principal is None:
            access.throttle.record(who)  # a wrong token: 10 a minute per address (the API's count too)
            return render(request, "login.html", status=401,
                          error=N_("That is not the back-office token, nor a live merchant credential."))
        scope = OPERATOR_SCOPE if principal.operator else f"{MERCHANT_SCOPE}{principal.credential_id}"
        response = web.HTTPSeeOther(f"{PREFIX}/orders")
        response.set_cookie(COOKIE, keys.issue(scope=scope), path=PREFIX, httponly=True, samesite="Strict",
                            secure=request.secure, max_age=keys.lifetime)
        raise response

    async def logout(request: web.Request) -> web.StreamResponse:
        response = web.HTTPSeeOther(f"{PREFIX}/login")
        response.del_cookie(COOKIE, path=PREFIX)
        raise response

    async def stylesheet(request: web.Request) -> web.StreamResponse:
        return web.Response(body=css, content_type="text/css",
                            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    async def home(request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther(f"{PREFIX}/orders")

    # --- orders -----------------------------------------------------------------------------------------------

    async def orders_page(request: web.Request) -> web.StreamResponse:
        tab = request.query.get("tab", "pending")
        tab = tab if tab in repo.TABS else "pending"
        q = request.query.get("q", "").strip()[:200]
        shop_id = request.query.get("shop_id", "").strip() if principal_of(request).operator else ""
        page = int(p) if (p := request.query.get("page", "1")).isdigit() and 0 < int(p) < 1_000_000 else 1
        # the filters: an unknown value shows every order, as if none was chosen (the JSON API says 400)
        payment_status = PaymentStatus(v) if (v := request.query.get("payment_status")) in PAYMENT_FILTERS else None
        flag = OrderFlag(v) if (v := request.query.get("flag")) in FLAG_FILTERS else None
        found, total, counts = await repo.list_orders(await rt.pool(), tab, q or None, requested_shop(request),
                                                      page, PER_PAGE, payment_status, flag)
        return render(request, "orders.html", tab=tab, q=q, shop_id=shop_id, page=page, orders=found,
                      total=total, counts=counts, pages=max(1, math.ceil(total / PER_PAGE)),
                      payment_status=payment_status.value if payment_status else "",
                      flag=flag.value if flag else "", payment_filters=PAYMENT_FILTERS, flag_filters=FLAG_FILTERS)

    async def load_order(request: web.Request,
                         conn: asyncpg.Connection | asyncpg.Pool) -> repo.Order | web.StreamResponse:
        """The order the URL names (`/orders/{order_id}?shop_id=`), or the page saying why not."""
        try:
            return await find_order(conn, request.match_info["order_id"], requested_shop(request))
        except Ambiguous as exc:
            return render(request, "message.html", status=409, title=N_("Which shop?"),
                          text=f"Several shops have an order with this id: {', '.join(exc.shops)}. "
                               "Open it from the order list, or add ?shop_id= to the address.")
        except ApiError:
            return render(request, "message.html", status=404, title=N_("No such order"),
                          text=N_("There is no order with that id."))

    async def order_page(request: web.Request, *, error: str | None = None, status: int = 200,
                         message_text: str = "") -> web.StreamResponse:
        pool = await rt.pool()
        order = await load_order(request, pool)
        if not isinstance(order, repo.Order):
            return order
        view = await order_view(pool, order)
        return render(request, "order.html", status=status, order=view, lines=order_lines(view),
                      buttons=allowed_buttons(order.state), error=error,
                      notice=NOTICES.get(request.query.get("done", "")), form_id=uuid.uuid4().hex,
                      message_text=message_text)

    async def change(request: web.Request, decide: Callable[[core.OrderState], core.Decision],
                     done: str) -> web.StreamResponse:
        """The API's change: lock, let the core decide, write and stage in one transaction; show a refusal."""
        found = await load_order(request, await rt.pool())
        if not isinstance(found, repo.Order):
            return found
        shop_id, order_id = found.key

        async def work(uow: UnitOfWork) -> core.Decision | None:
            order = await repo.lock_order(uow.conn, shop_id, order_id)
            if order is None:
                return None
            decision = decide(order.state)
            if not decision.refused:
                await repo.apply(uow.conn, order, decision)
                uow.after_commit(lambda: orders.count([decision]))
            return decision

        decision = await rt.run_unit(work, wait_for_dependencies=False)
        if decision is None:
            return await order_page(request)
        if decision.refused:
            return await order_page(request, error=decision.refused, status=409)
        done = done if decision.changes else "unchanged"
        raise web.HTTPSeeOther(page_url(f"/orders/{quote(order_id, safe='')}", shop_id=shop_id, done=done))

    async def post_status(request: web.Request) -> web.StreamResponse:
        try:
            target = OrderStatus((await form(request)).get("status", ""))
        except ValueError:
            return await order_page(request, error=N_("Unknown status."), status=400)
        return await change(request, lambda state: core.merchant_set_status(state, target), "status")

    async def post_payment(request: web.Request) -> web.StreamResponse:
        return await change(request, core.mark_paid, "payment")

    async def post_message(request: web.Request) -> web.StreamResponse:
        data = await form(request)
        text, message_id = data.get("text", ""), data.get("form_id", "")
        try:
            body = MessageBody(text=text)
        except ValidationError:
            return await order_page(request, error=N_("Write a message (up to 10,000 characters)."), status=400,
                                    message_text=text)
        if not FORM_ID.match(message_id):
            return await order_page(request, error=N_("Reload the page and send the message again."), status=400)
        found = await load_order(request, await rt.pool())
        if not isinstance(found, repo.Order):
            return found

        async def work(uow: UnitOfWork) -> repo.Order | None:
            order = await repo.get_order(uow.conn, found.shop_id, found.order_id)
            if order is not None:
                uow.emit([CustomerMessageRequested(
                    event_id=derived_event_id("order.message", order.shop_id, order.order_id, message_id),
                    occurred_at=now(),
                    shop_id=order.shop_id, order_id=order.order_id, message_id=message_id, text=body.text,
                    customer=order.customer,
                )])
            return order

        order = await rt.run_unit(work, wait_for_dependencies=False)
        if order is None:
            return await order_page(request)
        raise web.HTTPSeeOther(page_url(f"/orders/{quote(order.order_id, safe='')}", shop_id=order.shop_id,
                                        done="message"))

    # --- mails ------------------------------------------------------------------------------------------------

    async def mails_page(request: web.Request) -> web.StreamResponse:
        """The shop's mails as notify last reported them (mail.status), newest first, failed ones findable."""
        state = request.query.get("state", "").strip()
        state = state if state in MAIL_STATES else ""
        shop_id = own_shop(request, request.query.get("shop_id", "").strip())
        rows = await repo.list_mail_states(await rt.pool(), [shop_id] if shop_id else None, state or None, 200)
        return render(request, "mails.html", mails=rows, state=state, states=MAIL_STATES, shop_id=shop_id)

    # --- stock ------------------------------------------------------------------------------------------------

    async def stock_levels(shop_id: str) -> tuple[list[dict[str, Any]], int]:
        total, rows = await repo.list_stock_levels(await rt.pool(), shop_id, STOCK_ROWS)
        return [dict(r) for r in rows], total

    async def stock_page(request: web.Request, *, error: str | None = None, status: int = 200,
                         shop_id: str | None = None) -> web.StreamResponse:
        shop_id = own_shop(request, (shop_id if shop_id is not None else request.query.get("shop_id", "")).strip())
        levels, total = await stock_levels(shop_id) if shop_id else ([], 0)
        return render(request, "stock.html", status=status, shop_id=shop_id, levels=levels, total=total,
                      error=error, notice=NOTICES.get(request.query.get("done", "")),
                      form_id=uuid.uuid4().hex)

    async def post_stock(request: web.Request) -> web.StreamResponse:
        data = await form(request)
        shop_id = own_shop(request, data.get("shop_id", "").strip())
        sku, form_id = data.get("sku", "").strip(), data.get("form_id", "")
        amount = data.get("amount", "").strip()
        if not FORM_ID.match(form_id):
            return await stock_page(request, error=N_("Reload the page and try again."), status=400, shop_id=shop_id)
        if not re.fullmatch(r"-?\d{1,10}", amount):
            return await stock_page(request, error=N_("The quantity must be a whole number."), status=400,
                                    shop_id=shop_id)
        change = {"set_to": int(amount)} if data.get("mode") == "set" else {"delta": int(amount)}
        try:
            event = StockAdjusted(event_id=derived_event_id("stock.adjusted", shop_id, sku, form_id),
                                  occurred_at=now(), shop_id=shop_id, sku=sku,
                                  reason=data.get("reason", "").strip() or "back office", **change)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "form"
            return await stock_page(request, error=f"{where}: {exc.errors()[0]['msg']}", status=400,
                                    shop_id=shop_id)
        async def work(uow: UnitOfWork) -> None:
            uow.emit([event])

        await rt.run_unit(work, wait_for_dependencies=False)
        raise web.HTTPSeeOther(page_url("/stock", shop_id=shop_id, done="stock"))

    # --- shop settings ----------------------------------------------------------------------------------------

    async def shop_page(request: web.Request, *, error: str | None = None, status: int = 200,
                        values: dict[str, Any] | None = None) -> web.StreamResponse:
        shop_id = own_shop(request, request.query.get("shop_id", "").strip())
        if values is None:
            values = {"shop_id": shop_id}
            if shop_id:
                values.update(await stored_shop(await rt.pool(), shop_id) or {})
        return render(request, "shop.html", status=status, values=values, error=error,
                      notice=NOTICES.get(request.query.get("done", "")))

    async def post_shop(request: web.Request) -> web.StreamResponse:
        data = await form(request)
        shop_id = own_shop(request, data.get("shop_id", "").strip())
        delay = data.get("abandon_after_seconds", "").strip()
        values = {"shop_id": shop_id, "name": data.get("name", "").strip(),
                  "merchant_email": data.get("merchant_email", "").strip(),
                  "abandon_after_seconds": int(delay) if delay.isdigit() else (delay or None),
                  "ignore_incomplete_orders": data.get("ignore_incomplete_orders") == "on",
                  "locale": data.get("locale", "").strip() or "en"}
        try:
            body = ShopBody.model_validate({k: v for k, v in values.items() if k != "shop_id"})
            settings = ShopSettings(event_id=uuid.uuid4(), occurred_at=now(), shop_id=shop_id, **body.model_dump())
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "form"
            return await shop_page(request, error=f"{where}: {exc.errors()[0]['msg']}", status=400, values=values)
        async def work(uow: UnitOfWork) -> int:
            version = await repo.upsert_shop(uow.conn, settings, bump_version=True)
            if version:
                uow.emit([settings.model_copy(update={"event_id": derived_event_id("shop.settings", shop_id,
                                                                                   version)})])
            return version

        if not await rt.run_unit(work, wait_for_dependencies=False):
            return await shop_page(request, error=N_("Newer settings for this shop are already stored."), status=409,
                                   values=values)
        raise web.HTTPSeeOther(page_url("/shop", shop_id=shop_id, done="shop"))

    def route(method: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        rt.http.route(method, PREFIX + path, handler, auth=False)

    route("GET", "/static/backoffice.css", stylesheet)
    route("GET", "/login", login_page)
    route("POST", "/login", login)
    route("POST", "/logout", signed_in(logout))
    route("GET", "", home)
    route("GET", "/", home)
    route("GET", "/orders", signed_in(orders_page))
    route("GET", "/mails", signed_in(mails_page))
    route("GET", "/orders/{order_id}", signed_in(order_page))
    route("POST", "/orders/{order_id}/status", signed_in(post_status))
    route("POST", "/orders/{order_id}/payment", signed_in(post_payment))
    route("POST", "/orders/{order_id}/messages", signed_in(post_message))
    route("GET", "/stock", signed_in(stock_page))
    route("POST", "/stock", signed_in(post_stock))
    route("GET", "/shop", signed_in(shop_page))
    route("POST", "/shop", signed_in(post_shop))


async def stored_shop(conn: asyncpg.Pool | asyncpg.Connection, shop_id: str) -> dict[str, Any] | None:
    """The shop's current settings to pre-fill the form (the repository has no reader for them yet)."""
    row = await conn.fetchrow("SELECT name, merchant_email, abandon_after_seconds, ignore_incomplete_orders, "
                              "locale FROM shops WHERE shop_id = $1", shop_id)
    return dict(row) if row else None
