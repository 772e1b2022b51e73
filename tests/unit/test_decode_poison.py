"""Poison-proof input: `contracts.decode` raises ContractError and nothing else, for any bytes, str or None.

The first tests are the inputs seen in the field (each stalled a topic before), then the other unreadable shapes; the
properties at the end feed arbitrary bytes, arbitrary JSON and mutated valid events to every model of the catalogue.
A ContractError of kind `unclassified` comes from decode's safety net, not from a classified refusal: here it fails
the test like any other escape, since its cause should be fixed where it is raised.
"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import contracts
from contracts import ContractError, decode, encode
from contracts.base import MAX_INT
from contracts.codec import MAX_DEPTH, UNCLASSIFIED, _too_deep
from contracts.topics import ALL, MAX_EVENT_BYTES
from tests.examples import example

MODELS = [spec.model for spec in ALL]
EXAMPLES: dict[type, dict[str, Any]] = {m: json.loads(encode(example(m))) for m in MODELS}


def _placed(**changes: Any) -> dict[str, Any]:
    return EXAMPLES[contracts.OrderPlaced] | changes


def _raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def _with_extra(data: dict[str, Any], extra: bytes) -> bytes:
    """The event's JSON with one more field, `"junk": <extra>`, written as raw bytes."""
    return _raw(data)[:-1] + b', "junk": ' + extra + b"}"


def refused(model: type, raw: Any) -> ContractError:
    with pytest.raises(ContractError) as caught:
        decode(model, raw)
    error = caught.value
    assert error.kind != UNCLASSIFIED, f"only the safety net caught it: {error.reason}"
    error.reason.encode("utf-8")  # goes into a Kafka header: must always encode
    assert error.reason
    return error


def decodes_or_refuses(model: type, raw: Any) -> None:
    try:
        event = decode(model, raw)
    except ContractError as error:
        assert error.kind != UNCLASSIFIED, f"only the safety net caught it: {error.reason}"
        error.reason.encode("utf-8")
    else:
        assert isinstance(event, model)


# --- the three inputs seen in the field --------------------------------------------------------------------------


def test_an_occurred_at_with_no_utc_form_is_refused_naming_the_bound():
    """9999-12-31T23:59:59-01:00 is 10000-01-01 in UTC: astimezone raised OverflowError out of decode."""
    error = refused(contracts.OrderPlaced, _raw(_placed(occurred_at="9999-12-31T23:59:59-01:00")))
    assert error.kind == "invalid"
    assert error.reason == "occurred_at: must be between 2000-01-01T00:00:00Z and 24 h from now"


def test_json_nested_3000_deep_in_an_ignored_field_is_refused():
    """Was a RecursionError in the json.loads fallback after model_validate_json had refused the value."""
    for deep in (b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000):
        error = refused(contracts.OrderPlaced, _with_extra(_placed(), deep))
        assert error.kind == "not_json"
        assert f"nested deeper than {MAX_DEPTH} levels" in error.reason


def test_an_integer_of_5000_digits_is_refused():
    """Was a ValueError (Python's int-string conversion limit) from the json.loads fallback."""
    digits = b"9" * 5000
    error = refused(contracts.OrderPlaced, _with_extra(_placed(), digits))
    assert error.kind == "not_json" and "number too large" in error.reason
    in_field = _raw(_placed(total_cents=1)).replace(b'"total_cents": 1', b'"total_cents": ' + digits)
    assert refused(contracts.OrderPlaced, in_field).kind == "not_json"


# --- bounds -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    ["1999-12-31T23:59:59Z", "1999-12-31T23:59:59.999999Z", "2000-01-01T00:30:00+01:00", "0001-01-01T00:00:00+01:00",
     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2100-01-01T00:00:00Z"],
)
def test_timestamps_out_of_bounds_are_refused(when):
    error = refused(contracts.OrderPlaced, _raw(_placed(occurred_at=when)))
    assert error.reason.startswith("occurred_at: must be between 2000-01-01T00:00:00Z and 24 h from now")


def test_timestamps_within_bounds_are_accepted():
    now = datetime.now(UTC)
    for when in ("2000-01-01T00:00:00Z", "2000-01-01T01:00:00+01:00", (now + timedelta(hours=23)).isoformat(),
                 (now - timedelta(days=3650)).isoformat()):
        assert decode(contracts.OrderPlaced, _raw(_placed(occurred_at=when))).occurred_at.tzinfo is not None
    assert refused(contracts.OrderPlaced, _raw(_placed(occurred_at=(now + timedelta(hours=25)).isoformat())))


