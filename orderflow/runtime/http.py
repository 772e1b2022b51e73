"""Each service's HTTP surface (aiohttp): JSON errors, bearer-token auth, /health and /metrics."""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orderflow.runtime import openapi
from orderflow.runtime.failures import Cause, classify, describe

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """Raised by a handler to answer `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=_default))


def error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request body as `model`, or a 400 naming what is wrong."""
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"{where}: {first['msg']}") from None


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """A whole-number query parameter within [lo, hi], or a 400 naming it."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return value


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason or "error")
    except Exception as exc:
        if classify(exc) is Cause.DEPENDENCY:
            log.warning("%s %s: %s", request.method, request.path, describe(exc))
            return error(503, "the database or the broker is unavailable; try again shortly")
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal error")


@web.middleware
async def _refuse_nul(request: web.Request, handler: Handler) -> web.StreamResponse:
    """PostgreSQL text cannot hold NUL: a path segment or query value with one is the client's error (400), not a
    500 from the database (tests/integration/test_api_fuzz.py sends one in every parameter)."""
    for name, value in (*request.match_info.items(), *request.query.items()):
        if "\x00" in name or "\x00" in value:
            return error(400, "path segments and query parameters must not contain NUL characters")
    return await handler(request)


def bearer_auth(token: str, handler: Handler) -> Handler:
    """A missing or wrong token is 401; the comparison takes constant time."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return error(401, "missing or wrong bearer token")
        return await handler(request)

    return guarded


def public_health(report: dict[str, Any]) -> dict[str, Any]:
    """The health report without error text (which can name hosts, users, paths): each part's state word only,
    what is paused by name only. The full report is for the bearer of the back-office token."""
    public: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, str):
            public[key] = value.split(":", 1)[0]
        elif isinstance(value, dict):
            public[key] = sorted(value)
        else:
            public[key] = value
    return public


class HttpSurface:
    def __init__(self, port: int, token: str, health: Callable[[], Awaitable[dict[str, Any]]],
                 metrics: Callable[[], bytes]) -> None:
        self.port = port
        self.token = token
        self.app = web.Application(middlewares=[_json_errors, _refuse_nul], client_max_size=2 * 1024 * 1024)
        self._runner: web.AppRunner | None = None
        self._health = health
        self._metrics = metrics
        self.app.router.add_get("/health", self._get_health)
        self.app.router.add_get("/health/ready", self._get_health)
        self.app.router.add_get("/health/live", self._get_live)
        self.app.router.add_get("/metrics", self._get_metrics)
        self.app.router.add_get("/openapi.json", self._get_openapi)
        self.title = "orderflow"
        """The OpenAPI document's title (the Runtime names its service)."""
        self.docs: dict[tuple[str, str], openapi.RouteDoc] = {
            ("GET", "/health"): openapi.RouteDoc(
                "the same as /health/ready", errors=(503,), bearer=False, tags=("operations",)),
            ("GET", "/health/ready"): openapi.RouteDoc(
                "whether the worker is ready: 200 when it is, 503 when it is not; each part's state, with the "
                "errors only for the bearer of the back-office token", errors=(503,), bearer=False,
                tags=("operations",)),
            ("GET", "/health/live"): openapi.RouteDoc(
                "200 while the worker's event loop answers (restart it when this fails)", bearer=False,
                tags=("operations",)),
            ("GET", "/metrics"): openapi.RouteDoc("Prometheus metrics", content="text/plain", bearer=False,
                                                  tags=("operations",)),
            ("GET", "/openapi.json"): openapi.RouteDoc("this document", bearer=False, tags=("operations",)),
        }
        self._auth: dict[tuple[str, str], bool] = {}

    def route(self, method: str, path: str, handler: Handler, *, auth: bool = True,
              doc: openapi.RouteDoc | None = None) -> None:
        """Add a route; `doc` is what `/openapi.json` says of it beyond its method and path."""
        self.app.router.add_route(method, path, bearer_auth(self.token, handler) if auth else handler)
        key = (method.upper(), openapi.openapi_path(path))
        self._auth[key] = auth
        if doc is not None:
            self.docs[key] = doc

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 document of every route this surface has."""
        return openapi.document(self.app, self.docs, self._auth, self.title)

    async def _get_health(self, request: web.Request) -> web.Response:
        report = await self._health()
        if not self.authorized(request):
            report = public_health(report)
        return json_response(report, status=200 if report.get("ready") else 503)

    async def _get_live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    def authorized(self, request: web.Request) -> bool:
        """The request carries the back-office (operator) token."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    async def _get_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self._metrics(), content_type="text/plain", charset="utf-8")

    async def _get_openapi(self, request: web.Request) -> web.Response:
        return json_response(self.openapi())

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        # HTTP_BIND_HOST: all interfaces by default (a container's own network); 127.0.0.1 where containers share
        # the host's network (orderflow containers up), so nothing listens beyond loopback.
        site = web.TCPSite(self._runner, os.environ.get("HTTP_BIND_HOST", "0.0.0.0"), self.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server else []  # noqa: SLF001 - to learn port 0's pick
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("HTTP on port %s", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
