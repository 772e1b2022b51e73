"""notify's small HTTP API (bearer token, like the back office's): the mails and their state, and re-queueing.

    GET  /mails?shop=S&state=failed&ref=S/O&limit=100   newest first; a failed mail's `last_error` is the reply
    POST /mails/retry {"ref": "S/O", "kind": "confirmation"} | {"shop": "S", "failed": true}

The same as `orderflow mail list|retry` (orderflow/ops/mail.py), for a back-office page or a script.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import model_validator

from contracts.base import Identifier, Model, Text
from orderflow.runtime.http import ApiError, int_param, json_response, read_json
from orderflow.runtime.openapi import TEXT, Param, RouteDoc, integer, one_of
from services.notify import repository


class RetryBody(Model):
    # The contract's bounded, control-character-free types: a NUL in a plain str reached PostgreSQL as a 500.
    ref: Text | None = None
    kind: Text | None = None
    shop: Identifier | None = None
    failed: bool = False

    @model_validator(mode="after")
    def one_way(self) -> RetryBody:
        if not ((self.ref and self.kind and not self.shop) or (self.failed and self.shop and not self.ref)):
            raise ValueError('give {"ref", "kind"} or {"shop", "failed": true}')
        return self


def register(rt: Any, wake_senders: Callable[[], None]) -> None:
    """Add GET /mails and POST /mails/retry to the worker's HTTP surface (`rt`: the notify Runtime)."""

    async def list_mails(request: web.Request) -> web.Response:
        state = request.query.get("state") or None
        if state is not None and state not in repository.STATES:
            raise ApiError(400, f"state must be one of {', '.join(repository.STATES)}")
        rows = await repository.list_mails(await rt.pool(), shop_id=request.query.get("shop") or None, state=state,
                                           ref=request.query.get("ref") or None,
                                           limit=int_param(request, "limit", 100, 1, 1000))
        return json_response({"mails": rows})

    async def retry(request: web.Request) -> web.Response:
        body = await read_json(request, RetryBody)
        pool = await rt.pool()
        if body.ref and body.kind:
            requeued = await repository.requeue(pool, keys=[(body.ref, body.kind)])
            if not requeued:
                raise ApiError(409, "not re-queued: no such mail, or it is sent or being sent")
        else:
            requeued = await repository.requeue(pool, failed_of_shop=body.shop)
        if requeued:
            wake_senders()
        return json_response({"requeued": requeued})

    rt.http.route("GET", "/mails", list_mails, doc=RouteDoc(
        "the mails and their state, newest first; a failed mail's `last_error` is the server's reply",
        tags=("mails",), query=(Param("shop", TEXT, "only this shop's mails"),
                                Param("state", one_of(repository.STATES)),
                                Param("ref", TEXT, "only this order's or cart's mails: SHOP/ID"),
                                Param("limit", integer(1, 1000, 100)))))
    rt.http.route("POST", "/mails/retry", retry, doc=RouteDoc(
        'queue mails again: one mail ({"ref", "kind"}) or a shop\'s failed mails ({"shop", "failed": true})',
        tags=("mails",), body=RetryBody, errors=(409,)))
