"""The refund rule (DESIGN.md, "Order and payment rules": refunds), pure: services/orders/core.refund."""

from __future__ import annotations

from contracts import ChangedBy, OrderStatus, PaymentStatus
from services.orders import core

PAID = core.OrderState(OrderStatus.PENDING, PaymentStatus.PAID)


def refund(state: core.OrderState, refunded: int, amount: int, currency: str = "EUR") -> core.Refund:
    return core.refund(state, 2500, "EUR", refunded, amount, currency, ChangedBy.MERCHANT, "r1")


def test_partial_then_full():
    first = refund(PAID, 0, 1000)
    assert first.refunded_cents == 1000 and first.decision.state.payment_status == PaymentStatus.PARTIALLY_REFUNDED
    second = refund(first.decision.state, 1000, 500)
    assert second.decision.state.payment_status == PaymentStatus.PARTIALLY_REFUNDED and len(second.decision.changes)
    last = refund(second.decision.state, 1500, 1000)
    assert last.refunded_cents == 2500 and last.decision.state.payment_status == PaymentStatus.REFUNDED
    assert last.decision.state.status == OrderStatus.PENDING  # a refund never changes the order's status


def test_never_more_than_was_paid():
    over = refund(PAID, 2000, 501)
    assert over.decision.refused and "more than is left to refund: 500 EUR of 2500 EUR paid" in over.decision.refused
    assert over.refunded_cents == 2000 and not over.decision.changes
    full = refund(core.OrderState(OrderStatus.PENDING, PaymentStatus.REFUNDED), 2500, 1)
    assert full.decision.refused


def test_an_unpaid_order_or_another_currency_is_refused():
    assert refund(core.OrderState(OrderStatus.PENDING, PaymentStatus.AWAITING), 0, 100).decision.refused
    assert refund(core.OrderState(OrderStatus.INCOMPLETE, PaymentStatus.INCOMPLETE), 0, 100).decision.refused
    assert "USD" in (refund(PAID, 0, 100, "USD").decision.refused or "")


def test_refund_due_on_a_canceled_paid_order_until_refunded():
    canceled = core.OrderState(OrderStatus.CANCELED, PaymentStatus.PAID)
    assert core.refund_due(canceled, 2500, 0) == 2500
    partly = refund(canceled, 0, 1000)
    assert core.refund_due(partly.decision.state, 2500, partly.refunded_cents) == 1500
    done = refund(partly.decision.state, 1000, 1500)
    assert core.refund_due(done.decision.state, 2500, done.refunded_cents) == 0
    assert core.refund_due(PAID, 2500, 0) == 0  # not canceled: nothing due
    assert core.refund_due(core.OrderState(OrderStatus.CANCELED, PaymentStatus.AWAITING), 2500, 0) == 0  # never paid
