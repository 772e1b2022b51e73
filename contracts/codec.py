"""Bytes <-> models. The only place where an event's JSON is parsed or written.

`decode` raises ContractError and nothing else, whatever the bytes: a message that cannot be read must go to its
dead-letter topic, never stop the consumer (an OverflowError used to stall order intake for every shop). What it
refuses, and with which `kind` (the `dlq.error.kind` header; docs/storefront.md lists them):

- `empty`: no value (a tombstone).
- `too_large`: over MAX_EVENT_BYTES.
- `not_json`: not UTF-8 (invalid bytes, a lone surrogate such as `"\\ud800"`, which PostgreSQL could not store), not
  one JSON document, nested deeper than MAX_DEPTH, or a number of more than ~4,300 digits. A leading UTF-8 byte-order
  mark is ignored (RFC 8259 allows it; `json.loads` did so before).
- `not_object`: JSON, but not an object.
- `invalid`: an object that breaks the model (a missing or wrong field, a number or a date out of its bound); the
  reason names the field.
- `unclassified`: anything else that went wrong in the decoder. Never expected: tests and bench/fuzz_decode.py treat
  it as a bug to fix at its cause; it exists so that such a bug dead-letters one message instead of stopping a topic.

Parsing is pydantic-core's one pass (`model_validate_json`); nothing here parses a second time. Unknown fields are
skipped by it unread into Python objects; a duplicated key keeps its last value, as `json.loads` did; NaN and
Infinity are accepted by the parser but refused by every integer field (no field is a float).
"""

from __future__ import annotations

from itertools import accumulate
from typing import TypeVar

from pydantic import ValidationError

from contracts.base import Event
from contracts.topics import MAX_EVENT_BYTES, TopicSpec

E = TypeVar("E", bound=Event)

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted anywhere in a value, ignored fields included (events need 4)."""

UNCLASSIFIED = "unclassified"
_MAX_REASON = 1000
_BOM = b"\xef\xbb\xbf"
_NOT_SKELETON = bytes(b for b in range(256) if b not in b'[]{}"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_ROUNDS = 4
_STEP = [1 if b == ord("[") else -1 if b == ord("]") else 0 for b in range(256)]
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


class ContractError(ValueError):
    """A message that does not honour its topic's contract; `reason` names the field and the fault, `kind` the class
    of fault (see the module docstring). The reason is always encodable as UTF-8 (it goes into a Kafka header)."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")[:_MAX_REASON]
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


def _describe(errors: list) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(event)"
        parts.append(f"{where}: {err['msg']}")
    more = len(errors) - 5
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def _too_deep(raw: bytes | bytearray) -> bool:
    """True when arrays/objects nest deeper than MAX_DEPTH. Free for most events: fewer brackets than MAX_DEPTH cannot
    nest deeper. Otherwise, with C-level bytes methods: escaped backslashes and quotes are dropped, then every byte but
    quotes and brackets (`{}` made `[]`), then strings (empty ones at once; pieces between quotes when a string held a
    bracket); a few rounds remove innermost `[]` pairs (each round lowers the depth by exactly one, and an event is
    about 3 deep), and what is left, if anything, is measured in one pass. Exact for well-formed JSON; what it misjudges
    is not well formed, and the parser refuses it anyway. A 500-line order (32 KB) costs tens of µs; the worst case,
    512 KB of brackets, tens of ms (pydantic-core's own parse of such a value is of the same order)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = raw.translate(_SQUARE, _NOT_SKELETON)
    bare = skeleton.replace(b'""', b"")
    if b'"' in bare:  # a string holds a bracket (or the value is not JSON): strings are the odd pieces
        bare = b"".join(skeleton.split(b'"')[::2])
    for _ in range(_ROUNDS):
        if not bare:
            return False
        reduced = bare.replace(b"[]", b"")
        if len(reduced) == len(bare):
            return False  # no innermost pair: not well formed, the parser refuses it
        bare = reduced
    return bool(bare) and max(accumulate(map(_STEP.__getitem__, bare))) > MAX_DEPTH - _ROUNDS


def _refusal(exc: ValidationError) -> ContractError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0] if errors else {"type": "", "loc": ()}
    if first["type"] == "json_invalid":
        # never json.loads it again: Python's parser is where RecursionError and ValueError (int digits) came from
        msg = str(first.get("msg", "")).removeprefix("Invalid JSON: ")
        if "recursion limit" in msg:
            return ContractError(f"not UTF-8 JSON: nested too deep ({msg})", "not_json")
        if "number out of range" in msg:
            return ContractError(f"not UTF-8 JSON: a number too large to read ({msg})", "not_json")
        return ContractError(f"not UTF-8 JSON: {msg}", "not_json")
    if first["type"] == "string_unicode" and not first["loc"]:
        return ContractError("not UTF-8 JSON: holds a lone surrogate, which has no UTF-8 form", "not_json")
    if first["type"] == "model_type" and not first["loc"]:
        got = exc.errors(include_url=False, include_context=False)[0].get("input")
        return ContractError(f"value must be a JSON object, got {_JSON_TYPES.get(type(got), 'something else')}",
                             "not_object")
    return ContractError(_describe(errors), "invalid")


def _decode(model: type[E], raw: bytes | bytearray | str | None) -> E:
    if raw is None:
        raise ContractError("empty value (tombstone) where an event was expected", "empty")
    if isinstance(raw, str):
        if len(raw) > MAX_EVENT_BYTES:
            raise ContractError(f"value of {len(raw)} characters is over the {MAX_EVENT_BYTES}-byte limit",
                                "too_large")
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise ContractError("not UTF-8 JSON: holds a lone surrogate, which has no UTF-8 form", "not_json") from None
    elif not isinstance(raw, bytes | bytearray):
        raise ContractError(f"value must be bytes or str, got {type(raw).__name__}", "not_json")
    if len(raw) > MAX_EVENT_BYTES:
        raise ContractError(f"value of {len(raw)} bytes is over the {MAX_EVENT_BYTES}-byte limit", "too_large")
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if _too_deep(raw):
        raise ContractError(f"not UTF-8 JSON: nested deeper than {MAX_DEPTH} levels", "not_json")
    return model.model_validate_json(raw)


def decode(model: type[E], raw: bytes | bytearray | str | None) -> E:
    """Parse and validate one message value, or raise ContractError naming what is wrong; never anything else.

    The common case (bytes, under the size limit, under MAX_DEPTH brackets, no byte-order mark) is pydantic-core's one
    pass and two `bytes.count`; everything else goes through `_decode`."""
    try:
        if (type(raw) is bytes and len(raw) <= MAX_EVENT_BYTES and raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH
                and not raw.startswith(_BOM)):
            return model.model_validate_json(raw)  # one pass in pydantic-core: the only parse
        return _decode(model, raw)
    except ValidationError as exc:
        raise _refusal(exc) from exc
    except ContractError:
        raise
    except Exception as exc:  # noqa: BLE001 - the safety net: one unreadable message must not stop a topic
        try:
            what = f"{type(exc).__name__}: {exc}"
        except Exception:  # noqa: BLE001 - an exception whose str() fails
            what = type(exc).__name__
        raise ContractError(f"unclassified decoder failure: {what}", UNCLASSIFIED) from exc


def decode_for(spec: TopicSpec, raw: bytes | str | None) -> Event:
    return decode(spec.model, raw)


def encode(event: Event) -> bytes:
    return event.model_dump_json(exclude_none=True).encode()
