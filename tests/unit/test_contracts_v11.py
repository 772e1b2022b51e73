"""Contract v1.1's new fields and topic: what they accept, what they refuse (naming the field), their defaults, and
that decode stays poison-proof over them (ContractError and nothing else; money, lists and texts bounded)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

import contracts
from contracts import ContractError, decode, encode, v1
from contracts.base import MAX_INT, iso_countries
from contracts.codec import UNCLASSIFIED
from contracts.schema_export import document
from contracts.topics import BY_NAME, INPUTS
from orderflow.stack import wanted_topics
from tests.examples import example

ADDRESS = {"name": "Ada Lovelace", "line1": "12 rue des Tasses", "line2": "Bâtiment B", "postal_code": "75011",
           "city": "Paris", "region": "Île-de-France", "country": "FR", "phone": "+33 1 23 45 67 89"}


def _full(model: type[contracts.Event]) -> dict[str, Any]:
    data = json.loads(encode(example(model)))
    if model is contracts.OrderPlaced:
        data |= {"shipping_address": ADDRESS, "billing_address": ADDRESS | {"line2": None, "phone": None},
                 "shipping": {"method": "Colissimo suivi", "carrier": "La Poste", "cost_cents": 490},
                 "discount_cents": 500, "tax_cents": 750, "note": "Sonnez deux fois.\nMerci !", "locale": "fr-FR"}
    elif model is contracts.CheckoutStarted:
        data |= {"marketing_consent": True}
    elif model is contracts.ShopSettings:
        data |= {"locale": "fr", "expire_unpaid_after_seconds": 3 * 86400, "recovery_reminders_seconds": [3600, 86400],
                 "recovery_requires_consent": True, "manage_stock": False}
    elif model is contracts.OrderStatusChanged:
        data |= {"status": "canceled", "payment_status": "partially_refunded", "previous_payment_status": "paid",
                 "refunded_cents": 1000, "refund_due_cents": 3500}
    return data


V11 = [contracts.OrderPlaced, contracts.CheckoutStarted, contracts.ShopSettings, contracts.OrderStatusChanged,
       contracts.PaymentRefunded]
FULL = {model: _full(model) for model in V11}


def full(model: type[contracts.Event]) -> dict[str, Any]:
    """The example of tests/examples.py with every v1.1 field set, as JSON (a fresh copy; fixed ids)."""
    return copy.deepcopy(FULL[model])


def raw(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def refused(model: type[contracts.Event], data: dict[str, Any] | bytes, field: str) -> ContractError:
    with pytest.raises(ContractError) as caught:
        decode(model, data if isinstance(data, bytes) else raw(data))
    assert caught.value.kind == "invalid", caught.value.reason
    assert caught.value.reason.startswith((field + ":", field + ".")), caught.value.reason
    return caught.value


@pytest.mark.parametrize("model", V11, ids=lambda m: m.__name__)
def test_every_v11_field_round_trips_and_its_schema_agrees(model):
    data = full(model)
    event = decode(model, raw(data))
    assert decode(model, encode(event)) == event
    schema = document(contracts.spec_for(model))
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(json.loads(encode(event)))]
    assert not errors


def test_an_order_carries_addresses_shipping_money_note_and_locale():
    order = decode(contracts.OrderPlaced, raw(full(contracts.OrderPlaced)))
    assert order.shipping_address == contracts.Address(**ADDRESS)
    assert order.billing_address.line2 is None and order.billing_address.country == "FR"
    assert order.shipping == contracts.ShippingChoice(method="Colissimo suivi", carrier="La Poste", cost_cents=490)
    assert (order.discount_cents, order.tax_cents, order.locale) == (500, 750, "fr-FR")
    assert order.note == "Sonnez deux fois.\nMerci !"


def test_a_v1_order_has_none_of_them_and_encodes_as_before():
    order = example(contracts.OrderPlaced)
    assert order.shipping_address is order.billing_address is order.shipping is order.note is order.locale is None
    assert order.discount_cents is order.tax_cents is None
    assert set(json.loads(encode(order))) == set(v1.OrderPlaced.model_fields)  # the same bytes a v1 model writes
    assert encode(order) == encode(v1.OrderPlaced.model_validate(order.model_dump()))


def test_shop_settings_defaults_keep_a_v1_shop_as_it_was():
    data = json.loads(encode(example(contracts.ShopSettings)))
    for name in ("locale", "expire_unpaid_after_seconds", "recovery_reminders_seconds", "recovery_requires_consent",
                 "manage_stock"):
        data.pop(name, None)
    shop = decode(contracts.ShopSettings, raw(data))
    assert shop.locale == "en"
    assert shop.expire_unpaid_after_seconds == 7 * 24 * 3600
    assert shop.recovery_reminders_seconds is None
    assert shop.recovery_requires_consent is False  # v1 shops keep their recovery mail
    assert shop.manage_stock is True


def test_checkout_marketing_consent_defaults_to_false():
    data = json.loads(encode(example(contracts.CheckoutStarted)))
    data.pop("marketing_consent", None)
    assert decode(contracts.CheckoutStarted, raw(data)).marketing_consent is False


def test_order_status_knows_the_refund_statuses_and_amounts():
    for status in ("partially_refunded", "refunded"):
        data = full(contracts.OrderStatusChanged) | {"payment_status": status}
        event = decode(contracts.OrderStatusChanged, raw(data))
        assert event.payment_status == contracts.PaymentStatus(status)
    v1_status = json.loads(encode(example(contracts.OrderStatusChanged)))
    v1_status.pop("refunded_cents", None)
    v1_status.pop("refund_due_cents", None)
    event = decode(contracts.OrderStatusChanged, raw(v1_status))
    assert (event.refunded_cents, event.refund_due_cents) == (0, 0)
    refused(contracts.OrderStatusChanged, v1_status | {"payment_status": "chargeback"}, "payment_status")


# --- locale and country -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "read"), [("fr-FR", "fr-FR"), ("fr", "fr"), ("FR-fr", "fr-FR"), ("en-US", "en-US"),
                                             ("zh-hant-tw", "zh-Hant-TW"), ("es-419", "es-419"), ("de-CH", "de-CH"),
                                             ("ja", "ja")])
def test_a_bcp47_locale_babel_knows_is_accepted_in_canonical_case(given, read):
    order = decode(contracts.OrderPlaced, raw(full(contracts.OrderPlaced) | {"locale": given}))
    assert order.locale == read
    shop = decode(contracts.ShopSettings, raw(full(contracts.ShopSettings) | {"locale": given}))
    assert shop.locale == read


@pytest.mark.parametrize("bad", ["fr_FR", "xx", "fr-XX", "klingon", "en-US-u-ca-gregory", "", "f", "f r", "fr-",
                                 "-fr", "fr\x00", "fr-FR\n", "a" * 40, "en-" + "a" * 9, 12, None, ["fr"]])
def test_a_locale_that_is_not_bcp47_or_unknown_to_babel_is_refused(bad):
    if bad is not None:  # an order's locale is optional: null is "not given"; a shop's has a default, never null
        refused(contracts.OrderPlaced, full(contracts.OrderPlaced) | {"locale": bad}, "locale")
    refused(contracts.ShopSettings, full(contracts.ShopSettings) | {"locale": bad}, "locale")


def test_iso_countries_are_the_249_assigned_codes():
    codes = iso_countries()
    assert len(codes) == 249
    assert {"FR", "GB", "US", "JP", "DE", "BE", "CH", "CA", "HK", "AQ"} <= codes
    assert not {"UK", "EU", "XK", "ZZ", "EZ", "UN", "QO", "IC", "EA"} & codes


@pytest.mark.parametrize("bad", ["UK", "gb", "EU", "ZZ", "XK", "FRA", "F", "", 33, None])
def test_an_address_country_must_be_iso_3166_alpha_2(bad):
    data = full(contracts.OrderPlaced)
    data["shipping_address"] = ADDRESS | {"country": bad}
    refused(contracts.OrderPlaced, data, "shipping_address.country")


# --- the other bounds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("shipping_address.name", ""), ("shipping_address.line1", ""), ("shipping_address.city", ""),
     ("shipping_address.line1", "a" * 501), ("shipping_address.postal_code", "1" * 33),
     ("shipping_address.phone", ""), ("shipping_address.phone", "1" * 65), ("shipping_address.name", "Ann\r\nBcc: x"),
     ("billing_address.region", "\x00"), ("shipping.method", ""), ("shipping.carrier", "x\x1b"),
     ("note", "x" * 2001), ("note", "nul\x00"), ("shipping_address", "12 rue des Tasses"), ("shipping", []),
     ("shipping_address.postal_code", None), ("shipping.cost_cents", None)],
)
def test_v11_texts_and_parts_are_bounded_naming_the_field(field, value):
    data = copy.deepcopy(full(contracts.OrderPlaced))
    target, *path = field.split(".")
    if path:
        data[target][path[0]] = value
    else:
        data[target] = value
    refused(contracts.OrderPlaced, data, field)


def test_a_note_keeps_its_lines_up_to_2000_characters_and_an_empty_postal_code_is_allowed():
    data = full(contracts.OrderPlaced) | {"note": "x\r\n\t" * 500}
    data["shipping_address"] = ADDRESS | {"country": "HK", "postal_code": ""}
    order = decode(contracts.OrderPlaced, raw(data))
    assert len(order.note) == 2000 and order.shipping_address.postal_code == ""


@pytest.mark.parametrize(
    ("model", "path"),
    [(contracts.OrderPlaced, ("discount_cents",)), (contracts.OrderPlaced, ("tax_cents",)),
     (contracts.OrderPlaced, ("shipping", "cost_cents")), (contracts.OrderStatusChanged, ("refunded_cents",)),
     (contracts.OrderStatusChanged, ("refund_due_cents",)), (contracts.PaymentRefunded, ("amount_cents",))],
)
def test_v11_money_is_bounded_like_all_money(model, path):
    def with_value(value: Any) -> bytes:
        data = full(model)
        target = data
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return raw(data)

    where = ".".join(path)
    assert decode(model, with_value(MAX_INT))
    for value in (MAX_INT + 1, 2**63, 2**64, 10**4000, -1, 1.5, "lots"):
        refused(model, with_value(value), where)


def test_a_refund_is_of_a_positive_amount_and_deduplicated_by_its_ids():
    refused(contracts.PaymentRefunded, full(contracts.PaymentRefunded) | {"amount_cents": 0}, "amount_cents")
    for field in ("order_id", "refund_id", "currency", "provider"):
        data = full(contracts.PaymentRefunded)
        data.pop(field)
        refused(contracts.PaymentRefunded, data, field)
    data = full(contracts.PaymentRefunded)
    data.pop("reason")
    assert decode(contracts.PaymentRefunded, raw(data)).reason is None
    refused(contracts.PaymentRefunded, full(contracts.PaymentRefunded) | {"refund_id": "a/b"}, "refund_id")


@pytest.mark.parametrize(
    ("reminders", "ok"),
    [([3600], True), ([3600, 86400], True), ([60, 3600, 86400], True), ([30 * 86400], True), ([], False),
     ([60, 120, 180, 240], False), ([0], False), ([-5], False), ([30 * 86400 + 1], False), ([86400, 3600], False),
     ([3600, 3600], False), ("3600", False), ([1.5], False)],
)
def test_recovery_reminders_are_one_to_three_increasing_delays(reminders, ok):
    data = full(contracts.ShopSettings) | {"recovery_reminders_seconds": reminders}
    if ok:
        assert decode(contracts.ShopSettings, raw(data)).recovery_reminders_seconds == reminders
    else:
        refused(contracts.ShopSettings, data, "recovery_reminders_seconds")


@pytest.mark.parametrize("value", [0, -1, 365 * 86400 + 1, 10**30, None])
def test_expiry_is_a_positive_delay_of_at_most_a_year(value):
    refused(contracts.ShopSettings, full(contracts.ShopSettings) | {"expire_unpaid_after_seconds": value},
            "expire_unpaid_after_seconds")


# --- the new topic in the catalogue ----------------------------------------------------------------------------


def test_payment_refunded_is_an_input_topic_keyed_by_order_with_its_dead_letter_topic():
    spec = BY_NAME["payment.refunded"]
    assert spec in INPUTS and spec.model is contracts.PaymentRefunded
    assert (spec.key_doc, spec.cleanup_policy, spec.dlq) == ("order_id", "delete", "payment.refunded.dlq")
    assert "gateway" in spec.produced_by and "back office" in spec.produced_by
    created = {name: configs for name, _, configs in wanted_topics(partitions=3)}
    assert created["payment.refunded"]["cleanup.policy"] == "delete"
    assert "payment.refunded.dlq" in created


# --- poison-proof over the new fields ------------------------------------------------------------------------------

NASTY: list[Any] = [
    None, True, 0, -1, 1.5, MAX_INT, MAX_INT + 1, 2**63, 10**300, float("inf"), float("nan"), "", " ", "\x00",
    "\ud800", "a\r\nBcc: x@y.z", "x" * 2001, "[" * 70, "FR", "UK", "fr-FR", "fr_FR", "und", "root", "x-klingon",
    "zh-Hant-TW-x-private", "\U0001f600", [], {}, [[]] * 3, [3600, 86400], [1, 2, 3, 4], {"country": "FR"},
    "partially_refunded", "refunded",
]


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _places(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _places(inner, (*path, index))
    return found


@pytest.mark.parametrize("model", V11, ids=lambda m: m.__name__)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_v11_events_decode_or_are_refused_as_contract_errors(model, data):
    value = full(model)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from([p for p in _places(value) if p]))
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        if data.draw(st.booleans()):
            parent[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(NASTY)))
        elif isinstance(parent, dict):
            del parent[path[-1]]
    text = json.dumps(value, ensure_ascii=data.draw(st.booleans()))
    try:
        event = decode(model, text.encode("utf-8", "surrogatepass"))
    except ContractError as error:
        assert error.kind != UNCLASSIFIED, error.reason
        error.reason.encode("utf-8")
    else:
        assert isinstance(event, model)
