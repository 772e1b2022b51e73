"""The order state machine: pure rules, no I/O (DESIGN.md, "Order and payment rules").

Every function takes the order's current state and answers a `Decision`: the new state, the history entries the
change makes (none for a no-op), or a refusal with a reason a merchant can read. The caller persists the entries
and emits one `order.status` per entry; a no-op writes and emits nothing.

Choices where DESIGN.md is silent:
- A payment whose amount or currency differs from the order is recorded and flags the order (`payment_mismatch`);
  it changes no status, so it never commits an order (no stock deducted): the merchant checks and marks it paid.
- A payment for a canceled order (customer, merchant or expiry) is recorded, changes nothing, and flags the order
  (`payment_after_cancel`).
- Every flag is raised once per order (`raised_flags`); raising one alerts the merchant once (order.flagged).
- Expiry (`expire`) cancels only incomplete orders, with the reason `expired`, by the system; the payment status stays
  incomplete (nothing was taken, so nothing is owed).
- Marking an incomplete order paid (the merchant got the money another way) commits it: pending/paid.
- A customer's cancel is honoured while the order is incomplete or pending; after that it is refused and recorded.
- A merchant cannot cancel an incomplete order (DESIGN.md: only pending or processed); it stays out of the lists.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from contracts import EXPIRED_REASON, ChangedBy, OrderFlag, OrderStatus, PaymentStatus

PaymentMethod = Literal["gateway", "manual"]

MERCHANT_TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.PROCESSED, OrderStatus.CANCELED}),
    OrderStatus.PROCESSED: frozenset({OrderStatus.DELIVERED, OrderStatus.CANCELED}),
}
"""Where a merchant may move an order from each status; a status missing here is final for the merchant."""

CUSTOMER_CANCELABLE = frozenset({OrderStatus.INCOMPLETE, OrderStatus.PENDING})


@dataclass(frozen=True)
class OrderState:
    status: OrderStatus
    payment_status: PaymentStatus


@dataclass(frozen=True)
class Change:
    """One history row and one `order.status` event. `before` is None for the placement."""

    before: OrderState | None
    after: OrderState
    changed_by: ChangedBy
    reason: str
    refund_id: str | None = None
    """The refund this change applied (its order.status carries it: the customer's "refunded" mail, once per id)."""
    refund_cents: int | None = None


@dataclass(frozen=True)
class Decision:
    state: OrderState
    changes: tuple[Change, ...] = ()
    refused: str | None = None
    flags: frozenset[OrderFlag] = frozenset()
    """Flags this event raises on the order (a payment that did not match, a payment after cancel): recorded on the
    order besides the changes; a flag the order already has is not raised again."""

    @property
    def noop(self) -> bool:
        return not self.changes and self.refused is None

    @property
    def payment_mismatch(self) -> bool:
        return OrderFlag.PAYMENT_MISMATCH in self.flags


@dataclass(frozen=True)
class PaymentFacts:
    amount_cents: int
    currency: str


def _changed(before: OrderState | None, after: OrderState, by: ChangedBy, reason: str) -> Decision:
    return Decision(after, (Change(before, after, by, reason),))


def payment_matches(payment: PaymentFacts, total_cents: int, currency: str) -> bool:
    return payment.amount_cents == total_cents and payment.currency == currency


def place(method: PaymentMethod, shop_ignores_incomplete: bool, paid_already: bool) -> Decision:
    """The first state of a new order. `paid_already`: a matching payment.confirmed arrived before the order."""
    if paid_already:
        return _changed(None, OrderState(OrderStatus.PENDING, PaymentStatus.PAID), ChangedBy.SYSTEM,
                        "order placed, payment already confirmed")
    if method == "gateway" and shop_ignores_incomplete:
        return _changed(None, OrderState(OrderStatus.INCOMPLETE, PaymentStatus.INCOMPLETE), ChangedBy.SYSTEM,
                        "order placed, waiting for the payment gateway")
    return _changed(None, OrderState(OrderStatus.PENDING, PaymentStatus.AWAITING), ChangedBy.SYSTEM,
                    "order placed, awaiting payment")


def _paid(state: OrderState, by: ChangedBy, reason: str) -> Decision:
    if state.status == OrderStatus.CANCELED:
        return Decision(state, refused="the order is canceled; a payment cannot reopen it")
    if state.payment_status == PaymentStatus.PAID:
        return Decision(state)
    status = OrderStatus.PENDING if state.status == OrderStatus.INCOMPLETE else state.status
    return _changed(state, OrderState(status, PaymentStatus.PAID), by, reason)


def confirm_payment(state: OrderState, payment: PaymentFacts, total_cents: int, currency: str) -> Decision:
    """A gateway's payment.confirmed for a placed order. The first matching one commits it; others are no-ops.
    One of another amount or currency flags `payment_mismatch`; one for a canceled (or expired) order flags
    `payment_after_cancel` (both when both hold): the money came, the merchant must look."""
    after_cancel = frozenset({OrderFlag.PAYMENT_AFTER_CANCEL}) if state.status == OrderStatus.CANCELED else frozenset()
    if not payment_matches(payment, total_cents, currency):
        return Decision(state, flags=after_cancel | {OrderFlag.PAYMENT_MISMATCH},
                        refused=f"payment of {payment.amount_cents} {payment.currency} does not match the order "
                                f"total of {total_cents} {currency}")
    return replace(_paid(state, ChangedBy.SYSTEM, "payment confirmed by the gateway"), flags=after_cancel)


def mark_paid(state: OrderState) -> Decision:
    """The merchant marks the order paid (a cheque arrived). Never touches stock by itself."""
    return _paid(state, ChangedBy.MERCHANT, "marked paid by the merchant")


def merchant_set_status(state: OrderState, target: OrderStatus) -> Decision:
    """pending → processed → delivered; pending or processed → canceled; the same status again is a no-op."""
    if target == state.status:
        return Decision(state)
    allowed = MERCHANT_TRANSITIONS.get(state.status, frozenset())
    if target not in allowed:
        if state.status == OrderStatus.INCOMPLETE:
            why = "the order is incomplete (its payment was never confirmed)"
        elif not allowed:
            why = f"a {state.status.value} order is final"
        else:
            why = f"a {state.status.value} order can only become " + " or ".join(sorted(s.value for s in allowed))
        return Decision(state, refused=f"cannot change {state.status.value} to {target.value}: {why}")
    return _changed(state, OrderState(target, state.payment_status), ChangedBy.MERCHANT,
                    f"set to {target.value} by the merchant")


def customer_cancel(state: OrderState, reason: str | None = None) -> Decision:
    """A customer's order.cancel_requested: honoured while the order is incomplete or pending."""
    if state.status == OrderStatus.CANCELED:
        return Decision(state)
    if state.status not in CUSTOMER_CANCELABLE:
        return Decision(state, refused=f"the order is already {state.status.value}; too late to cancel")
    why = f"canceled by the customer: {reason}" if reason else "canceled by the customer"
    return _changed(state, OrderState(OrderStatus.CANCELED, state.payment_status), ChangedBy.CUSTOMER, why)


@dataclass(frozen=True)
class Placement:
    """What placing an order decides, given the payments that arrived before it (held for it)."""

    decision: Decision
    settled: tuple[tuple[str, bool, str], ...]  # (payment_id, applied, outcome) for each held payment


def place_with_held(method: PaymentMethod, shop_ignores_incomplete: bool, total_cents: int, currency: str,
                    held: list[tuple[str, PaymentFacts]]) -> Placement:
    """Place an order and settle the payments held for it: the first matching one pays it, other matching ones are
    no-ops, the rest are recorded as mismatches (and flag the order)."""
    matching = [pid for pid, facts in held if payment_matches(facts, total_cents, currency)]
    decision = place(method, shop_ignores_incomplete, paid_already=bool(matching))
    if len(matching) < len(held):
        decision = replace(decision, flags=decision.flags | {OrderFlag.PAYMENT_MISMATCH})
    settled = []
    for pid, facts in held:
        if pid in matching:
            applied = pid == matching[0]
            settled.append((pid, applied, "applied" if applied else "no change: already paid"))
        else:
            refusal = confirm_payment(decision.state, facts, total_cents, currency).refused
            settled.append((pid, False, refusal or "mismatch"))
    return Placement(decision, tuple(settled))


def outcome_text(decision: Decision, done: str) -> str:
    """How a payment or cancel request ended, as recorded and shown in the back office."""
    if decision.refused:
        return f"refused: {decision.refused}"
    return done if decision.changes else "no change"


# --- refunds ----------------------------------------------------------------------------------------------------

PAID_STATUSES = frozenset({PaymentStatus.PAID, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED})
"""Payment statuses of an order whose payment was taken (a refund may follow)."""


def paid_cents(state: OrderState, total_cents: int) -> int:
    """What the customer paid: the total once a (matching) payment was taken, else nothing."""
    return total_cents if state.payment_status in PAID_STATUSES else 0


def refund_due(state: OrderState, total_cents: int, refunded_cents: int) -> int:
    """What a canceled paid order still owes the customer: paid minus refunded; 0 for any other order."""
    if state.status != OrderStatus.CANCELED:
        return 0
    return max(0, paid_cents(state, total_cents) - refunded_cents)


@dataclass(frozen=True)
class Refund:
    decision: Decision
    refunded_cents: int
    """What the order has refunded after this refund (unchanged when refused)."""


def refund(state: OrderState, total_cents: int, currency: str, refunded_cents: int, amount_cents: int,
           refund_currency: str, by: ChangedBy, refund_id: str) -> Refund:
    """A refund (gateway's payment.refunded or the merchant's): paid → partially_refunded → refunded; never more
    than was paid. Every accepted refund is a change (one history row, one order.status carrying the new
    refunded_cents), even when the payment status stays partially_refunded. Stock is never touched."""
    def refused(why: str) -> Refund:
        return Refund(Decision(state, refused=why), refunded_cents)

    if amount_cents <= 0:
        return refused("a refund must be more than 0")
    if state.payment_status not in PAID_STATUSES:
        return refused(f"the order is not paid (payment {state.payment_status.value}); there is nothing to refund")
    if refund_currency != currency:
        return refused(f"the refund is in {refund_currency}; the order was paid in {currency}")
    paid = paid_cents(state, total_cents)
    left = paid - refunded_cents
    if amount_cents > left:
        return refused(f"a refund of {amount_cents} {currency} is more than is left to refund: {left} {currency} of "
                       f"{paid} {currency} paid")
    after = refunded_cents + amount_cents
    status = PaymentStatus.REFUNDED if after == paid else PaymentStatus.PARTIALLY_REFUNDED
    who = "by the merchant" if by == ChangedBy.MERCHANT else "by the payment gateway"
    change = Change(state, OrderState(state.status, status), by,
                    f"refund {refund_id} of {amount_cents} {currency} {who} ({after} of {paid} refunded)",
                    refund_id=refund_id, refund_cents=amount_cents)
    return Refund(Decision(change.after, (change,)), after)


# --- flags and expiry -------------------------------------------------------------------------------------------

EXPIRED = EXPIRED_REASON
"""The reason of an expiry's cancel, exactly (DESIGN.md; defined once in contracts): consumers (cart) recognise it."""

DEFAULT_EXPIRE_UNPAID_AFTER_SECONDS = 7 * 24 * 3600
"""shop.settings' default `expire_unpaid_after_seconds`, for a shop whose settings never came."""


FLAG_NAMES = frozenset(f.value for f in OrderFlag)


def raised_flags(flags_before: frozenset[str], decision: Decision, total_cents: int,
                 refunded_cents: int) -> frozenset[OrderFlag]:
    """The flags a decision raises that the order did not have: the decision's own, and `refund_due` when it leaves
    a canceled paid order owing the customer. Each flag is raised once per order, ever: a flag is an alert, and the
    merchant is alerted once per (order, flag)."""
    raised = set(decision.flags)
    if refund_due(decision.state, total_cents, refunded_cents) > 0:
        raised.add(OrderFlag.REFUND_DUE)
    return frozenset(f for f in raised if f.value not in flags_before)


def current_flags(flags_raised: frozenset[str], refund_due_cents: int) -> frozenset[OrderFlag]:
    """What the back office shows: every flag raised, but `refund_due` only while something is still owed."""
    return frozenset(OrderFlag(f) for f in flags_raised
                     if f in FLAG_NAMES and (f != OrderFlag.REFUND_DUE or refund_due_cents > 0))


def is_expired(placed_at: datetime, at: datetime, expire_after_seconds: int) -> bool:
    return at - placed_at >= timedelta(seconds=expire_after_seconds)


def expire(state: OrderState, placed_at: datetime, at: datetime, expire_after_seconds: int) -> Decision:
    """An unpaid gateway order past its shop's `expire_unpaid_after_seconds`: canceled, reason `expired`, by the
    system; payment status unchanged (incomplete). Any other order, or one not old enough, is left alone (a no-op):
    the sweep re-checks what it claimed, so a payment committed meanwhile wins."""
    if state.status != OrderStatus.INCOMPLETE or not is_expired(placed_at, at, expire_after_seconds):
        return Decision(state)
    return _changed(state, OrderState(OrderStatus.CANCELED, state.payment_status), ChangedBy.SYSTEM, EXPIRED)
