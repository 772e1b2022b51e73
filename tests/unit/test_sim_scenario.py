"""The storefront scenario generator: deterministic by seed, honours its mix, emits only valid contract events,
and its expected outcome follows the order and stock rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts import OrderStatus, PaymentStatus, decode, encode, spec_for
from contracts.events import (
    CheckoutStarted,
    OrderCancelRequested,
    OrderItem,
    OrderPlaced,
    Payment,
    PaymentConfirmed,
    ShopSettings,
    StockAdjusted,
)
from orderflow.sim import Mix, Scenario, expected_outcome

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _wire(scenario: Scenario) -> list[tuple[str, str, bytes]]:
    events = scenario.setup_events + [e for s in scenario.session_events for e in s]
    return [(spec_for(type(e)).name, spec_for(type(e)).key_of(e), encode(e)) for e in events]


def test_same_seed_same_events_and_outcome() -> None:
    a = Scenario.generate(42, 200, start=START)
    b = Scenario.generate(42, 200, start=START)
    assert _wire(a) == _wire(b)
    assert a.expected == b.expected


def test_another_seed_other_events() -> None:
    assert _wire(Scenario.generate(1, 50, start=START)) != _wire(Scenario.generate(2, 50, start=START))


def test_every_event_is_valid_by_the_contract() -> None:
    scenario = Scenario.generate(3, 300, Mix(scarcity=0.3, abandon_after_seconds=5), start=START)
    for topic, key, value in _wire(scenario):
        event = decode(spec_for(topic).model, value)  # raises on anything the services would dead-letter
        assert spec_for(topic).key_of(event) == key
        assert "/" not in key or topic == "stock.adjusted"


def test_setup_comes_first_and_every_sku_has_stock() -> None:
    scenario = Scenario.generate(5, 100, Mix(shops=2, skus_per_shop=4), start=START)
    assert [type(e) for e in scenario.setup_events[:2]] == [ShopSettings, ShopSettings]
    assert len([e for e in scenario.setup_events if isinstance(e, StockAdjusted)]) == 8
    skus = {(e.shop_id, e.sku) for e in scenario.setup_events if isinstance(e, StockAdjusted)}
    ordered = {(e.shop_id, i.sku) for s in scenario.session_events for e in s if isinstance(e, OrderPlaced)
               for i in e.items}
    assert ordered <= skus


def test_mix_shares_are_roughly_honoured() -> None:
    mix = Mix(abandoned_carts=0.3, gateway_unpaid=0.2, manual_payments=0.5, cancels=0.1)
    scenario = Scenario.generate(11, 4000, mix, start=START)
    n = 4000
    ordered = [s for s in scenario.session_events if any(isinstance(e, OrderPlaced) for e in s)]
    assert len(ordered) / n == pytest.approx(0.7, abs=0.03)
    exp = scenario.expected
    assert len(exp.orders_with(OrderStatus.INCOMPLETE)) / n == pytest.approx(0.2, abs=0.03)
    manual = [e for s in ordered for e in s if isinstance(e, OrderPlaced) and e.payment.method == "manual"]
    assert len(manual) / (n * 0.5) == pytest.approx(0.5, abs=0.05)
    assert len(exp.orders_with(OrderStatus.CANCELED)) / (n * 0.5) == pytest.approx(0.1, abs=0.03)
    duplicated = [s for s in scenario.session_events if sum(isinstance(e, PaymentConfirmed) for e in s) == 2]
    assert duplicated, "some payment confirmations are duplicated"
    early = [s for s in scenario.session_events
             if any(isinstance(e, PaymentConfirmed) for e in s)
             and [type(e) for e in s].index(PaymentConfirmed) < [type(e) for e in s].index(OrderPlaced)]
    assert early, "some confirmations come before their order.placed"


def test_expected_stock_is_initial_minus_committed_non_canceled_plus_restocks() -> None:
    scenario = Scenario.generate(9, 600, Mix(restocks=0.2, cancels=0.2), start=START)
    exp = scenario.expected
    assert not exp.order_sensitive_skus
    want = dict(exp.initial_stock)
    for session in scenario.session_events:
        for e in session:
            if isinstance(e, StockAdjusted):
                want[(e.shop_id, e.sku)] += e.delta
            if isinstance(e, OrderPlaced):
                order = exp.orders[e.shop_id, e.order_id]
                if order.committed and order.status != OrderStatus.CANCELED:
                    for line in e.items:
                        want[(e.shop_id, line.sku)] -= line.quantity
    assert exp.stock == want
    assert all(v >= 0 for v in exp.stock.values())


def test_scarcity_clamps_at_zero_and_flags_order_sensitive_skus() -> None:
    scenario = Scenario.generate(13, 500, Mix(scarcity=0.5, restocks=0.0), start=START)
    assert scenario.expected.order_sensitive_skus
    assert all(v >= 0 for v in scenario.expected.stock.values())


def _env(n: int) -> dict:
    return {"event_id": f"00000000-0000-0000-0000-{n:012d}", "occurred_at": START, "shop_id": "s"}


def test_oracle_follows_the_payment_rules() -> None:
    line = OrderItem(sku="mug", name="Mug", quantity=4, unit_price_cents=100)
    customer = {"email": "a@b.example"}

    def placed(n: int, order_id: str, method: str) -> OrderPlaced:
        return OrderPlaced(**_env(n), order_id=order_id, cart_id=f"c-{order_id}", customer=customer, items=[line],
                           total_cents=300, currency="EUR", payment=Payment(method=method, provider="x"))

    def paid(n: int, order_id: str) -> PaymentConfirmed:
        return PaymentConfirmed(**_env(n), order_id=order_id, payment_id="p", amount_cents=300, currency="EUR",
                                provider="x")

    setup = [StockAdjusted(**_env(1), sku="mug", set_to=10)]
    sessions = [
        [CheckoutStarted(**_env(2), cart_id="c-unpaid", customer=customer, items=[], total_cents=0,
                         currency="EUR"), placed(3, "unpaid", "gateway")],
        [paid(4, "early"), placed(5, "early", "gateway"), paid(6, "early")],
        [placed(7, "manual", "manual"), paid(8, "manual"), paid(9, "manual")],
        [placed(10, "cancel", "gateway"), paid(11, "cancel"), OrderCancelRequested(**_env(12), order_id="cancel")],
    ]
    exp = expected_outcome(setup, sessions)
    orders = {order_id: o for (_shop, order_id), o in exp.orders.items()}
    assert (orders["unpaid"].status, orders["unpaid"].payment_status) == (OrderStatus.INCOMPLETE,
                                                                          PaymentStatus.INCOMPLETE)
    assert (orders["early"].status, orders["early"].payment_status) == (OrderStatus.PENDING, PaymentStatus.PAID)
    assert orders["manual"].payment_status == PaymentStatus.PAID
    assert orders["cancel"].status == OrderStatus.CANCELED
    assert exp.abandoned_carts == {("s", "c-unpaid")}
    # 10 - early 4 - manual 4 = 2; the cancelled order asked 4, took the 2 left (short) and returns those 2
    assert exp.stock[("s", "mug")] == 2
    assert ("s", "mug") in exp.order_sensitive_skus


def test_expected_for_a_prefix_covers_only_those_sessions() -> None:
    scenario = Scenario.generate(21, 100, start=START)
    prefix = scenario.expected_for(10)
    ids = {(e.shop_id, e.order_id) for s in scenario.session_events[:10] for e in s if isinstance(e, OrderPlaced)}
    assert set(prefix.orders) == ids


def test_shared_ids_make_shops_reuse_order_cart_and_payment_ids_and_the_oracle_keeps_them_apart() -> None:
    scenario = Scenario.generate(8, 300, Mix(shops=2, shared_ids=True, cancels=0.2), start=START)
    events = [e for s in scenario.session_events for e in s]
    shops_by_order: dict[str, set[str]] = {}
    for e in events:
        if isinstance(e, OrderPlaced):
            shops_by_order.setdefault(e.order_id, set()).add(e.shop_id)
    shared = {o for o, shops in shops_by_order.items() if len(shops) == 2}
    assert len(shared) > 50, "order ids are used by both shops"
    assert all(o.removeprefix(f"{scenario.namespace}-").isdigit() for o in shops_by_order), "numbered from 1001"
    payments = {(e.shop_id, e.payment_id) for e in events if isinstance(e, PaymentConfirmed)}
    assert len({p for _, p in payments}) < len(payments), "payment ids are shared too"
    exp = scenario.expected
    assert set(exp.orders) == {(e.shop_id, e.order_id) for e in events if isinstance(e, OrderPlaced)}
    assert all(key == o.key for key, o in exp.orders.items())
    assert {shop for shop, _ in exp.abandoned_carts} == {s.shop_id for s in scenario.shops}
    # stock per shop: each shop's committed demand comes off its own SKUs only (no scarcity: exact)
    for shop in scenario.shops:
        mine = [o for o in exp.orders.values() if o.shop_id == shop.shop_id]
        assert mine and all(o.email.startswith("shopper") for o in mine)
    assert all(level >= 10 for level in exp.stock.values())


def test_a_bad_mix_is_refused() -> None:
    with pytest.raises(ValueError, match="abandoned_carts"):
        Mix(abandoned_carts=1.5)
    with pytest.raises(ValueError, match="exceed"):
        Mix(abandoned_carts=0.7, gateway_unpaid=0.6)
