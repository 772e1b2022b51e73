"""Each service's /openapi.json: valid OpenAPI 3.1 (openapi-spec-validator), naming every route aiohttp has."""

from __future__ import annotations

from pathlib import Path

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from orderflow.runtime.app import Runtime
from orderflow.runtime.openapi import openapi_path
from orderflow.services import discover
from orderflow.settings import Settings

PAGES = "/backoffice"
"""The back office's HTML pages: listed, but described only by their path (they answer pages, not JSON)."""


def build(name: str, data_dir: Path) -> Runtime:
    spec = next(s for s in discover() if s.name == name)
    return spec.build(
        Settings(
            service=name,
            kafka_bootstrap_servers="127.0.0.1:9",
            http_port=0,
            database_url="postgresql://nobody@127.0.0.1:9/none",
            backoffice_token="unused",
            data_dir=data_dir,
            store="memory",
        )
    )


@pytest.mark.parametrize("service", [s.name for s in discover()])
def test_valid_openapi_31_with_every_route(service: str, tmp_path: Path) -> None:
    runtime = build(service, tmp_path)
    doc = runtime.http.openapi()
    validate(doc)
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] == f"orderflow {service}"
    routes = {
        (r.method.lower(), openapi_path(r.resource.canonical))
        for r in runtime.http.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented
    assert {("get", "/health"), ("get", "/metrics"), ("get", "/openapi.json")} <= documented


@pytest.mark.parametrize("service", [s.name for s in discover()])
def test_documented_routes_answer_json_errors(service: str, tmp_path: Path) -> None:
    doc = build(service, tmp_path).http.openapi()
    assert any("default" not in op["responses"] for ops in doc["paths"].values() for op in ops.values())
    for path, ops in doc["paths"].items():
        if path.startswith(PAGES):
            continue
        for method, op in ops.items():
            if "default" in op["responses"]:
                continue  # registered without a RouteDoc: listed by its path only
            errors = {status: r for status, r in op["responses"].items() if status.startswith(("4", "5"))}
            assert "503" in errors
            for answer in errors.values():
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if op["security"]:
                assert "401" in errors, f"{method.upper()} {path}"


def test_bodies_are_the_pydantic_models(tmp_path: Path) -> None:
    doc = build("orders", tmp_path).http.openapi()
    refund = doc["paths"]["/orders/{order_id}/refunds"]["post"]["requestBody"]["content"]["application/json"]
    schema = doc["components"]["schemas"][refund["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"refund_id", "amount_cents"}
    assert schema["properties"]["amount_cents"]["exclusiveMinimum"] == 0
    tabs = next(p for p in doc["paths"]["/orders"]["get"]["parameters"] if p["name"] == "tab")
    assert tabs["schema"]["enum"] == ["pending", "closed", "incomplete"]


def test_the_validator_refuses_a_broken_document(tmp_path: Path) -> None:
    doc = build("inventory", tmp_path).http.openapi()
    doc["paths"]["/stock/{shop_id}"]["get"]["parameters"][0]["in"] = "body"  # Swagger 2's, not OpenAPI 3's
    with pytest.raises(OpenAPIValidationError):
        validate(doc)
