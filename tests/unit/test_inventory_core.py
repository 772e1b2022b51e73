"""The inventory rules, pure: deduct once, return once, never below zero, same result batched or one by one."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import DeductionKind, OrderItem, OrderStatus, OrderStatusChanged, StockAdjusted
from services.inventory import core
from services.inventory.core import AdjustStock, Book, CancelOrder, CommitOrder, OrderState
from tests.examples import example

SHOP = "shop-1"


def commit(order_id: str, **lines: int) -> CommitOrder:
    return CommitOrder(order_id, SHOP, tuple(lines.items()))


def cancel(order_id: str) -> CancelOrder:
    return CancelOrder(order_id, SHOP)


def book(**levels: int) -> Book:
    return Book(levels={(SHOP, sku): n for sku, n in levels.items()})


# --- commands from events ----------------------------------------------------------------------------------


def status_event(status: OrderStatus, items: list[OrderItem] | None = None) -> OrderStatusChanged:
    event = example(OrderStatusChanged, status=status)
    return event if items is None else event.model_copy(update={"items": items})


def test_committing_statuses_commit_and_sum_repeated_skus() -> None:
    items = [OrderItem(sku="A", name="a", quantity=2, unit_price_cents=1),
             OrderItem(sku="B", name="b", quantity=1, unit_price_cents=1),
             OrderItem(sku="A", name="a again", quantity=3, unit_price_cents=1)]
    for status in (OrderStatus.PENDING, OrderStatus.PROCESSED, OrderStatus.DELIVERED):
        command = core.command_for_status(status_event(status, items))
        assert isinstance(command, CommitOrder)
        assert command.lines == (("A", 5), ("B", 1))


def test_incomplete_asks_nothing_and_canceled_cancels() -> None:
    assert core.command_for_status(status_event(OrderStatus.INCOMPLETE)) is None
    assert isinstance(core.command_for_status(status_event(OrderStatus.CANCELED)), CancelOrder)


def test_adjustment_command_keeps_delta_or_set_to() -> None:
    event = example(StockAdjusted, sku="X", delta=None, set_to=4)
    assert core.command_for_adjustment(event) == AdjustStock(event.shop_id, "X", None, 4)


# --- rules -------------------------------------------------------------------------------------------------


def test_paid_three_times_and_shipped_twice_deducts_once() -> None:
    b = book(MUG=10)
    out = core.apply(b, [commit("o1", MUG=3)] * 6)
    assert b.levels[(SHOP, "MUG")] == 7
    assert [(m.kind, m.moved) for m in out.moves] == [(DeductionKind.DEDUCTED, 3)]
    assert out.orders == {(SHOP, "o1"): OrderState.DEDUCTED}


def test_cancel_returns_exactly_what_was_deducted_once() -> None:
    b = book(MUG=2)
    out = core.apply(b, [commit("o1", MUG=5), cancel("o1"), cancel("o1"), commit("o1", MUG=5)])
    assert b.levels[(SHOP, "MUG")] == 2
    assert [(m.kind, m.asked, m.moved) for m in out.moves] == [
        (DeductionKind.DEDUCTED, 5, 2), (DeductionKind.RETURNED, 2, 2)]
    assert [(o, k) for o, _, k, _ in out.deductions()] == [("o1", DeductionKind.DEDUCTED),
                                                            ("o1", DeductionKind.RETURNED)]


def test_shortfall_takes_what_is_left_and_never_goes_below_zero() -> None:
    b = book(MUG=1, TEE=5)
    out = core.apply(b, [commit("o1", MUG=3, TEE=2)])
    assert b.levels == {(SHOP, "MUG"): 0, (SHOP, "TEE"): 3}
    assert [m.shortfall for m in out.moves] == [True, False]


def test_cancel_of_a_never_deducted_order_closes_it() -> None:
    b = book(MUG=4)
    out = core.apply(b, [cancel("o1"), commit("o1", MUG=1)])
    assert b.levels[(SHOP, "MUG")] == 4
    assert out.moves == [] and out.orders == {(SHOP, "o1"): OrderState.CLOSED}


def test_unknown_sku_rejects_the_whole_order_and_moves_nothing() -> None:
    b = book(MUG=4)
    out = core.apply(b, [commit("o1", MUG=1, GHOST=1), commit("o2", MUG=1)])
    assert out.rejected == {0: "unknown SKU for shop shop-1: GHOST"}
    assert b.levels[(SHOP, "MUG")] == 3
    assert (SHOP, "o1") not in b.orders


def test_rejected_order_can_commit_after_the_sku_is_created() -> None:
    b = book(MUG=4)
    out = core.apply(b, [commit("o1", GHOST=2), AdjustStock(SHOP, "GHOST", delta=5), commit("o1", GHOST=2)])
    assert list(out.rejected) == [0]
    assert b.levels[(SHOP, "GHOST")] == 3


def test_adjustments_clamp_at_zero_and_report_created_skus() -> None:
    b = book(MUG=4)
    out = core.apply(b, [AdjustStock(SHOP, "MUG", delta=-10), AdjustStock(SHOP, "NEW", set_to=0)])
    assert out.levels == {(SHOP, "MUG"): 0, (SHOP, "NEW"): 0}
    assert out.applied_adjustments == 2


def test_unchanged_levels_are_not_reported() -> None:
    b = book(MUG=0)
    out = core.apply(b, [commit("o1", MUG=2), AdjustStock(SHOP, "MUG", set_to=0)])
    assert out.levels == {}
    assert out.moves[0].moved == 0


def test_return_of_an_order_deducted_in_an_earlier_batch_uses_the_ledger() -> None:
    b = book(MUG=1)
    b.orders[(SHOP, "o1")] = OrderState.DEDUCTED
    b.deducted[(SHOP, "o1")] = {"MUG": 3}
    out = core.apply(b, [cancel("o1")])
    assert b.levels[(SHOP, "MUG")] == 4
    assert out.orders == {(SHOP, "o1"): OrderState.RETURNED}


def test_two_shops_with_the_same_order_id_are_two_orders() -> None:
    other = "shop-2"
    b = Book(levels={(SHOP, "MUG"): 5, (other, "MUG"): 5})
    out = core.apply(b, [commit("1001", MUG=2), CommitOrder("1001", other, (("MUG", 3),)), cancel("1001")])
    assert b.levels == {(SHOP, "MUG"): 5, (other, "MUG"): 2}
    assert out.orders == {(SHOP, "1001"): OrderState.RETURNED, (other, "1001"): OrderState.DEDUCTED}
    assert [(o, s, k) for o, s, k, _ in out.deductions()] == [
        ("1001", SHOP, DeductionKind.DEDUCTED), ("1001", other, DeductionKind.DEDUCTED),
        ("1001", SHOP, DeductionKind.RETURNED)]


# --- properties --------------------------------------------------------------------------------------------

SKUS = ["A", "B", "C"]
ORDERS = [f"o{i}" for i in range(6)]

order_lines = st.dictionaries(st.sampled_from(SKUS), st.integers(1, 5), min_size=1, max_size=3)


@st.composite
def histories(draw: st.DrawFn, *, with_set_to: bool) -> tuple[dict[str, int], list[core.Command]]:
    lines = {o: draw(order_lines) for o in ORDERS}
    initial = {sku: draw(st.integers(0, 20)) for sku in SKUS}
    adjust = st.builds(AdjustStock, st.just(SHOP), st.sampled_from(SKUS), st.integers(-5 if with_set_to else 0, 10))
    if with_set_to:
        adjust = adjust | st.builds(lambda sku, n: AdjustStock(SHOP, sku, set_to=n), st.sampled_from(SKUS),
                                    st.integers(0, 10))
    command = st.one_of(
        st.sampled_from(ORDERS).map(lambda o: CommitOrder(o, SHOP, tuple(lines[o].items()))),
        st.sampled_from(ORDERS).map(lambda o: CancelOrder(o, SHOP)),
        adjust,
    )
    commands = draw(st.lists(command, max_size=40))
    duplicated = [c for c in commands for _ in range(draw(st.integers(1, 2)))]
    return initial, duplicated


def split(commands: list[core.Command], cuts: list[int]) -> list[list[core.Command]]:
    bounds = sorted({0, len(commands), *(c % (len(commands) + 1) for c in cuts)})
    return [commands[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(histories(with_set_to=True), st.lists(st.integers(0, 100), max_size=6))
def test_batched_equals_one_by_one_and_ledger_is_sound(history: tuple[dict[str, int], list[core.Command]],
                                                       cuts: list[int]) -> None:
    initial, commands = history
    one_by_one = Book(levels={(SHOP, s): n for s, n in initial.items()})
    single_moves = [m for c in commands for m in core.apply(one_by_one, [c]).moves]
    batched = Book(levels={(SHOP, s): n for s, n in initial.items()})
    batched_moves = [m for part in split(commands, cuts) for m in core.apply(batched, part).moves]

    assert batched.levels == one_by_one.levels
    assert batched_moves == single_moves
    assert all(v >= 0 for v in batched.levels.values())
    keys = [(m.order_id, m.kind, m.sku) for m in batched_moves]
    assert len(keys) == len(set(keys)), "at most one deduction and one return per order line"
    deducted = {(m.order_id, m.sku): m.moved for m in batched_moves if m.kind is DeductionKind.DEDUCTED}
    for m in batched_moves:
        if m.kind is DeductionKind.RETURNED:
            assert m.moved == deducted[(m.order_id, m.sku)]
        assert 0 <= m.moved <= m.asked

    replayed = copy.deepcopy(batched)
    again = core.apply(replayed, [c for c in commands if not isinstance(c, AdjustStock)])
    assert again.moves == [] and replayed.levels == batched.levels, "a replay of order events changes nothing"


@settings(max_examples=300, deadline=None)
@given(histories(with_set_to=False))
def test_final_level_is_initial_plus_adjustments_minus_committed_orders(
        history: tuple[dict[str, int], list[core.Command]]) -> None:
    initial, commands = history
    plenty = {sku: n + 1000 for sku, n in initial.items()}  # no shortfall: every order takes all it asks
    b = Book(levels={(SHOP, s): n for s, n in plenty.items()})
    core.apply(b, commands)

    status: dict[str, str] = {}
    for c in commands:
        if isinstance(c, CommitOrder):
            status.setdefault(c.order_id, "committed")
        elif isinstance(c, CancelOrder):
            status[c.order_id] = "canceled"
    expected = dict(plenty)
    for c in commands:
        if isinstance(c, AdjustStock):
            expected[c.sku] += c.delta or 0
    asked = {c.order_id: c.lines for c in commands if isinstance(c, CommitOrder)}
    for order_id, state in status.items():
        if state == "committed":
            for sku, n in asked[order_id]:
                expected[sku] -= n
    assert {sku: b.levels[(SHOP, sku)] for sku in SKUS} == expected
