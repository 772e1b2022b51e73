"""The AsyncAPI 3.0 document of every topic, written to `docs/asyncapi.yaml` (`python -m orderflow.asyncapi`).

Generated, never edited by hand: the topics, their keys, producers and cleanup come from the catalogue
(`contracts/topics.py`), the message schemas from the pydantic models (`contracts/events.py`, the same models the
JSON Schemas in `contracts/schemas/` are written from), and which service reads which topic from the services' own
wiring (each `services/<name>/service.py` builds its runtime; nothing is started or connected). Each topic has its
dead-letter topic `<topic>.dlq` beside it: the original key and bytes with `dlq.*` headers
(`orderflow/runtime/dlq.py`).

`tests/unit/test_asyncapi.py` fails when the committed file differs from what this module writes, and validates it
against the official AsyncAPI 3.0.0 JSON Schema (`tests/data/asyncapi-3.0.0.schema.json`).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from contracts.events import VERSION
from contracts.topics import ALL, TopicSpec
from orderflow.runtime import dlq

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.yaml"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
REF = "#/components/schemas/{model}"
DEAD_LETTER = "DeadLetter"

DLQ_HEADERS: dict[str, str] = {
    dlq.HEADER_ERROR: "why the record could not be used (up to 2,000 characters)",
    dlq.HEADER_KIND: "the kind of failure, e.g. invalid",
    dlq.HEADER_SERVICE: "the service that dead-lettered it",
    dlq.HEADER_TOPIC: "the topic it was read from",
    dlq.HEADER_PARTITION: "its partition there",
    dlq.HEADER_OFFSET: "its offset there",
    dlq.HEADER_STUB: "true when the record was too large to keep whole: the value is its first bytes only",
    dlq.HEADER_STUB_REASON: "why it is a stub",
    dlq.HEADER_ORIGINAL_SIZE: "a stub's original value size in bytes",
    dlq.HEADER_ORIGINAL_KEY_SIZE: "a stub's original key size in bytes",
}


def readers() -> dict[str, list[str]]:
    """Topic -> the services that consume it, from each service's wiring (built, not started)."""
    from orderflow.services import discover
    from orderflow.settings import Settings

    consumed: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as data_dir:
        for spec in discover():
            settings = Settings(
                service=spec.name,
                kafka_bootstrap_servers="127.0.0.1:9",
                http_port=0,
                database_url="postgresql://nobody@127.0.0.1:9/none",
                backoffice_token="unused",
                data_dir=Path(data_dir),
                store="memory",
            )
            runtime = spec.build(settings)
            for topic in runtime._consumed:  # noqa: SLF001 - the runtime's record of its consumers
                consumed.setdefault(topic, []).append(spec.name)
    return {topic: sorted(names) for topic, names in consumed.items()}


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "-", text.strip()).strip("-")


def _kafka_key(spec: TopicSpec) -> dict[str, Any]:
    return {
        "kafka": {
            "key": {"type": "string", "description": f"the record key: {spec.key_doc}"},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }


def _channel(address: str, message: str, description: str, cleanup: str) -> dict[str, Any]:
    return {
        "address": address,
        "description": description,
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "bindings": {
            "kafka": {
                "topic": address,
                "topicConfiguration": {"cleanup.policy": [cleanup]},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _operation(action: str, channel: str, message: str, summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "summary": summary,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
    }


def document(consumers: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The AsyncAPI document; `consumers` (topic -> services) defaults to what the services' wiring says."""
    consumers = readers() if consumers is None else consumers
    refs, defs = models_json_schema([(spec.model, "validation") for spec in ALL], ref_template=REF)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in ALL:
        name = spec.model.__name__
        doc = (spec.model.__doc__ or "").strip()
        messages[name] = {
            "name": name,
            "title": spec.name,
            "contentType": "application/json",
            **({"description": doc} if doc else {}),
            "payload": refs[(spec.model, "validation")],
            "bindings": _kafka_key(spec),
        }
        readers_of = consumers.get(spec.name, [])
        channels[spec.name] = _channel(
            spec.name,
            name,
            f"Key: {spec.key_doc}. Produced by {spec.produced_by}; read by {', '.join(readers_of) or 'no service'}. "
            f"Cleanup: {spec.cleanup_policy}. Records that cannot be used go to {spec.dlq}.",
            spec.cleanup_policy,
        )
        channels[spec.dlq] = _channel(
            spec.dlq,
            DEAD_LETTER,
            f"Dead letters of {spec.name}: the original key ({spec.key_doc}) and value bytes, untouched, with dlq.* "
            "headers saying what was wrong and where the record came from.",
            "delete",
        )
        for producer in spec.produced_by.split(","):
            operations[f"{_slug(producer)}.send.{spec.name}"] = _operation(
                "send", spec.name, name, f"{producer.strip()} publishes {spec.name}"
            )
        for reader in readers_of:
            operations[f"{reader}.receive.{spec.name}"] = _operation(
                "receive", spec.name, name, f"{reader} consumes {spec.name}"
            )
            operations[f"{reader}.dead-letter.{spec.name}"] = _operation(
                "send", spec.dlq, DEAD_LETTER, f"{reader} dead-letters the {spec.name} records it cannot use"
            )
    messages[DEAD_LETTER] = {
        "name": DEAD_LETTER,
        "title": "dead letter",
        "contentType": "application/octet-stream",
        "description": "A record a service could not use, kept as it was read; `orderflow dlq list|redrive`.",
        "headers": {
            "type": "object",
            "properties": {header: {"type": "string", "description": text} for header, text in DLQ_HEADERS.items()},
        },
        "payload": {"type": "string", "format": "binary", "description": "the original value bytes"},
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": "the original key"},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "orderflow topics",
            "version": VERSION,
            "description": "Every Kafka topic of orderflow's contract (DESIGN.md), its key, message schema, "
            "producers, consumers and dead-letter topic. Generated by `python -m orderflow.asyncapi` "
            "from contracts/topics.py and contracts/events.py; do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "{bootstrap}",
                "protocol": "kafka",
                "description": "the cluster the services use (KAFKA_BOOTSTRAP_SERVERS)",
                "variables": {
                    "bootstrap": {
                        "default": "localhost:9092",
                        "description": "host:port of a broker; `orderflow env` prints the local stack's",
                    }
                },
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(defs.get("$defs", {}).items()))},
    }


def render(doc: dict[str, Any]) -> str:
    import yaml  # a developer's tool (the dev extra); the services never import this module

    header = "# Generated by `python -m orderflow.asyncapi` from the topic catalogue and the models: do not edit.\n"
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


def main() -> int:
    DOCUMENT.write_text(render(document()))
    print(f"wrote {DOCUMENT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
