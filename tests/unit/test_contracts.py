"""Contracts: every model survives the JSON round trip, bad payloads are refused naming the field, schemas match."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contracts
from contracts import ALL, ContractError, decode, encode
from contracts.schema_export import SCHEMA_DIR, schemas

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
names = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)
emails = st.builds(lambda a, b: f"{a}@{b}.example", ids, ids)
when = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime.now(UTC).replace(tzinfo=None),
                   timezones=st.just(UTC))  # the contract's bounds: 2000-01-01 to 24 h from now
envelope = {"event_id": st.uuids(), "occurred_at": when, "shop_id": ids}
cents = st.integers(min_value=0, max_value=10**9)
order_items = st.lists(
    st.builds(contracts.OrderItem, sku=ids, name=names, quantity=st.integers(1, 1000), unit_price_cents=cents),
    min_size=1, max_size=5,
)
cart_items = st.lists(st.builds(contracts.CartItem, sku=ids, quantity=st.integers(0, 1000)), max_size=5)
customer = st.builds(contracts.Customer, email=emails, name=st.none() | names)
payment = st.builds(contracts.Payment, method=st.sampled_from(["gateway", "manual"]), provider=ids)
lines = names.filter(bool)
address = st.builds(contracts.Address, name=lines, line1=lines, line2=st.none() | names, postal_code=ids,
                    city=lines, region=st.none() | names, country=st.sampled_from(["FR", "BE", "JP", "US", "GB"]),
                    phone=st.none() | st.just("+33 1 23 45 67 89"))
shipping = st.builds(contracts.ShippingChoice, method=lines, carrier=st.none() | names, cost_cents=cents)
locales = st.sampled_from(["fr", "fr-FR", "FR-be", "en-GB", "ja-JP", "zh-hant-TW", "de-CH"])

MODELS = {
    contracts.CartUpdated: st.builds(contracts.CartUpdated, cart_id=ids, items=cart_items, **envelope),
    contracts.CheckoutStarted: st.builds(contracts.CheckoutStarted, cart_id=ids, customer=customer, items=cart_items,
                                         total_cents=cents, currency=st.just("EUR"), **envelope),
    contracts.OrderPlaced: st.builds(contracts.OrderPlaced, order_id=ids, cart_id=ids, customer=customer,
                                     items=order_items, total_cents=cents, currency=st.just("USD"), payment=payment,
                                     shipping_address=st.none() | address, billing_address=st.none() | address,
                                     shipping=st.none() | shipping, discount_cents=st.none() | cents,
                                     tax_cents=st.none() | cents, note=st.none() | names,
                                     locale=st.none() | locales, **envelope),
    contracts.PaymentRefunded: st.builds(contracts.PaymentRefunded, order_id=ids, refund_id=ids,
                                         amount_cents=st.integers(1, 10**12), currency=st.just("JPY"), provider=ids,
                                         reason=st.none() | names, **envelope),
    contracts.PaymentConfirmed: st.builds(contracts.PaymentConfirmed, order_id=ids, payment_id=ids, amount_cents=cents,
                                          currency=st.just("EUR"), provider=ids, **envelope),
    contracts.StockAdjusted: st.one_of(
        st.builds(contracts.StockAdjusted, sku=ids, delta=st.integers(-1000, 1000), **envelope),
        st.builds(contracts.StockAdjusted, sku=ids, set_to=st.integers(0, 1000), **envelope),
    ),
    contracts.ShopSettings: st.builds(contracts.ShopSettings, name=ids, merchant_email=emails,
                                      ignore_incomplete_orders=st.booleans(), **envelope),
    contracts.InventoryLevel: st.builds(contracts.InventoryLevel, sku=ids, available=st.integers(0, 10**6),
                                        updated_at=when, **envelope),
}


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_valid_model_survives_the_json_round_trip(model, data):
    event = data.draw(MODELS[model])
    assert decode(model, encode(event)) == event


def _placed() -> dict:
    return {
        "event_id": str(uuid.uuid4()), "occurred_at": "2026-11-25T10:00:00+01:00", "shop_id": "shop-1",
        "order_id": "o-1", "cart_id": "c-1", "customer": {"email": "ann@example.com"},
        "items": [{"sku": "mug", "name": "Mug", "quantity": 2, "unit_price_cents": 900}],
        "total_cents": 1800, "currency": "EUR", "payment": {"method": "manual", "provider": "transfer"},
    }


def test_occurred_at_is_normalised_to_utc_and_unknown_fields_are_ignored():
    raw = _placed() | {"coupon": "X1"}
    event = decode(contracts.OrderPlaced, json.dumps(raw).encode())
    assert event.occurred_at == datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    assert not hasattr(event, "coupon")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["items"][0].update(quantity=-1), "items.0.quantity"),
        (lambda d: d.pop("order_id"), "order_id"),
        (lambda d: d.update(total_cents="lots"), "total_cents"),
        (lambda d: d["payment"].update(method="barter"), "payment.method"),
        (lambda d: d.update(event_id="not-a-uuid"), "event_id"),
        (lambda d: d.update(occurred_at="2026-11-25T10:00:00"), "occurred_at"),
        (lambda d: d["customer"].update(email="a@b.com, c@d.com"), "customer.email"),
        (lambda d: d["customer"].update(name="Ann\r\nBcc: x@y.z"), "customer.name"),
        (lambda d: d.update(currency="eur"), "currency"),
        (lambda d: d.update(items=[]), "items"),
    ],
)
def test_invalid_payload_is_refused_naming_the_field(mutate, field):
    raw = _placed()
    mutate(raw)
    with pytest.raises(ContractError) as caught:
        decode(contracts.OrderPlaced, json.dumps(raw).encode())
    assert caught.value.reason.startswith(field + ":"), caught.value.reason


@pytest.mark.parametrize(
    ("raw", "kind"),
    [(b"{not json", "not_json"), (b"[1, 2]", "not_object"), (b"\xff\xfe", "not_json"), (None, "empty"),
     (b'{"x": "' + b"a" * contracts.MAX_EVENT_BYTES + b'"}', "too_large")],
)
def test_unreadable_values_are_refused_with_their_kind(raw, kind):
    with pytest.raises(ContractError) as caught:
        decode(contracts.OrderPlaced, raw)
    assert caught.value.kind == kind


def test_stock_adjusted_needs_exactly_one_of_delta_and_set_to():
    base = {"event_id": str(uuid.uuid4()), "occurred_at": "2026-11-25T10:00:00Z", "shop_id": "s", "sku": "mug"}
    for extra in ({}, {"delta": 1, "set_to": 2}):
        with pytest.raises(ContractError, match="exactly one of delta or set_to"):
            decode(contracts.StockAdjusted, json.dumps(base | extra).encode())
    with pytest.raises(ContractError, match="set_to"):
        decode(contracts.StockAdjusted, json.dumps(base | {"set_to": -1}).encode())


def test_every_topic_has_a_key_and_a_dead_letter_topic():
    assert len({t.name for t in ALL}) == len(ALL)
    for spec in ALL:
        assert spec.dlq == spec.name + ".dlq"
        assert spec.cleanup_policy in {"compact", "delete"}


def test_committed_json_schemas_match_the_models():
    """Fails when a model changed and `python -m contracts.schema_export` was not run."""
    expected = schemas()
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    assert on_disk == expected
