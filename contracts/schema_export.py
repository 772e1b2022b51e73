"""The JSON Schemas of the contract, written from the models (`python -m contracts.schema_export`).

Layout of `contracts/schemas/` (see contracts/README.md):
- the top level is the current contract (`VERSION`, now 1.1): one `<topic>.json` per topic of the catalogue, written
  by this module; each carries `$schema` (JSON Schema 2020-12) and `$id`
  `https://orderflow.example/schemas/<version>/<topic>.json`;
- `v1/` holds contract v1's schemas as they were released, never rewritten (its models are frozen in
  `contracts/v1.py`). They predate the versioned ids: no `$schema`, `$id` without a version.

`tests/unit/test_contracts.py` fails when the top level differs from what this module writes;
`tests/unit/test_contracts_compat.py` proves the current schemas accept every message the previous release accepted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.base import Event
from contracts.events import VERSION
from contracts.topics import ALL, TopicSpec

SCHEMA_DIR = Path(__file__).parent / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "https://orderflow.example/schemas"
RELEASED: dict[str, Path] = {"1": SCHEMA_DIR / "v1"}
"""Each earlier release of the contract and the folder that keeps its schemas as released, oldest first."""


def schema_id(topic: str, version: str = VERSION) -> str:
    return f"{ID_BASE}/{version}/{topic}.json"


def body(model: type[Event], spec: TopicSpec) -> dict[str, Any]:
    """A model's schema with the topic's facts, without `$schema` and `$id` (the parts every version shares)."""
    schema = model.model_json_schema(mode="validation")
    schema["x-topic"] = {"name": spec.name, "key": spec.key_doc, "cleanup.policy": spec.cleanup_policy}
    return schema


def document(spec: TopicSpec) -> dict[str, Any]:
    """The current version's schema of one topic."""
    return {"$schema": DIALECT, "$id": schema_id(spec.name)} | body(spec.model, spec)


def schemas() -> dict[str, str]:
    """File name -> text of every top-level (current version) schema."""
    return {f"{spec.name}.json": json.dumps(document(spec), indent=2, sort_keys=True) + "\n" for spec in ALL}


def released(version: str) -> dict[str, dict[str, Any]]:
    """Topic -> schema of an earlier release, read from its folder."""
    return {path.name.removesuffix(".json"): json.loads(path.read_text())
            for path in sorted(RELEASED[version].glob("*.json"))}


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in schemas().items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(schemas())} schemas of contract {VERSION} to {SCHEMA_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
