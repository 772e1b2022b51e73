"""The order state machine, table-driven: every placement, transition, refusal and no-op."""

from __future__ import annotations

import itertools

import pytest

from contracts import ChangedBy, OrderStatus, PaymentStatus
from services.orders import core
from services.orders.core import OrderState, PaymentFacts

S, P = OrderStatus, PaymentStatus
INCOMPLETE = OrderState(S.INCOMPLETE, P.INCOMPLETE)


def st(status: OrderStatus, payment: PaymentStatus = P.AWAITING) -> OrderState:
    return OrderState(status, payment)


# --- placement ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "ignores", "paid", "expected"), [
    ("gateway", True, False, INCOMPLETE),
    ("gateway", False, False, st(S.PENDING, P.AWAITING)),
    ("manual", True, False, st(S.PENDING, P.AWAITING)),
    ("manual", False, False, st(S.PENDING, P.AWAITING)),
    ("gateway", True, True, st(S.PENDING, P.PAID)),
    ("gateway", False, True, st(S.PENDING, P.PAID)),
    ("manual", True, True, st(S.PENDING, P.PAID)),
])
def test_placement(method: core.PaymentMethod, ignores: bool, paid: bool, expected: OrderState) -> None:
    decision = core.place(method, ignores, paid_already=paid)
    assert decision.state == expected
    assert len(decision.changes) == 1
    change = decision.changes[0]
    assert change.before is None and change.after == expected and change.changed_by == ChangedBy.SYSTEM
    assert decision.refused is None


# --- merchant status changes ----------------------------------------------------------------------------------

ALLOWED = {
    (S.PENDING, S.PROCESSED), (S.PROCESSED, S.DELIVERED), (S.PENDING, S.CANCELED), (S.PROCESSED, S.CANCELED),
}
ALL_PAIRS = list(itertools.product(list(S), list(S)))


@pytest.mark.parametrize(("source", "target"), sorted(ALLOWED))
@pytest.mark.parametrize("payment", [P.AWAITING, P.PAID])
def test_merchant_allowed_transitions(source: OrderStatus, target: OrderStatus, payment: PaymentStatus) -> None:
    decision = core.merchant_set_status(st(source, payment), target)
    assert decision.state == st(target, payment)
    assert [(c.before, c.after, c.changed_by) for c in decision.changes] == [
        (st(source, payment), st(target, payment), ChangedBy.MERCHANT)]


@pytest.mark.parametrize(("source", "target"),
                         [(a, b) for a, b in ALL_PAIRS if a != b and (a, b) not in ALLOWED])
def test_merchant_refused_transitions(source: OrderStatus, target: OrderStatus) -> None:
    state = st(source, P.INCOMPLETE if source == S.INCOMPLETE else P.PAID)
    decision = core.merchant_set_status(state, target)
    assert decision.refused is not None
    assert source.value in decision.refused and target.value in decision.refused
    assert decision.state == state and decision.changes == ()


@pytest.mark.parametrize("status", list(S))
def test_merchant_repeating_the_status_is_a_noop(status: OrderStatus) -> None:
    decision = core.merchant_set_status(st(status), status)
    assert decision.noop and decision.changes == () and decision.refused is None


def test_refusal_reasons_say_why() -> None:
    assert "final" in (core.merchant_set_status(st(S.DELIVERED), S.PENDING).refused or "")
    assert "processed" in (core.merchant_set_status(st(S.PENDING), S.DELIVERED).refused or "")
    assert "incomplete" in (core.merchant_set_status(INCOMPLETE, S.PENDING).refused or "")


# --- payments -------------------------------------------------------------------------------------------------

GOOD = PaymentFacts(4500, "EUR")