@pytest.mark.parametrize(
    ("model", "field"),
    [(contracts.InventoryLevel, "updated_at"), (contracts.CheckoutAbandoned, "started_at"),
     (contracts.OrderStatusChanged, "occurred_at")],
)
def test_every_timestamp_field_is_bounded(model, field):
    error = refused(model, _raw(EXAMPLES[model] | {field: "9999-12-31T23:59:59-01:00"}))
    assert error.reason.startswith(f"{field}: must be between 2000-01-01")


@pytest.mark.parametrize(
    ("model", "path"),
    [(contracts.OrderPlaced, ("total_cents",)), (contracts.OrderPlaced, ("items", 0, "unit_price_cents")),
     (contracts.PaymentConfirmed, ("amount_cents",)), (contracts.CheckoutStarted, ("total_cents",)),
     (contracts.InventoryLevel, ("available",)), (contracts.InventoryDeduction, ("lines", 0, "asked")),
     (contracts.CartUpdated, ("items", 0, "unit_price_cents")), (contracts.OrderStatusChanged, ("total_cents",))],
)
def test_integers_are_bounded(model, path):
    def with_value(value: Any) -> bytes:
        data = json.loads(json.dumps(EXAMPLES[model]))
        target = data
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return _raw(data)

    where = ".".join(str(p) for p in path)
    if path[-1] != "asked":  # moved <= asked is not a contract rule; asked = MAX_INT is fine either way
        decode(model, with_value(MAX_INT))
    for value in (MAX_INT + 1, 2**63, 2**64, 10**4000, -1):
        error = refused(model, with_value(value))
        assert error.reason.startswith(where + ":"), error.reason


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1.5", b'"1e3"'])
def test_non_finite_and_fractional_numbers_are_refused_in_integer_fields(literal):
    raw = _raw(_placed(total_cents=1)).replace(b'"total_cents": 1', b'"total_cents": ' + literal)
    assert refused(contracts.OrderPlaced, raw).reason.startswith("total_cents:")


def test_non_finite_numbers_in_an_ignored_field_are_ignored():
    for literal in (b"NaN", b"Infinity", b"1e400", b"123456789012345678901234567890"):
        assert decode(contracts.OrderPlaced, _with_extra(_placed(), literal)).total_cents == 4500


def test_nesting_is_bounded_at_max_depth_and_brackets_in_strings_do_not_count():
    def nested(depth: int) -> bytes:  # depth of the whole value: the event object is level 1
        return _with_extra(_placed(), b"[" * (depth - 1) + b"]" * (depth - 1))

    decode(contracts.OrderPlaced, nested(MAX_DEPTH))
    assert refused(contracts.OrderPlaced, nested(MAX_DEPTH + 1)).kind == "not_json"
    tricky = '[[[{{{ \\" [[ \\\\'
    many = _placed(customer={"email": "ann@example.com", "name": "[" * 200},
                   items=[{"sku": f"s{i}", "name": tricky, "quantity": 1, "unit_price_cents": 1} for i in range(80)])
    assert decode(contracts.OrderPlaced, _raw(many)).customer.name == "[" * 200


# --- unreadable shapes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b'{"event_id": "\xff"}',
     b"\x00", b"", b"   ", b"{} {}", b"{", b'{"a": 1,}', b"{'a': 1}", b"\xef\xbb\xbf\xef\xbb\xbf{}",
     b"\xfe\xff\x00{"],
)
def test_bytes_that_are_not_utf8_json_are_refused_as_not_json(raw):
    assert refused(contracts.OrderPlaced, raw).kind == "not_json"


def test_invalid_utf8_inside_a_known_or_an_ignored_string_is_refused():
    good = _raw(_placed())
    assert refused(contracts.OrderPlaced, good.replace(b"Ada Lovelace", b"Ada \xff Lovelace")).kind == "not_json"
    assert refused(contracts.OrderPlaced, _with_extra(_placed(), b'"\xed\xa0\x80"')).kind == "not_json"


@pytest.mark.parametrize("escape", ["\\ud800", "\\udc00", "\\ud800\\u0041", "\\udbff", "x\\ud83d"])
@pytest.mark.parametrize("field", ["cart_id", "junk", "currency"])
def test_lone_surrogate_escapes_are_refused_wherever_they_are(escape, field):
    """A str holding U+D800 cannot be encoded to UTF-8: asyncpg would fail on it at the database."""
    raw = _raw(_placed()).replace(b'"cart_id": "', b'"' + field.encode() + b'": "' + escape.encode() + b'", "x": "')
    assert refused(contracts.OrderPlaced, raw).kind == "not_json"


def test_a_surrogate_pair_escape_is_one_character():
    raw = _raw(_placed(customer={"email": "ann@example.com", "name": "\U0001f600"}))
    assert b"\\ud83d\\ude00" in raw
    assert decode(contracts.OrderPlaced, raw).customer.name == "\U0001f600"


