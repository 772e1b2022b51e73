"""Back-office HTTP reads of the stock: one SKU, or a shop's SKUs page by page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from orderflow.runtime.http import ApiError, int_param, json_response
from orderflow.runtime.openapi import Param, RouteDoc, integer
from services.inventory import repository as repo

if TYPE_CHECKING:
    from orderflow.runtime.app import Runtime

MAX_PER_PAGE = 500


def _level(row: Any) -> dict[str, Any]:
    return {"shop_id": row["shop_id"], "sku": row["sku"], "available": row["available"],
            "updated_at": row["updated_at"]}


def add_routes(rt: Runtime) -> None:
    async def get_stock(request: web.Request) -> web.Response:
        shop_id, sku = request.match_info["shop_id"], request.match_info["sku"]
        row = await repo.get_level(await rt.pool(), shop_id, sku)
        if row is None:
            raise ApiError(404, f"no stock known for SKU {sku!r} of shop {shop_id!r}")
        return json_response(_level(row))

    async def list_stock(request: web.Request) -> web.Response:
        page = int_param(request, "page", 1, 1, 1_000_000)
        per_page = int_param(request, "per_page", 50, 1, MAX_PER_PAGE)
        out_first = request.query.get("out_of_stock_first", "0").lower() in {"1", "true", "yes"}
        total, rows = await repo.list_levels(await rt.pool(), request.match_info["shop_id"], page=page,
                                             per_page=per_page, out_of_stock_first=out_first)
        return json_response({"shop_id": request.match_info["shop_id"], "page": page, "per_page": per_page,
                              "total": total, "items": [_level(r) for r in rows]})

    rt.http.route("GET", "/stock/{shop_id}", list_stock, doc=RouteDoc(
        "a shop's stock levels, page by page", tags=("stock",), query=(
            Param("page", integer(1, 1_000_000, 1)), Param("per_page", integer(1, MAX_PER_PAGE, 50)),
            Param("out_of_stock_first", {"type": "string", "enum": ["0", "1", "true", "false", "yes", "no"]},
                  "1/true/yes: SKUs with nothing available first"))))
    rt.http.route("GET", "/stock/{shop_id}/{sku:.+}", get_stock, doc=RouteDoc(
        "one SKU's stock level", tags=("stock",), errors=(404,)))
