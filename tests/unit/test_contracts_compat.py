"""Contract v1.1 accepts every message contract v1 accepted, and reads it as v1 did.

Three independent checks, each over every topic of v1 (`contracts/schemas/v1/`, the models frozen in
`contracts/v1.py`) against the current schemas (`contracts/schemas/*.json`, `contracts/events.py`):

1. **jsoncompat** (PyPI, a JSON Schema 2020-12 compatibility checker) proves statically, role `deserializer`, that each
   v1.1 schema accepts every value its v1 schema accepts. It is alpha software and misses some narrowings (a changed
   `pattern`, in 0.3.1), so:
2. **structure**: every v1 field keeps its exact schema in v1.1 (refs inlined; only titles and descriptions may
   change), no field becomes required, and the two payment-status enums only grow;
3. **samples**, validated with **jsonschema** (the reference Python validator) against both schemas and decoded by both
   model sets: a hypothesis sample of valid v1 messages built from the v1 models, values jsoncompat generates from the
   v1 schemas, every example of tests/examples.py, of docs/examples (run with their Kafka clients stubbed) and of the
   storefront guide. Each must be valid v1.1 and decode to the same values; v1.1's new fields take their defaults.

The one narrowing, by design: v1 ignored unknown fields, so a v1 message *could* carry a field named like one v1.1 now
defines, with a value v1.1 refuses (`"note": 5`). Checks 1 and 3 run on v1 with exactly those names set aside
(`CLAIMED`, DESIGN.md's list); a test shows the narrowing is real, and another that no other name was claimed.
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsoncompat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

import contracts
from contracts import v1
from contracts.base import MAX_INT
from contracts.codec import decode, encode
from contracts.schema_export import DIALECT, body, document, released, schema_id
from contracts.topics import ALL, BY_NAME
from tests.examples import example

ROOT = Path(__file__).resolve().parents[2]
V1 = released("1")
CURRENT = {spec.name: document(spec) for spec in ALL}
V1_TOPICS = sorted(V1)

CLAIMED: dict[str, set[str]] = {
    "order.placed": {"shipping_address", "billing_address", "shipping", "discount_cents", "tax_cents", "note",
                     "locale"},
    "checkout.started": {"marketing_consent"},
    "shop.settings": {"locale", "expire_unpaid_after_seconds", "recovery_reminders_seconds",
                      "recovery_requires_consent", "manage_stock"},
    "order.status": {"refunded_cents", "refund_due_cents", "refund_id", "refund_cents", "shipping_address",
                     "billing_address", "shipping", "discount_cents", "tax_cents", "note", "locale"},
    "checkout.abandoned": {"reminder", "unsubscribe_url"},
}
"""Top-level names each v1.1 model gives a shape to, that v1 ignored as unknown (DESIGN.md, "Contract v1.1")."""

WIDENED = {("order.status", "payment_status"), ("order.status", "previous_payment_status")}
"""v1 fields whose accepted values grew in v1.1 (the refund payment statuses); their enums must only grow."""

ANNOTATIONS = {"title", "description"}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


V1_VALIDATORS = {topic: validator(V1[topic]) for topic in V1_TOPICS}
CURRENT_VALIDATORS = {topic: validator(CURRENT[topic]) for topic in CURRENT}


def without_id(schema: dict[str, Any]) -> dict[str, Any]:
    """jsoncompat 0.3.1 resolves `#/$defs/...` against `$id` and then refuses the absolute reference: drop it."""
    return {k: v for k, v in schema.items() if k != "$id"}


def v1_with_claimed_names_set_aside(topic: str) -> dict[str, Any]:
    """v1's schema, minus the messages that carry a name v1.1 claimed (each such property made `false`)."""
    schema = copy.deepcopy(without_id(V1[topic]))
    for name in CLAIMED.get(topic, ()):
        assert name not in schema["properties"], f"{topic}.{name} was a v1 field, not a claimed unknown one"
        schema["properties"][name] = False
    return schema