def test_a_str_value_holding_a_lone_surrogate_is_refused():
    for name in ("\ud800", "ok"):
        text = json.dumps(_placed(customer={"email": "ann@example.com", "name": "Ann"}), ensure_ascii=False)
        text = text[:-1] + f', "junk": "{name}"}}'
        if name == "ok":
            assert decode(contracts.OrderPlaced, text).customer.name == "Ann"
        else:
            assert refused(contracts.OrderPlaced, text).kind == "not_json"


@pytest.mark.parametrize(("raw", "got"), [(b"[1, 2]", "array"), (b"null", "null"), (b"12", "number"),
                                          (b'"x"', "string"), (b"true", "boolean"), (b"[]", "array")])
def test_a_top_level_value_that_is_not_an_object_is_refused(raw, got):
    error = refused(contracts.OrderPlaced, raw)
    assert error.kind == "not_object" and error.reason.endswith(got)


def test_values_over_the_size_limit_are_refused_unread():
    megabyte = "a" * (1 << 20)
    assert refused(contracts.OrderPlaced, _raw(_placed(junk=megabyte))).kind == "too_large"
    assert refused(contracts.OrderPlaced, json.dumps(_placed(junk=megabyte))).kind == "too_large"
    assert refused(contracts.OrderPlaced, b"[" * (MAX_EVENT_BYTES + 1)).kind == "too_large"
    near = _raw(_placed(junk="a" * (MAX_EVENT_BYTES - 2000)))
    assert len(near) <= MAX_EVENT_BYTES and decode(contracts.OrderPlaced, near)


@pytest.mark.parametrize("field", ["event_id", "occurred_at", "shop_id", "order_id", "customer", "items",
                                   "total_cents", "currency", "payment"])
def test_null_in_a_required_field_is_refused_naming_it(field):
    error = refused(contracts.OrderPlaced, _raw(_placed(**{field: None})))
    assert error.kind == "invalid" and error.reason.startswith(field + ":"), error.reason


def test_duplicate_keys_keep_the_last_value():
    raw = _raw(_placed(total_cents=1))[:-1] + b', "total_cents": 99}'
    assert decode(contracts.OrderPlaced, raw).total_cents == 99
    raw = _raw(_placed(total_cents=1))[:-1] + b', "total_cents": -5}'
    assert refused(contracts.OrderPlaced, raw).reason.startswith("total_cents:")


def test_a_leading_utf8_byte_order_mark_is_ignored():
    assert decode(contracts.OrderPlaced, b"\xef\xbb\xbf" + _raw(_placed())).total_cents == 4500
    assert decode(contracts.OrderPlaced, "\ufeff" + json.dumps(_placed())).total_cents == 4500


@pytest.mark.parametrize("value", [123, 1.5, {"a": 1}, ["x"], memoryview(b"{}"), object(), ("{}",)])
def test_a_value_of_another_type_is_refused(value):
    assert refused(contracts.OrderPlaced, value).kind == "not_json"


def test_bytearray_and_str_are_read_like_bytes():
    raw = _raw(_placed())
    assert decode(contracts.OrderPlaced, bytearray(raw)) == decode(contracts.OrderPlaced, raw.decode())


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [(contracts.CustomerMessageRequested, "text", "hello\x00"), (contracts.CustomerMessageRequested, "text", "a\x1b"),
     (contracts.CheckoutAbandoned, "recovery_url", "https://x.example/\x00"),
     (contracts.CheckoutAbandoned, "recovery_url", "https://x.example/" + "a" * 3000),
     (contracts.ShopSettings, "merchant_email", "a\x00b@example.com"), (contracts.OrderPlaced, "cart_id", "c\x00")],
)
def test_nul_and_control_characters_postgresql_would_refuse_are_refused(model, field, value):
    assert refused(model, _raw(EXAMPLES[model] | {field: value})).reason.startswith(field + ":")


def test_a_message_text_keeps_its_lines():
    data = EXAMPLES[contracts.CustomerMessageRequested] | {"text": "Hello,\r\n\tsee you\n"}
    assert decode(contracts.CustomerMessageRequested, _raw(data)).text == "Hello,\r\n\tsee you\n"


def test_the_safety_net_turns_any_other_failure_into_a_contract_error():
    class Broken:
        @classmethod
        def model_validate_json(cls, raw: bytes) -> None:
            raise OverflowError("date value out of range")

    with pytest.raises(ContractError) as caught:
        decode(Broken, b"{}")  # type: ignore[type-var]
    assert caught.value.kind == UNCLASSIFIED and "OverflowError" in caught.value.reason


