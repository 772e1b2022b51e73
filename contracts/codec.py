"""Bytes <-> models. The only place where an event's JSON is parsed or written."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import ValidationError

from contracts.base import Event
from contracts.topics import MAX_EVENT_BYTES, TopicSpec

E = TypeVar("E", bound=Event)


class ContractError(ValueError):
    """A message that does not honour its topic's contract; `reason` names the field and the fault."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def decode(model: type[E], raw: bytes | str | None) -> E:
    """Parse and validate one message value, or raise ContractError naming what is wrong."""
    if raw is None:
        raise ContractError("empty value (tombstone) where an event was expected", "empty")
    if len(raw) > MAX_EVENT_BYTES:
        raise ContractError(f"value of {len(raw)} bytes is over the {MAX_EVENT_BYTES}-byte limit", "too_large")
    try:
        return model.model_validate_json(raw)  # one pass in pydantic-core: the common case, about 40 % cheaper
    except ValidationError:
        pass  # classified below, the way every message used to be parsed (and accepted, should that differ)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"not UTF-8 JSON: {exc}", "not_json") from exc
    if not isinstance(data, dict):
        raise ContractError(f"value must be a JSON object, got {type(data).__name__}", "not_object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ContractError(_describe(exc), "invalid") from exc


def decode_for(spec: TopicSpec, raw: bytes | str | None) -> Event:
    return decode(spec.model, raw)


def encode(event: Event) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()