def inline(node: Any, root: dict[str, Any]) -> Any:
    """`node` with every local `$ref` replaced by its target (our schemas have no recursive refs)."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            target = root
            for step in node["$ref"].removeprefix("#/").split("/"):
                target = target[step]
            return inline(target, root)
        return {k: inline(v, root) for k, v in node.items() if k not in ANNOTATIONS}
    if isinstance(node, list):
        return [inline(v, root) for v in node]
    return node


def enum_values(node: dict[str, Any]) -> set[str]:
    """The enum of a field that is an enum, or an enum-or-null."""
    if "enum" in node:
        return set(node["enum"])
    return set().union(*(enum_values(branch) for branch in node.get("anyOf", []) if branch.get("type") != "null"))


# --- the schemas themselves -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", sorted(CURRENT))
def test_every_current_schema_declares_2020_12_and_a_versioned_id(topic):
    schema = json.loads((ROOT / "contracts" / "schemas" / f"{topic}.json").read_text())
    assert schema["$schema"] == DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == schema_id(topic) == f"https://orderflow.example/schemas/{contracts.VERSION}/{topic}.json"
    assert contracts.VERSION == "1.1"
    Draft202012Validator.check_schema(schema)  # valid against the 2020-12 meta-schema


def test_v1_schemas_are_kept_and_the_frozen_v1_models_still_export_them():
    """contracts/schemas/v1/ holds v1 as released (12 topics); contracts/v1.py must still describe exactly that."""
    new_in_v11 = {"payment.refunded", "mail.status", "order.flagged"}
    assert V1_TOPICS == sorted(v1.MODELS) == sorted(set(CURRENT) - new_in_v11)
    for topic in V1_TOPICS:
        exported = body(v1.MODELS[topic], BY_NAME[topic])
        assert exported == without_id(V1[topic]), f"contracts/v1.py no longer exports v1's {topic} schema"
        assert V1[topic]["$id"] == f"https://orderflow.invalid/schemas/{topic}.json"  # as released, unversioned
        Draft202012Validator.check_schema(V1[topic])


def test_v11_claims_exactly_the_new_fields_of_the_design():
    """Every name v1.1 adds at the top level of a v1 topic is in CLAIMED, and nested v1 objects gained nothing."""
    for topic in V1_TOPICS:
        old, new = V1[topic], CURRENT[topic]
        assert set(new["properties"]) - set(old["properties"]) == CLAIMED.get(topic, set()), topic
        for name, definition in old.get("$defs", {}).items():
            if "properties" in definition:
                assert set(new["$defs"][name]["properties"]) == set(definition["properties"]), f"{topic} {name}"


# --- 1. jsoncompat: a static proof ---------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", V1_TOPICS)
def test_jsoncompat_proves_the_v11_schema_accepts_everything_v1_accepted(topic):
    old = json.dumps(v1_with_claimed_names_set_aside(topic))
    new = json.dumps(without_id(CURRENT[topic]))
    assert jsoncompat.check_compat(old, new, "deserializer"), f"{topic}: v1.1 refuses some message v1 accepted"


def _narrowed(topic: str, change) -> str:
    schema = copy.deepcopy(without_id(CURRENT[topic]))
    change(schema)
    return json.dumps(schema)


@pytest.mark.parametrize(
    ("topic", "change"),
    [
        ("order.placed", lambda s: s["properties"]["total_cents"].update(maximum=10)),
        ("order.placed", lambda s: s["required"].append("shipping_address")),
        ("order.placed", lambda s: s["$defs"]["Customer"]["properties"]["email"].update(maxLength=10)),
        ("order.status", lambda s: s["$defs"]["PaymentStatus"]["enum"].remove("awaiting")),
        ("shop.settings", lambda s: s["properties"]["ignore_incomplete_orders"].update(type="string")),
        ("stock.adjusted", lambda s: s["properties"].pop("delta") and s.update(additionalProperties=False)),
    ],
    ids=["lower-maximum", "new-required", "shorter-nested-string", "enum-value-dropped", "type-changed",
         "field-dropped-closed"],
)
def test_jsoncompat_catches_a_narrowing_of_our_own_schemas(topic, change):
    """The static check is not vacuous on these schemas: a v1.1 that narrowed v1 would fail it."""
    old = json.dumps(v1_with_claimed_names_set_aside(topic))
    assert not jsoncompat.check_compat(old, _narrowed(topic, change), "deserializer")


def test_without_setting_the_claimed_names_aside_the_narrowing_shows():
    """The one narrowing is real: v1 ignored `"note": 5` as unknown, v1.1 refuses it (and jsoncompat says so)."""
    old, new = json.dumps(without_id(V1["order.placed"])), json.dumps(without_id(CURRENT["order.placed"]))
    assert not jsoncompat.check_compat(old, new, "deserializer")
    message = json.loads(encode(example(contracts.OrderPlaced))) | {"note": 5}
    assert V1_VALIDATORS["order.placed"].is_valid(message)
    assert not CURRENT_VALIDATORS["order.placed"].is_valid(message)
    decode(v1.OrderPlaced, json.dumps(message))
    with pytest.raises(contracts.ContractError, match="^note:"):
        decode(contracts.OrderPlaced, json.dumps(message))


# --- 2. structure: every v1 field keeps its schema ------------------------------------------------------------------


@pytest.mark.parametrize("topic", V1_TOPICS)
def test_every_v1_field_keeps_its_exact_schema(topic):
    old, new = V1[topic], CURRENT[topic]
    assert set(new.get("required", [])) <= set(old.get("required", [])), f"{topic}: a field became required"
    for name, field in old["properties"].items():
        before, after = inline(field, old), inline(new["properties"][name], new)
        if (topic, name) in WIDENED:
            assert enum_values(before) < enum_values(after), f"{topic}.{name}"
            continue
        assert after == before, f"{topic}.{name} changed its schema"
    outer = {k: v for k, v in old.items() if k not in {"properties", "required", "$defs", "$id", *ANNOTATIONS}}
    assert outer == {k: new[k] for k in outer}, f"{topic}: object keywords changed"
    assert not {"additionalProperties", "unevaluatedProperties"} & set(new), f"{topic}: no longer open to extras"


def test_payment_statuses_only_grow():
    assert [s.value for s in contracts.PaymentStatus][:3] == [s.value for s in v1.PaymentStatus]
    assert {s.value for s in contracts.PaymentStatus} - {s.value for s in v1.PaymentStatus} == {
        "partially_refunded", "refunded"}


# --- 3. samples --------------------------------------------------------------------------------------------------


def v1_fields(model: type[v1.Event]) -> set[str]:
    return set(model.model_fields)


def assert_still_valid_and_same(topic: str, raw: bytes | str) -> None:
    """One v1 message: valid under both schemas, decoded by both model sets to the same v1 values."""
    value = json.loads(raw)
    errors = [e.message for e in V1_VALIDATORS[topic].iter_errors(value)]
    assert not errors, f"not a v1 {topic} message to begin with: {errors}"
    errors = [e.message for e in CURRENT_VALIDATORS[topic].iter_errors(value)]
    assert not errors, f"a valid v1 {topic} message is refused by the v1.1 schema: {errors}\n{raw!r}"
    old_model, new_model = v1.MODELS[topic], BY_NAME[topic].model
    old, new = decode(old_model, raw), decode(new_model, raw)
    fields = v1_fields(old_model)
    assert new.model_dump(mode="json", include=fields) == old.model_dump(mode="json"), f"{topic}: meaning changed"
    for name in set(new_model.model_fields) - fields - set(value):  # a v1.1 field the message does not give
        assert getattr(new, name) == new_model.model_fields[name].get_default(), f"{topic}.{name} not its default"
    assert decode(old_model, encode(new)) == old, f"{topic}: a v1 consumer reads v1.1's re-encoding differently"


# hypothesis: valid v1 messages, built from the frozen v1 models

ids = st.text(st.characters(categories=("L", "N"), include_characters="-_.:#"), min_size=1, max_size=24)
texts = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=60)
lines = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="".join(
    chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 127])), min_size=1, max_size=300)
emails = st.builds(lambda a, b: f"{a}@{b}.example", st.from_regex(r"[a-z0-9][a-z0-9.+_-]{0,20}", fullmatch=True)
                   .filter(lambda s: ".." not in s and not s.endswith(".")), st.from_regex(r"[a-z0-9]{1,20}",
                                                                                          fullmatch=True))
cents = st.integers(0, MAX_INT) | st.sampled_from([0, 1, 999, MAX_INT])
currencies = st.from_regex(r"[A-Z]{3}", fullmatch=True)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-9, minutes=-30))])
when = st.builds(lambda d, tz: d.astimezone(tz),
                 st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime.now(UTC).replace(tzinfo=None),
                              timezones=st.just(UTC)), offsets)
envelope = {"event_id": st.uuids(), "occurred_at": when, "shop_id": ids}
opt = st.none().__or__

customer = st.builds(v1.Customer, email=emails, name=opt(texts), customer_id=opt(ids))
cart_customer = st.builds(v1.CartCustomer, email=opt(emails), name=opt(texts), customer_id=opt(ids))
order_items = st.lists(st.builds(v1.OrderItem, sku=ids, name=texts, quantity=st.integers(1, 100_000),
                                 unit_price_cents=cents), min_size=1, max_size=4)
cart_items = st.lists(st.builds(v1.CartItem, sku=ids, quantity=st.integers(0, 100_000), name=opt(texts),
                                unit_price_cents=opt(cents)), max_size=4)
payment = st.builds(v1.Payment, method=st.sampled_from(["gateway", "manual"]), provider=ids)

V1_MESSAGES: dict[str, st.SearchStrategy] = {
    "cart.updated": st.builds(v1.CartUpdated, cart_id=ids, customer=cart_customer, items=cart_items, **envelope),
    "checkout.started": st.builds(v1.CheckoutStarted, cart_id=ids, customer=customer, items=cart_items,
                                  total_cents=cents, currency=currencies, **envelope),
    "order.placed": st.builds(v1.OrderPlaced, order_id=ids, cart_id=ids, customer=customer, items=order_items,
                              total_cents=cents, currency=currencies, payment=payment, **envelope),
    "payment.confirmed": st.builds(v1.PaymentConfirmed, order_id=ids, payment_id=ids, amount_cents=cents,
                                   currency=currencies, provider=ids, **envelope),
    "stock.adjusted": st.one_of(
        st.builds(v1.StockAdjusted, sku=ids, delta=st.integers(-1_000_000, 1_000_000), reason=opt(texts), **envelope),
        st.builds(v1.StockAdjusted, sku=ids, set_to=st.integers(0, 1_000_000_000), reason=opt(texts), **envelope),
    ),
    "shop.settings": st.builds(v1.ShopSettings, name=texts.filter(bool), merchant_email=emails,
                               abandon_after_seconds=opt(st.integers(1, 30 * 24 * 3600)),
                               ignore_incomplete_orders=st.booleans(), **envelope),
    "order.cancel_requested": st.builds(v1.OrderCancelRequested, order_id=ids, reason=opt(texts), **envelope),
    "order.status": st.builds(v1.OrderStatusChanged, order_id=ids, cart_id=opt(ids),
                              status=st.sampled_from(v1.OrderStatus), payment_status=st.sampled_from(v1.PaymentStatus),
                              previous_status=opt(st.sampled_from(v1.OrderStatus)),
                              previous_payment_status=opt(st.sampled_from(v1.PaymentStatus)),
                              changed_by=st.sampled_from(v1.ChangedBy), reason=opt(texts), customer=customer,
                              items=order_items, total_cents=cents, currency=currencies, payment=payment, **envelope),
    "order.message": st.builds(v1.CustomerMessageRequested, order_id=ids, message_id=ids, text=lines,
                               customer=customer, **envelope),
    "inventory.levels": st.builds(v1.InventoryLevel, sku=ids, available=st.integers(0, MAX_INT), updated_at=when,
                                  **envelope),
    "inventory.deductions": st.builds(v1.InventoryDeduction, order_id=ids, kind=st.sampled_from(v1.DeductionKind),
                                      lines=st.lists(st.builds(v1.DeductionLine, sku=ids, asked=cents, moved=cents),
                                                     max_size=4), **envelope),
    "checkout.abandoned": st.builds(v1.CheckoutAbandoned, cart_id=ids, customer=customer, items=cart_items,
                                    started_at=when, order_id=opt(ids),
                                    recovery_url=st.builds("https://shop.example/r?c={}".format, ids), **envelope),
}

json_values = st.recursive(st.none() | st.booleans() | st.integers() | texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                           max_leaves=8)


@st.composite
def v1_messages(draw: st.DrawFn, topic: str) -> str:
    """A valid v1 message as a v1 producer may write it: nulls and defaults spelled out or left out, the offset it
    likes, and unknown fields of its own (never a name v1.1 claimed)."""
    event = draw(V1_MESSAGES[topic])
    data = event.model_dump(mode="json", exclude_none=draw(st.booleans()), exclude_defaults=draw(st.booleans()))
    for field in ("occurred_at", "started_at", "updated_at"):
        if field in data:  # the producer's own offset; the model normalises it to UTC either way
            data[field] = getattr(event, field).astimezone(draw(offsets)).isoformat()
    taken = set(data) | CLAIMED.get(topic, set())
    extras = draw(st.dictionaries(texts.filter(lambda k: k not in taken), json_values, max_size=3))
    return json.dumps(data | extras, ensure_ascii=draw(st.booleans()))


@pytest.mark.parametrize("topic", V1_TOPICS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_hypothesis_sample_of_valid_v1_messages_is_valid_v11_and_means_the_same(topic, data):
    assert_still_valid_and_same(topic, data.draw(v1_messages(topic)))


@pytest.mark.parametrize("topic", V1_TOPICS)
def test_values_jsoncompat_generates_from_the_v1_schema_are_valid_v11(topic):
    """Schema level only (the models' validators, e.g. the e-mail parser, are not in a schema): whatever the v1
    schema accepts among 150 generated values (a claimed name taken out), the v1.1 schema accepts."""
    old = json.dumps(without_id(V1[topic]))
    accepted = 0
    for _ in range(150):
        value = json.loads(jsoncompat.generate_value(old, 6))
        if isinstance(value, dict):
            for name in CLAIMED.get(topic, ()):
                value.pop(name, None)
        if V1_VALIDATORS[topic].is_valid(value):  # the generator is not exact: keep only what v1 accepts
            accepted += 1
            errors = [e.message for e in CURRENT_VALIDATORS[topic].iter_errors(value)]
            assert not errors, f"{topic}: v1 accepts, v1.1 refuses {value!r}: {errors}"
    assert accepted >= 10, f"{topic}: only {accepted} of 150 generated values were valid v1"


# the examples

@pytest.mark.parametrize("topic", V1_TOPICS)
def test_every_example_of_tests_examples_is_valid_v11_and_means_the_same(topic):
    model = v1.MODELS[topic]
    current = example(BY_NAME[topic].model)
    as_v1 = model.model_validate(current.model_dump(mode="json", include=v1_fields(model)))
    assert_still_valid_and_same(topic, encode(as_v1))


def storefront_guide_examples() -> list[tuple[str, str]]:
    """(topic, JSON) of every ```json block of docs/storefront.md under a `### \\`topic\\`` heading."""
    text = (ROOT / "docs" / "storefront.md").read_text()
    found = []
    for section in re.split(r"^### ", text, flags=re.M)[1:]:
        heading = re.match(r"`([a-z_.]+)`", section)
        for block in re.findall(r"```json\n(.*?)```", section, flags=re.S):
            found.append((heading.group(1) if heading else "?", block))
    return found


def test_every_example_of_the_storefront_guide_is_valid_v11_and_means_the_same():
    examples = storefront_guide_examples()
    assert {topic for topic, _ in examples} >= {"cart.updated", "checkout.started", "order.placed",
                                                "payment.confirmed", "order.cancel_requested", "stock.adjusted",
                                                "shop.settings"}
    for topic, raw in examples:
        if topic in V1:
            assert_still_valid_and_same(topic, raw)
        else:  # written for v1.1 (e.g. payment.refunded): valid there
            decode(BY_NAME[topic].model, raw)


def test_the_python_example_sends_valid_v11_messages(monkeypatch, capsys):
    sent: list[contracts.Event] = []

    class Producer:  # the example's StorefrontProducer, minus the broker
        def __init__(self, bootstrap: str, **_: object) -> None:
            pass

        async def __aenter__(self) -> Producer:
            return self

        async def __aexit__(self, *_: object) -> None:
            pass

        async def send(self, event: contracts.Event) -> None:
            sent.append(event)

    spec = importlib.util.spec_from_file_location("place_order", ROOT / "docs" / "examples" / "place_order.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "StorefrontProducer", Producer)
    for name in ("CART_URL", "STOREFRONT_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    asyncio.run(module.main())
    orders = [e for e in sent if isinstance(e, contracts.OrderPlaced)]
    assert orders and capsys.readouterr().out.split()[-1] == orders[-1].order_id
    for event in sent:
        assert_still_valid_and_same(contracts.spec_for(type(event)).name, encode(event))


def test_the_kcat_example_sends_valid_v11_messages(tmp_path):
    stub = tmp_path / "kcat"  # stands in for kcat: one line of arguments and one value line per call
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/args\ncat >> {tmp_path}/values\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if k not in {"CART_URL", "STOREFRONT_KEY"}}
    env |= {"PATH": f"{tmp_path}:{os.environ['PATH']}", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    done = subprocess.run(["bash", str(ROOT / "docs" / "examples" / "kcat-place-order.sh")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    topics = [re.search(r"-t (\S+)", line).group(1) for line in (tmp_path / "args").read_text().splitlines()]
    values = (tmp_path / "values").read_text().splitlines()
    assert "order.placed" in topics and len(topics) == len(values)
    for topic, value in zip(topics, values, strict=True):
        assert_still_valid_and_same(topic, value)


def test_the_node_example_sends_valid_v11_messages(tmp_path):
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    shutil.copy(ROOT / "docs" / "examples" / "node" / "produce.mjs", tmp_path / "produce.mjs")
    fake = tmp_path / "node_modules" / "kafkajs"  # resolved instead of the real kafkajs: records what it is given
    fake.mkdir(parents=True)
    (fake / "package.json").write_text('{"name": "kafkajs", "type": "module", "main": "index.js"}')
    (fake / "index.js").write_text(
        'import { appendFileSync } from "node:fs";\n'
        "export const logLevel = { WARN: 4 };\n"
        "export class Kafka {\n"
        "  producer() {\n"
        "    return { connect: async () => {}, disconnect: async () => {},\n"
        f"             send: async (batch) => appendFileSync({json.dumps(str(tmp_path / 'sent.jsonl'))}, "
        'JSON.stringify(batch) + "\\n") };\n'
        "  }\n"
        "}\n")
    env = {k: v for k, v in os.environ.items() if k not in {"CART_URL", "STOREFRONT_KEY"}}
    env["KAFKA_BOOTSTRAP_SERVERS"] = "127.0.0.1:1"
    done = subprocess.run(["node", "produce.mjs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    batches = [json.loads(line) for line in (tmp_path / "sent.jsonl").read_text().splitlines()]
    assert "order.placed" in {batch["topic"] for batch in batches}
    for batch in batches:
        for message in batch["messages"]:
            assert_still_valid_and_same(batch["topic"], message["value"])


def test_the_new_topic_has_an_example_valid_under_its_schema():
    event = example(contracts.PaymentRefunded)
    assert decode(contracts.PaymentRefunded, encode(event)) == event
    assert CURRENT_VALIDATORS["payment.refunded"].is_valid(json.loads(encode(event)))
    assert contracts.spec_for("payment.refunded").key_of(event) == event.order_id
