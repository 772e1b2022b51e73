"""The OpenAPI 3.1 document of a service's HTTP surface, served at `/openapi.json`.

It is built from the routes aiohttp really has (so a route cannot be left out) and from what a route's `RouteDoc`
adds: its summary, query parameters, the pydantic model of its body and its answers. Pydantic writes JSON Schema
2020-12, the dialect of OpenAPI 3.1, so a body's schema is the model's own; every error answer is `{"error": …}`
(`orderflow.runtime.http.error`). A route registered without a `RouteDoc` is still listed, with its path parameters
and a default answer. `tests/unit/test_openapi.py` validates each service's document with openapi-spec-validator and
checks it names every route; `tests/integration/test_api_fuzz.py` runs schemathesis against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from contracts.base import Identifier, Sku

if TYPE_CHECKING:
    from aiohttp import web

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what was wrong, for a person"}},
    "description": "Every error answer: the reason in `error`, sometimes with more fields (e.g. `shops`).",
}
PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


@dataclass(frozen=True)
class Param:
    """A query parameter: its JSON Schema (`{"type": "integer", "minimum": 1}`) and what it means."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    required: bool = False


def integer(lo: int, hi: int, default: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi, "default": default}


def one_of(values: Any) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


TEXT: dict[str, Any] = {"type": "string"}
IDENTIFIER: dict[str, Any] = TypeAdapter(Identifier).json_schema()
"""A path's ids (shop, order, cart) are the contract's identifiers: 1 to 128 characters, no slash or space."""
PATH_SCHEMAS: dict[str, dict[str, Any]] = {"sku": TypeAdapter(Sku).json_schema()}


@dataclass(frozen=True)
class RouteDoc:
    """What the OpenAPI document says of one route beyond its method and path.

    `errors`: the error statuses the route answers on purpose (400, 404, 409…), each `{"error": …}`; 401 is added
    for a route behind a bearer token, 503 (database or broker away) for every route. `content`: the success
    answer's media type; `result`: its JSON Schema when it is JSON.
    """

    summary: str
    query: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    status: int = 200
    result: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    content: str = "application/json"
    errors: tuple[int, ...] = ()
    bearer: bool | None = None
    """Whether the route needs a bearer token; None: what `HttpSurface.route(auth=…)` said."""
    tags: tuple[str, ...] = ()


def openapi_path(canonical: str) -> str:
    """aiohttp's `/stock/{shop_id}/{sku:.+}` as OpenAPI's `/stock/{shop_id}/{sku}`."""
    return PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", canonical)


def operation_id(method: str, path: str) -> str:
    """`get_orders_order_id`; a trailing slash stays apart (`/backoffice/` is not `/backoffice`)."""
    words = re.sub(r"[^A-Za-z0-9]+", "_", path.rstrip("/")).strip("_") or "root"
    return f"{method.lower()}_{words}" + ("_slash" if path.endswith("/") and path != "/" else "")


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}},
    }


ERROR_TEXT = {
    400: "the request is not valid",
    401: "missing or wrong bearer token",
    404: "not found",
    409: "refused: the reason is in `error`",
    429: "too many failed tokens from this address",
    503: "the database or the broker is unavailable; try again shortly",
}


def operation(
    method: str,
    path: str,
    doc: RouteDoc | None,
    auth: bool,
    body_refs: dict[type[BaseModel], Any],
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": PATH_SCHEMAS.get(name, IDENTIFIER)}
        for name in PATH_PARAM.findall(path)
    ]
    if doc is None:
        op: dict[str, Any] = {
            "summary": f"{method} {path}",
            "operationId": operation_id(method, path),
            "responses": {"default": {"description": "see the service's documentation"}},
        }
        if params:
            op["parameters"] = params
        return op
    params += [
        {
            "name": p.name,
            "in": "query",
            "required": p.required,
            "schema": p.schema,
            **({"description": p.description} if p.description else {}),
        }
        for p in doc.query
    ]
    success: dict[str, Any] = {"description": doc.summary}
    if doc.content:
        success["content"] = {doc.content: {"schema": doc.result if doc.content == "application/json" else TEXT}}
    responses: dict[str, Any] = {str(doc.status): success}
    bearer = auth if doc.bearer is None else doc.bearer
    # 400 wherever the client gives a value: a body, a query or a path parameter (a NUL in any is refused)
    statuses = set(doc.errors) | ({401} if bearer else set()) | ({400} if doc.body or params else set()) | {503}
    for status in sorted(statuses):
        responses[str(status)] = _error(ERROR_TEXT.get(status, "refused"))
    op = {"summary": doc.summary, "operationId": operation_id(method, path), "responses": responses}
    if doc.tags:
        op["tags"] = list(doc.tags)
    if params:
        op["parameters"] = params
    if doc.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_refs[doc.body]}}}
    op["security"] = [{"bearer": []}] if bearer else []
    return op


def document(
    app: web.Application,
    docs: dict[tuple[str, str], RouteDoc],
    auth: dict[tuple[str, str], bool],
    title: str,
    description: str = "",
) -> dict[str, Any]:
    """The OpenAPI document of `app`'s routes; `docs` and `auth` are keyed by (METHOD, `openapi_path(path)`)."""
    routes = [r for r in app.router.routes() if r.method != "HEAD" and r.resource is not None]  # HEAD: beside GET
    models = list(dict.fromkeys(d.body for d in docs.values() if d.body is not None))
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    body_refs: dict[type[BaseModel], Any] = {}
    if models:
        refs, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
        body_refs = {m: refs[(m, "validation")] for m in models}
        schemas.update(defs.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        canonical = route.resource.canonical  # type: ignore[union-attr]
        path = openapi_path(canonical)
        paths.setdefault(path, {})[route.method.lower()] = operation(
            route.method, path, docs.get((route.method, path)), auth.get((route.method, path), False), body_refs
        )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "1", "description": description or title},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "BACKOFFICE_TOKEN (the operator), or a shop's credential where the route says so",
                }
            },
        },
    }
