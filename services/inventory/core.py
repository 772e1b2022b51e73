"""Inventory rules, pure: given current levels and order states and a batch of commands, decide everything.

No I/O here. The service loads the rows a batch touches, calls `apply`, and writes the outcome in one
transaction. Applying a batch at once gives the same result as applying its commands one by one.

Rules (DESIGN.md, "Order and payment rules"; the seed's rule 4):
- an order's stock is deducted on its first committing status (pending, processed, delivered), never again;
- a cancel returns exactly what was deducted, once; a cancel of a never-deducted order closes it for good;
- available never goes below 0: a committed order takes what is left (moved < asked is a shortfall);
- an order line whose SKU the shop never had is rejected (nothing of that order moves);
- a stock adjustment (delta or set_to) creates the SKU if needed and never leaves it below 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from contracts import DeductionKind, OrderStatus, OrderStatusChanged, StockAdjusted

StockKey = tuple[str, str]
"""(shop_id, sku)."""

OrderKey = tuple[str, str]
"""(shop_id, order_id): order ids are unique within a shop only."""

COMMITTING = frozenset({OrderStatus.PENDING, OrderStatus.PROCESSED, OrderStatus.DELIVERED})


class OrderState(StrEnum):
    OPEN = "open"  # seen, nothing deducted (yet)
    DEDUCTED = "deducted"
    RETURNED = "returned"
    CLOSED = "closed"  # canceled before any deduction: never deduct later


FINAL_FOR_COMMIT = frozenset({OrderState.DEDUCTED, OrderState.RETURNED, OrderState.CLOSED})


# --- commands ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommitOrder:
    order_id: str
    shop_id: str
    lines: tuple[tuple[str, int], ...]
    """(sku, quantity asked), one per SKU, in the order's item order."""

    @property
    def key(self) -> OrderKey:
        return (self.shop_id, self.order_id)


@dataclass(frozen=True)
class CancelOrder:
    order_id: str
    shop_id: str

    @property
    def key(self) -> OrderKey:
        return (self.shop_id, self.order_id)


@dataclass(frozen=True)
class AdjustStock:
    shop_id: str
    sku: str
    delta: int | None = None
    set_to: int | None = None


Command = CommitOrder | CancelOrder | AdjustStock


def command_for_status(event: OrderStatusChanged) -> CommitOrder | CancelOrder | None:
    """What an order.status event asks of the inventory; None when nothing (e.g. an incomplete order)."""
    if event.status in COMMITTING:
        asked: dict[str, int] = {}
        for item in event.items:
            asked[item.sku] = asked.get(item.sku, 0) + item.quantity
        return CommitOrder(event.order_id, event.shop_id, tuple(asked.items()))
    if event.status is OrderStatus.CANCELED:
        return CancelOrder(event.order_id, event.shop_id)
    return None


def command_for_adjustment(event: StockAdjusted) -> AdjustStock:
    return AdjustStock(event.shop_id, event.sku, event.delta, event.set_to)


# --- state and outcome -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """One ledger line: what an order asked and what really moved for one SKU."""

    order_id: str
    kind: DeductionKind
    shop_id: str
    sku: str
    asked: int
    moved: int

    @property
    def shortfall(self) -> bool:
        return self.moved < self.asked

    @property
    def order_key(self) -> OrderKey:
        return (self.shop_id, self.order_id)


@dataclass
class Book:
    """The slice of state a batch needs. `levels` holds only SKUs that exist; a missing key is unknown."""

    levels: dict[StockKey, int] = field(default_factory=dict)
    orders: dict[OrderKey, OrderState] = field(default_factory=dict)
    deducted: dict[OrderKey, dict[str, int]] = field(default_factory=dict)
    """(shop_id, order_id) -> sku -> units moved, for orders in state DEDUCTED (what a cancel gives back)."""


@dataclass
class Outcome:
    levels: dict[StockKey, int] = field(default_factory=dict)
    """Final level of every SKU whose level changed or that was created in this batch."""
    orders: dict[OrderKey, OrderState] = field(default_factory=dict)
    """New state of every order (by shop and id) whose state changed."""
    moves: list[Move] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    """Index of the command -> reason, for commands that cannot be applied (unknown SKU)."""
    applied_adjustments: int = 0

    def deductions(self) -> list[tuple[str, str, DeductionKind, list[Move]]]:
        """(order_id, shop_id, kind, lines), one per order and kind, in the order they happened."""
        grouped: dict[tuple[str, str, DeductionKind], list[Move]] = {}
        for move in self.moves:
            grouped.setdefault((move.shop_id, move.order_id, move.kind), []).append(move)
        return [(order_id, shop_id, kind, lines) for (shop_id, order_id, kind), lines in grouped.items()]


def apply(book: Book, commands: Sequence[Command | None]) -> Outcome:
    """Apply `commands` in order to `book` (mutated) and say what changed. None entries are skipped."""
    out = Outcome()
    before = dict(book.levels)
    for index, command in enumerate(commands):
        if isinstance(command, CommitOrder):
            reason = _commit(book, command, out)
            if reason:
                out.rejected[index] = reason
        elif isinstance(command, CancelOrder):
            _cancel(book, command, out)
        elif isinstance(command, AdjustStock):
            _adjust(book, command)
            out.applied_adjustments += 1
    out.levels = {k: v for k, v in book.levels.items() if before.get(k) != v or k not in before}
    return out


def _commit(book: Book, cmd: CommitOrder, out: Outcome) -> str | None:
    if book.orders.get(cmd.key, OrderState.OPEN) in FINAL_FOR_COMMIT:
        return None  # already deducted, returned or closed: the seed's rule 4
    unknown = [sku for sku, _ in cmd.lines if (cmd.shop_id, sku) not in book.levels]
    if unknown:
        return f"unknown SKU for shop {cmd.shop_id}: {', '.join(unknown)}"
    moved_by_sku: dict[str, int] = {}
    for sku, asked in cmd.lines:
        key = (cmd.shop_id, sku)
        moved = min(asked, book.levels[key])
        book.levels[key] -= moved
        moved_by_sku[sku] = moved
        out.moves.append(Move(cmd.order_id, DeductionKind.DEDUCTED, cmd.shop_id, sku, asked, moved))
    book.orders[cmd.key] = out.orders[cmd.key] = OrderState.DEDUCTED
    book.deducted[cmd.key] = moved_by_sku
    return None


def _cancel(book: Book, cmd: CancelOrder, out: Outcome) -> None:
    state = book.orders.get(cmd.key, OrderState.OPEN)
    if state is OrderState.OPEN:
        book.orders[cmd.key] = out.orders[cmd.key] = OrderState.CLOSED
        return
    if state is not OrderState.DEDUCTED:
        return
    for sku, moved in book.deducted.pop(cmd.key, {}).items():
        key = (cmd.shop_id, sku)
        book.levels[key] = book.levels.get(key, 0) + moved
        out.moves.append(Move(cmd.order_id, DeductionKind.RETURNED, cmd.shop_id, sku, moved, moved))
    book.orders[cmd.key] = out.orders[cmd.key] = OrderState.RETURNED


def _adjust(book: Book, cmd: AdjustStock) -> None:
    key = (cmd.shop_id, cmd.sku)
    if cmd.set_to is not None:
        book.levels[key] = max(0, cmd.set_to)
    else:
        book.levels[key] = max(0, book.levels.get(key, 0) + (cmd.delta or 0))