def test_a_reason_is_always_utf8_and_bounded():
    error = ContractError("bad \ud800 " + "x" * 5000)
    assert error.reason.encode("utf-8") and len(error.reason) <= 1000


# --- the depth scan agrees with a real parser ---------------------------------------------------------------------


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\ab\n\u00e9\U0001f600', max_size=8)
json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(tricky_text, inner, max_size=4), max_leaves=30)


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    value = draw(json_values)
    for _ in range(draw(st.integers(0, MAX_DEPTH + 3))):
        value = draw(st.sampled_from([lambda v: [v], lambda v: {"k": v}, lambda v: [1, v, "]"],
                                      lambda v: {"[": v, "x": "}}"}]))(value)
    return value


@settings(max_examples=150, deadline=None)
@given(value=deep_values(), ensure_ascii=st.booleans())
def test_the_depth_scan_is_exact_on_well_formed_json(value, ensure_ascii):
    raw = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    assert _too_deep(raw) == (_depth(value) > MAX_DEPTH)


# --- properties: every model of the catalogue ---------------------------------------------------------------------

NASTY: list[Any] = [
    None, True, 0, -1, 1.5, MAX_INT, MAX_INT + 1, 2**63, 10**300, 1e308, float("inf"), float("nan"), "", " ",
    "\x00", "\ud800", "\udfff", "a\r\nBcc: x@y.z", "x" * 600, "x" * 11_000, "[" * 70, "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00", "1999-12-31T23:59:59Z", "2000-01-01T00:00:00Z", "2026-11-25T10:00:00",
    "2100-01-01T00:00:00Z", "P1D", 1e11, 1e20, -1e20, 253402300800, -62135596800, str(uuid.UUID(int=0)),
    "not-a-uuid", [], {}, [[]] * 3, {"email": "a@b.c"}, "EUR", "eur", "a@b.com, c@d.com", "ann@example.com",
    "a" * 65 + "@example.com", "gateway", "pending", "deducted", "\u2028", "\U0001f600", "fr-FR", "FR-fr", "fr_FR",
    "zh-Hant-TW", "x-" + "a" * 40, "GB", "UK", "ZZ", [60, 30], [1, 2, 3, 4],
]


def _field_names(schema: Any, found: set[str]) -> set[str]:
    """Every property name in a JSON Schema, nested models included."""
    if isinstance(schema, dict):
        for key, inner in schema.items():
            if key == "properties" and isinstance(inner, dict):
                found.update(inner)
            _field_names(inner, found)
    elif isinstance(schema, list):
        for inner in schema:
            _field_names(inner, found)
    return found


FIELD_NAMES = sorted(set().union(*(_field_names(m.model_json_schema(), set()) for m in MODELS)))
keys = st.sampled_from(FIELD_NAMES) | tricky_text
"""Keys to add: mostly the catalogue's own field names, so optional fields absent from the examples get values."""


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value inside a JSON document (the document itself is ())."""
    found = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _places(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _places(inner, (*path, index))
    return found


@st.composite
def mutated_events(draw: st.DrawFn, model: type) -> bytes | str:
    """A valid event of `model` with one to three places changed: replaced by a nasty or arbitrary JSON value,
    deleted, or given an extra key; written as bytes (sometimes with raw non-ASCII) or as str."""
    data = json.loads(json.dumps(EXAMPLES[model]))
    for _ in range(draw(st.integers(1, 3))):
        places = _places(data)
        path = draw(st.sampled_from(places))
        new = copy.deepcopy(draw(st.sampled_from(NASTY) | json_values))  # never share a mutable value
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if not path:
            if action == "replace" and draw(st.booleans()):
                data = new
            elif isinstance(data, dict):
                data[draw(keys)] = new
            continue
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        if action == "replace":
            parent[path[-1]] = new
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(keys)] = new
        else:
            parent.append(new)
    text = json.dumps(data, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:
        return text
    return text.encode("utf-8", "surrogatepass")


FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FAST
@given(raw=st.binary(max_size=300) | st.text(max_size=100) | st.none())
def test_any_bytes_decode_or_are_refused(model, raw):
    decodes_or_refuses(model, raw)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@FAST
@given(value=deep_values(), as_text=st.booleans())
def test_any_json_value_decodes_or_is_refused(model, value, as_text):
    text = json.dumps(value)
    decodes_or_refuses(model, text if as_text else text.encode())


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutated_event_decodes_or_is_refused(model, data):
    decodes_or_refuses(model, data.draw(mutated_events(model)))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_example_decodes(model):
    assert isinstance(decode(model, _raw(EXAMPLES[model])), model)
