"""The back-office HTTP API (DESIGN.md, "Back office HTTP API"). Every route needs a bearer token: the operator's
BACKOFFICE_TOKEN (every shop) or a shop's merchant credential (that shop only; `access.py`).

A refused change is 409 with the reason; repeating a change the order already has is 200 with `"changed": false`.

Order ids are unique within a shop only: a route naming an order is scoped by the shop. A merchant's requests are
scoped to the merchant's shop: another shop's order is 404 exactly like a missing one, and naming another shop
(`?shop_id=`, `PUT /shops/{other}`) finds nothing. The operator names the shop with `?shop_id=`; without it, the
order id is looked up in every shop: found in one, that one; in several, 409 listing the shops.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from aiohttp import web
from pydantic import Field, ValidationError

from contracts import (
    ChangedBy,
    CustomerMessageRequested,
    MailState,
    OrderFlag,
    OrderStatus,
    PaymentStatus,
    ShopSettings,
    derived_event_id,
    now,
)
from contracts.base import MAX_INT, Email, LocaleTag, LongText, Model, Text
from orderflow.runtime.http import ApiError, int_param, json_response, read_json
from orderflow.runtime.openapi import TEXT, Param, RouteDoc, integer, one_of
from services.orders import core
from services.orders import repository as repo
from services.orders.access import Access, principal_of

if TYPE_CHECKING:
    import asyncpg

    from orderflow.runtime.app import Runtime
    from orderflow.runtime.unit import UnitOfWork
    from services.orders.service import Orders

MAX_PER_PAGE = 200
E = TypeVar("E", bound=StrEnum)


class StatusBody(Model):
    status: OrderStatus


class PaymentBody(Model):
    status: Literal["paid"]


class MessageBody(Model):
    text: LongText
    message_id: str | None = None  # the client's id for this message: a retry with the same id sends nothing new


CLIENT_MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class RefundBody(Model):
    refund_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # the client's id: a retry with it refunds nothing more
    amount_cents: int = Field(gt=0, le=MAX_INT)


class ShopBody(Model):
    name: Text = Field(min_length=1)
    merchant_email: Email
    abandon_after_seconds: int | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    ignore_incomplete_orders: bool = True
    locale: LocaleTag = "en"  # contract v1.1: the shop's mails and back office
    expire_unpaid_after_seconds: int = Field(default=core.DEFAULT_EXPIRE_UNPAID_AFTER_SECONDS, gt=0,
                                             le=365 * 24 * 3600)


def stock_by_line(order: repo.Order, outcomes: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each ordered line with what inventory moved for it: deducted, short (asked but not there), returned."""
    deducted = {line["sku"]: line for line in outcomes.get("deducted", [])}
    returned = {line["sku"]: line for line in outcomes.get("returned", [])}
    lines = []
    for item in order.items:
        d = deducted.get(item["sku"])
        r = returned.get(item["sku"])
        lines.append({
            "sku": item["sku"], "quantity": item["quantity"],
            "deducted": d["moved"] if d else None,
            "shortfall": d["asked"] - d["moved"] if d else None,
            "returned": r["moved"] if r else None,
        })
    return lines