@pytest.mark.parametrize(("before", "after"), [
    (INCOMPLETE, st(S.PENDING, P.PAID)),
    (st(S.PENDING, P.AWAITING), st(S.PENDING, P.PAID)),
    (st(S.PROCESSED, P.AWAITING), st(S.PROCESSED, P.PAID)),
    (st(S.DELIVERED, P.AWAITING), st(S.DELIVERED, P.PAID)),
])
@pytest.mark.parametrize(("decide", "by"), [
    (lambda s: core.confirm_payment(s, GOOD, 4500, "EUR"), ChangedBy.SYSTEM),
    (core.mark_paid, ChangedBy.MERCHANT),
])
def test_payment_commits_or_marks_paid(before: OrderState, after: OrderState, decide, by: ChangedBy) -> None:  # noqa: ANN001
    decision = decide(before)
    assert decision.state == after
    assert [(c.before, c.after, c.changed_by) for c in decision.changes] == [(before, after, by)]
    assert not decision.payment_mismatch


@pytest.mark.parametrize("status", [S.PENDING, S.PROCESSED, S.DELIVERED])
def test_paying_a_paid_order_again_is_a_noop(status: OrderStatus) -> None:
    state = st(status, P.PAID)
    assert core.mark_paid(state).noop
    assert core.confirm_payment(state, GOOD, 4500, "EUR").noop


@pytest.mark.parametrize("payment", [P.INCOMPLETE, P.AWAITING, P.PAID])
def test_payment_of_a_canceled_order_is_refused(payment: PaymentStatus) -> None:
    state = st(S.CANCELED, payment)
    for decision in (core.mark_paid(state), core.confirm_payment(state, GOOD, 4500, "EUR")):
        assert decision.refused and "canceled" in decision.refused
        assert decision.changes == () and decision.state == state


@pytest.mark.parametrize("facts", [PaymentFacts(4400, "EUR"), PaymentFacts(4500, "USD"), PaymentFacts(0, "EUR")])
@pytest.mark.parametrize("state", [INCOMPLETE, st(S.PENDING, P.AWAITING)])
def test_mismatched_payment_flags_and_changes_nothing(facts: PaymentFacts, state: OrderState) -> None:
    decision = core.confirm_payment(state, facts, 4500, "EUR")
    assert decision.payment_mismatch
    assert decision.changes == () and decision.state == state
    assert decision.refused and "does not match" in decision.refused


# --- customer cancel ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [INCOMPLETE, st(S.PENDING, P.AWAITING), st(S.PENDING, P.PAID)])
def test_customer_cancel_honoured_while_pending_or_incomplete(state: OrderState) -> None:
    decision = core.customer_cancel(state, "changed my mind")
    assert decision.state == OrderState(S.CANCELED, state.payment_status)
    (change,) = decision.changes
    assert change.changed_by == ChangedBy.CUSTOMER and "changed my mind" in change.reason


@pytest.mark.parametrize("status", [S.PROCESSED, S.DELIVERED])
def test_customer_cancel_refused_after_pending(status: OrderStatus) -> None:
    decision = core.customer_cancel(st(status, P.PAID))
    assert decision.refused and status.value in decision.refused
    assert decision.changes == ()


def test_customer_cancel_of_a_canceled_order_is_a_noop() -> None:
    assert core.customer_cancel(st(S.CANCELED)).noop


# --- the French seed's story, end to end on the pure core -----------------------------------------------------

def test_manual_order_paid_twice_shipped_twice_has_only_real_changes() -> None:
    state = core.place("manual", True, paid_already=False).state
    changes = []
    for step in (core.mark_paid, core.mark_paid,
                 lambda s: core.merchant_set_status(s, S.PROCESSED),
                 lambda s: core.merchant_set_status(s, S.PROCESSED),
                 lambda s: core.merchant_set_status(s, S.DELIVERED)):
        decision = step(state)
        assert decision.refused is None
        changes.extend(decision.changes)
        state = decision.state
    assert [(c.after.status, c.after.payment_status) for c in changes] == [
        (S.PENDING, P.PAID), (S.PROCESSED, P.PAID), (S.DELIVERED, P.PAID)]
