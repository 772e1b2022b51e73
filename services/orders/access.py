"""Who may use the back office, and which shop they reach (DESIGN.md, "Back office HTTP API": credentials).

- `BACKOFFICE_TOKEN`: the operator, every shop. Where an order id alone is ambiguous, the operator names the shop
  (`?shop_id=`); otherwise 409 listing the shops.
- A shop's merchant credential (`orderflow shop credentials create SHOP`): that shop only. Another shop's order is
  404, exactly like a missing one; a revoked credential is 401 on the next request.
- A storefront key is not a back-office credential (it is publishable): 401 here.

Failed bearer tokens and failed sign-ins share one budget per client address (`Throttle`: 10 a minute; beyond it
every try from that address, right or wrong, is 429 with Retry-After until the minute has passed). The address is
the TCP peer: behind a proxy every client shares the proxy's address, so a proxy in front of the back office should
do its own limiting per client.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from orderflow.auth.credentials import Principal, Throttle, Verifier
from orderflow.runtime.http import error

if TYPE_CHECKING:
    from orderflow.runtime.app import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = "orderflow.principal"


def address(request: web.Request) -> str:
    return request.remote or "unknown"


def bearer(request: web.Request) -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" and given.strip() else None


def principal_of(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def too_many(retry_after: float) -> web.Response:
    response = error(429, "too many failed sign-in attempts from this address; try again shortly")
    response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return response


class Access:
    def __init__(self, rt: Runtime, throttle: Throttle | None = None) -> None:
        self.verifier = Verifier(rt.pool, rt.settings.backoffice_token)
        self.throttle = throttle or Throttle()

    def api(self, handler: Handler) -> Handler:
        """A JSON route for the operator or a merchant; the principal is `principal_of(request)`."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            who = address(request)
            if (wait := self.throttle.retry_after(who)) > 0:
                return too_many(wait)
            principal = await self.verifier.principal(bearer(request), kinds=("merchant",))
            if principal is None:
                self.throttle.record(who)
                return error(401, "missing, wrong or revoked bearer token")
            request[PRINCIPAL] = principal
            return await handler(request)

        return guarded