async def order_view(pool: asyncpg.Pool, order: repo.Order) -> dict[str, Any]:
    """The order with everything about it, read in one snapshot (REPEATABLE READ, read only). Read apart, a payment
    committed between the order's row and the payments' query showed without the flag it raised (seen in CI)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await _order_view(conn, await find_order(conn, order.order_id, order.shop_id))


async def _order_view(conn: asyncpg.Connection, order: repo.Order) -> dict[str, Any]:
    shop_id, order_id = order.key
    stock = stock_by_line(order, await repo.stock_outcomes(conn, shop_id, order_id))
    return {
        **order.summary(),
        "history": await repo.history(conn, shop_id, order_id),
        "stock": stock,
        "payments": await repo.payments(conn, shop_id, order_id),
        "cancel_requests": await repo.cancel_requests(conn, shop_id, order_id),
        "refunds": await repo.refunds(conn, shop_id, order_id),
        "mails": await repo.order_mails(conn, shop_id, order_id),  # notify's word on each (mail.status)
        "flags": {**order.summary()["flags"],
                  "stock_shortfall": any((line["shortfall"] or 0) > 0 for line in stock)},
    }


class Ambiguous(ApiError):
    """An order id several shops use, asked for without naming the shop."""

    def __init__(self, order_id: str, shops: list[str]) -> None:
        super().__init__(409, f"order {order_id!r} exists in several shops ({', '.join(shops)}): name one with "
                              "?shop_id=")
        self.shops = shops


async def find_order(conn: asyncpg.Connection | asyncpg.Pool, order_id: str, shop_id: str | None) -> repo.Order:
    """The order `order_id` of `shop_id`; without a shop, the one shop that has it. 404 when there is none, 409
    (`Ambiguous`) when several shops have it."""
    if shop_id is not None:
        order = await repo.get_order(conn, shop_id, order_id)
        if order is None:
            raise ApiError(404, "no such order")
        return order
    found = await repo.find_orders(conn, order_id)
    if not found:
        raise ApiError(404, "no such order")
    if len(found) > 1:
        raise Ambiguous(order_id, [o.shop_id for o in found])
    return found[0]


def ambiguous_response(exc: Ambiguous) -> web.Response:
    return json_response({"error": exc.message, "shops": exc.shops}, status=409)


NOWHERE = ""
"""The shop a merchant's request reaches when it names another shop: no shop id is empty, so nothing is found."""


def requested_shop(request: web.Request) -> str | None:
    """The shop a request may reach: the operator's named shop (`?shop_id=`) or None for every shop; a merchant's
    own shop, or NOWHERE when the request names another one."""
    named = request.query.get("shop_id") or None
    principal = principal_of(request)
    if principal.operator:
        return named
    return principal.shop_id if named in (None, principal.shop_id) else NOWHERE


