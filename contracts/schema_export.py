"""Writes the JSON Schema of every topic's model to contracts/schemas/ (`python -m contracts.schema_export`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from contracts.topics import ALL

SCHEMA_DIR = Path(__file__).parent / "schemas"


def schemas() -> dict[str, str]:
    out = {}
    for spec in ALL:
        schema = spec.model.model_json_schema(mode="validation")
        schema["$id"] = f"https://orderflow.invalid/schemas/{spec.name}.json"
        schema["x-topic"] = {"name": spec.name, "key": spec.key_doc, "cleanup.policy": spec.cleanup_policy}
        out[f"{spec.name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, text in schemas().items():
        (SCHEMA_DIR / name).write_text(text)
    print(f"wrote {len(schemas())} schemas to {SCHEMA_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
