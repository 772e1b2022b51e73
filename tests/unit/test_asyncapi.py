"""docs/asyncapi.yaml: what `python -m orderflow.asyncapi` writes, valid AsyncAPI 3.0.0, every topic and its DLQ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from contracts.topics import ALL
from orderflow import asyncapi

OFFICIAL_SCHEMA = Path(__file__).parents[1] / "data" / "asyncapi-3.0.0.schema.json"  # see tests/data/README.md


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return asyncapi.document()


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return yaml.safe_load(asyncapi.DOCUMENT.read_text())


def test_committed_file_is_what_the_generator_writes(generated: dict[str, Any]) -> None:
    assert asyncapi.DOCUMENT.read_text() == asyncapi.render(generated), (
        "docs/asyncapi.yaml is out of date: run `.venv/bin/python -m orderflow.asyncapi` and commit it"
    )


def test_valid_against_the_official_asyncapi_3_schema(committed: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(OFFICIAL_SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(committed)]
    assert errors == []


def test_the_official_schema_catches_a_broken_document(committed: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(OFFICIAL_SCHEMA.read_text()))
    broken = json.loads(json.dumps(committed))
    broken["operations"]["orders.receive.order.placed"]["action"] = "publish"  # AsyncAPI 2's word, not 3's
    assert not validator.is_valid(broken)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for k, v in node.items() if k != "$ref" for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _pointer(doc: dict[str, Any], ref: str) -> Any:
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_and_operations_use_their_channels_messages(committed: dict[str, Any]) -> None:
    refs = _refs(committed)
    assert refs and all(ref.startswith("#/") for ref in refs)
    for ref in refs:
        _pointer(committed, ref)  # KeyError names the dangling reference
    for name, op in committed["operations"].items():
        channel = op["channel"]["$ref"]
        assert all(m["$ref"].startswith(channel + "/messages/") for m in op["messages"]), name


def test_every_topic_with_its_key_schema_readers_and_dlq(committed: dict[str, Any]) -> None:
    channels, operations = committed["channels"], committed["operations"]
    assert set(channels) == {t.name for t in ALL} | {t.dlq for t in ALL}
    readers = asyncapi.readers()
    for spec in ALL:
        channel = channels[spec.name]
        assert channel["bindings"]["kafka"]["topicConfiguration"]["cleanup.policy"] == [spec.cleanup_policy]
        message = _pointer(committed, channel["messages"][spec.model.__name__]["$ref"])
        assert spec.key_doc in message["bindings"]["kafka"]["key"]["description"]
        payload = _pointer(committed, message["payload"]["$ref"])
        assert set(payload["properties"]) == set(spec.model.model_fields)
        assert "DeadLetter" in channels[spec.dlq]["messages"]
        for reader in readers.get(spec.name, []):
            assert operations[f"{reader}.receive.{spec.name}"]["action"] == "receive"
            assert operations[f"{reader}.dead-letter.{spec.name}"]["channel"]["$ref"] == f"#/channels/{spec.dlq}"
    assert readers["order.placed"] == ["cart", "orders"]  # the wiring is really read, not assumed