def enum_param(request: web.Request, name: str, enum: type[E]) -> E | None:
    """An optional query parameter naming one member of `enum`; anything else is 400 listing the values."""
    raw = request.query.get(name, "").strip()
    if not raw:
        return None
    try:
        return enum(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be one of {', '.join(m.value for m in enum)}") from None


def add_routes(rt: Runtime, orders: Orders, access: Access) -> None:
    async def list_orders(request: web.Request) -> web.Response:
        tab = request.query.get("tab", "pending")
        if tab not in repo.TABS:
            raise ApiError(400, f"tab must be one of {', '.join(repo.TABS)}")
        page = int_param(request, "page", 1, 1, 1_000_000)
        per_page = int_param(request, "per_page", 50, 1, MAX_PER_PAGE)
        q = request.query.get("q", "").strip() or None
        payment_status = enum_param(request, "payment_status", PaymentStatus)
        flag = enum_param(request, "flag", OrderFlag)
        found, total, counts = await repo.list_orders(await rt.pool(), tab, q, requested_shop(request), page,
                                                      per_page, payment_status, flag)
        return json_response({"orders": [o.summary() for o in found], "total": total, "page": page,
                              "per_page": per_page, "counts": counts})

    async def get_order(request: web.Request) -> web.Response:
        pool = await rt.pool()
        try:
            order = await find_order(pool, request.match_info["order_id"], requested_shop(request))
        except Ambiguous as exc:
            return ambiguous_response(exc)
        return json_response(await order_view(pool, order))

    async def change(request: web.Request, decide: Any) -> web.Response:
        """Lock the order, let the core decide, write, in one unit of work; 409 with the reason when refused."""
        try:
            shop_id, order_id = (await find_order(await rt.pool(), request.match_info["order_id"],
                                                  requested_shop(request))).key
        except Ambiguous as exc:
            return ambiguous_response(exc)

        async def work(uow: UnitOfWork) -> tuple[repo.Order, core.Decision]:
            order = await repo.lock_order(uow.conn, shop_id, order_id)
            if order is None:
                raise ApiError(404, "no such order")
            decision: core.Decision = decide(order.state)
            if not decision.refused:
                order = await repo.apply(uow.conn, order, decision)
                uow.after_commit(lambda: orders.count([decision]))
            return order, decision

        order, decision = await rt.run_unit(work, wait_for_dependencies=False)
        if decision.refused:
            return json_response({"error": decision.refused, "status": order.state.status,
                                  "payment_status": order.state.payment_status}, status=409)
        return json_response({**await order_view(await rt.pool(), order), "changed": bool(decision.changes)})

    async def set_status(request: web.Request) -> web.Response:
        body = await read_json(request, StatusBody)
        return await change(request, lambda state: core.merchant_set_status(state, body.status))

    async def set_payment(request: web.Request) -> web.Response:
        await read_json(request, PaymentBody)
        return await change(request, core.mark_paid)

    async def send_message(request: web.Request) -> web.Response:
        body = await read_json(request, MessageBody)
        order_id = request.match_info["order_id"]
        # A client that retries sends the same Idempotency-Key (or body `message_id`): the same message id, the same
        # derived event id and the same mail key (notify's (ref, "message:<id>")), so the customer gets one mail.
        message_id = request.headers.get("Idempotency-Key") or body.message_id or uuid.uuid4().hex
        if not CLIENT_MESSAGE_ID.fullmatch(message_id):
            raise ApiError(400, "Idempotency-Key / message_id: 1 to 64 letters, digits, '-' or '_'")
        shop_id = requested_shop(request)

        async def work(uow: UnitOfWork) -> None:
            order = await find_order(uow.conn, order_id, shop_id)
            uow.emit([CustomerMessageRequested(
                event_id=derived_event_id("order.message", order.shop_id, order.order_id, message_id),
                occurred_at=now(),
                shop_id=order.shop_id, order_id=order.order_id, message_id=message_id, text=body.text,
                customer=order.customer,
            )])

        try:
            await rt.run_unit(work, wait_for_dependencies=False)
        except Ambiguous as exc:
            return ambiguous_response(exc)
        return json_response({"message_id": message_id, "order_id": order_id}, status=202)

    async def post_refund(request: web.Request) -> web.Response:
        """A refund the merchant made outside a gateway, once per client-supplied refund_id: a repeat answers what
        the first did (200 unchanged, or 409 with the recorded refusal) and refunds nothing more."""
        body = await read_json(request, RefundBody)
        try:
            shop_id, order_id = (await find_order(await rt.pool(), request.match_info["order_id"],
                                                  requested_shop(request))).key
        except Ambiguous as exc:
            return ambiguous_response(exc)

        async def work(uow: UnitOfWork) -> tuple[repo.Order, bool, str]:
            order = await repo.lock_order(uow.conn, shop_id, order_id)
            if order is None:
                raise ApiError(404, "no such order")
            new = await repo.record_refunds(uow.conn, [(shop_id, order_id, body.refund_id, body.amount_cents,
                                                        order.currency, "merchant", None)])
            if not new:
                known = await repo.refund_row(uow.conn, shop_id, order_id, body.refund_id)
                assert known is not None
                if known["amount_cents"] != body.amount_cents:
                    raise ApiError(409, f"refund {body.refund_id!r} was already asked for "
                                        f"{known['amount_cents']} {known['currency']}, not {body.amount_cents}")
                return order, False, known["outcome"] or ""
            decided = core.refund(order.state, order.total_cents, order.currency, order.refunded_cents,
                                  body.amount_cents, order.currency, ChangedBy.MERCHANT, body.refund_id)
            outcome = core.outcome_text(decided.decision, "applied")
            await repo.settle_refunds(uow.conn, [(shop_id, order_id, body.refund_id, bool(decided.decision.changes),
                                                  outcome)])
            if decided.decision.changes:
                order = await repo.apply(uow.conn, replace(order, refunded_cents=decided.refunded_cents),
                                         decided.decision)
                uow.after_commit(lambda: orders.count([decided.decision]))
            return order, bool(decided.decision.changes), outcome

        order, changed, outcome = await rt.run_unit(work, wait_for_dependencies=False)
        if outcome.startswith("refused: "):
            return json_response({"error": outcome.removeprefix("refused: "), "refund_id": body.refund_id,
                                  "payment_status": order.state.payment_status,
                                  "refunded_cents": order.refunded_cents}, status=409)
        return json_response({**await order_view(await rt.pool(), order), "changed": changed})

    async def put_shop(request: web.Request) -> web.Response:
        body = await read_json(request, ShopBody)
        shop_id = request.match_info["shop_id"]
        principal = principal_of(request)
        if not principal.operator and shop_id != principal.shop_id:
            raise ApiError(404, "no such shop")
        try:
            settings = ShopSettings(event_id=uuid.uuid4(), occurred_at=now(), shop_id=shop_id,
                                    **body.model_dump())
        except ValidationError as exc:
            raise ApiError(400, f"shop_id: {exc.errors()[0]['msg']}") from None
        async def work(uow: UnitOfWork) -> ShopSettings:
            version = await repo.upsert_shop(uow.conn, settings, bump_version=True)
            if not version:
                raise ApiError(409, "newer settings for this shop are already stored")
            stored = settings.model_copy(update={"event_id": derived_event_id("shop.settings", shop_id, version)})
            uow.emit([stored])
            return stored

        stored = await rt.run_unit(work, wait_for_dependencies=False)
        return json_response(stored.model_dump(mode="json", exclude={"event_id", "occurred_at"}))

    async def list_mails(request: web.Request) -> web.Response:
        """The shop's mails as notify last reported them (mail.status), newest first; `reply` is the server's."""
        state = enum_param(request, "state", MailState)
        shop_id = requested_shop(request)
        limit = int_param(request, "limit", 100, 1, MAX_PER_PAGE)
        rows = await repo.list_mail_states(await rt.pool(), None if shop_id is None else [shop_id],
                                           state.value if state else None, limit)
        return json_response({"mails": rows})

    def route(method: str, path: str, handler: Any, doc: RouteDoc | None = None) -> None:
        # auth: the operator or the shop's merchant (access.py); 429 once an address spent its failed tokens
        rt.http.route(method, path, access.api(handler), auth=False,
                      doc=doc and replace(doc, bearer=True, errors=(*doc.errors, 429), tags=("orders",)))

    shop = Param("shop_id", TEXT, "the shop (the operator; a merchant reaches only their own)")
    route("GET", "/orders", list_orders, RouteDoc(
        "orders of a tab, newest first, with each tab's count", query=(
            Param("tab", one_of(repo.TABS)), Param("page", integer(1, 1_000_000, 1)),
            Param("per_page", integer(1, MAX_PER_PAGE, 50)), Param("q", TEXT, "order id, e-mail or name"),
            Param("payment_status", one_of(m.value for m in PaymentStatus), "only orders with this payment status"),
            Param("flag", one_of(m.value for m in OrderFlag), "only orders with this flag (refund_due: still owed)"),
            shop)))
    route("GET", "/orders/{order_id}", get_order, RouteDoc(
        "one order with its history, stock, payments, refunds and flags", query=(shop,), errors=(404, 409)))
    route("POST", "/orders/{order_id}/status", set_status, RouteDoc(
        "set the order's status (409 with the reason when the rules refuse)", query=(shop,), body=StatusBody,
        errors=(404, 409)))
    route("POST", "/orders/{order_id}/payment", set_payment, RouteDoc(
        "mark the order paid", query=(shop,), body=PaymentBody, errors=(404, 409)))
    route("POST", "/orders/{order_id}/messages", send_message, RouteDoc(
        "send the customer a message (once per Idempotency-Key or message_id)", query=(shop,), body=MessageBody,
        status=202, errors=(404, 409)))
    route("POST", "/orders/{order_id}/refunds", post_refund, RouteDoc(
        "record a refund, once per refund_id", query=(shop,), body=RefundBody, errors=(404, 409)))
    route("GET", "/mails", list_mails, RouteDoc(
        "the shop's e-mails and their state (queued, retrying, sent, failed) with the server's reply, newest first",
        query=(Param("state", one_of(tuple(m.value for m in MailState))), Param("limit", integer(1, MAX_PER_PAGE, 100)),
               shop)))
    route("PUT", "/shops/{shop_id}", put_shop, RouteDoc(
        "set a shop's settings", body=ShopBody, errors=(404, 409)))
