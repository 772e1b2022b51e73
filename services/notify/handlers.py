"""notify's stream handlers: plain functions over a unit of work (`orderflow/runtime/unit.py`).

Handlers only decide (core) and INSERT mail rows keyed by (ref, kind), so redelivery and replay insert nothing
new; the senders (background tasks) render and deliver them over SMTP, so a slow mail server never stalls a stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from contracts import (
    CheckoutAbandoned,
    CustomerMessageRequested,
    InventoryDeduction,
    OrderFlagged,
    OrderStatusChanged,
    ShopSettings,
)
from orderflow.runtime.unit import UnitOfWork
from services.notify import alerts, core, repository
from services.notify.core import MailIntent


def _no_wake() -> None:
    return None


@dataclass(frozen=True)
class Context:
    wake_senders: Callable[[], None] = _no_wake
    pool: Callable[[], Awaitable[Any]] | None = None


async def _insert(uow: UnitOfWork, intents: list[MailIntent]) -> None:
    if await repository.insert_mails(uow.conn, intents):
        uow.after_commit(getattr(uow.context, "wake_senders", _no_wake))


async def order_status(uow: UnitOfWork, events: list[OrderStatusChanged]) -> None:
    await _insert(uow, [m for e in events for m in core.mails_for_status(e)])


async def inventory_deductions(uow: UnitOfWork, events: list[InventoryDeduction]) -> None:
    await _insert(uow, [m for e in events for m in core.mails_for_deduction(e)])


async def order_flagged(uow: UnitOfWork, events: list[OrderFlagged]) -> None:
    """One alert mail to the merchant per (order, flag)."""
    await _insert(uow, [m for e in events for m in alerts.mails_for_flag(e)])


async def checkout_abandoned(uow: UnitOfWork, events: list[CheckoutAbandoned]) -> None:
    await _insert(uow, [m for e in events for m in core.mails_for_abandoned(e)])


async def order_message(uow: UnitOfWork, events: list[CustomerMessageRequested]) -> None:
    await _insert(uow, [m for e in events for m in core.mails_for_message(e)])


async def shop_settings(uow: UnitOfWork, events: list[ShopSettings]) -> None:
    """Keep each shop's newest settings; mails that waited for them become due."""
    changed = [e.shop_id for e in sorted(events, key=lambda e: e.occurred_at)
               if await repository.upsert_shop(uow.conn, e)]
    if not changed:
        return
    await repository.release_waiting_for_shop(uow.conn, changed)
    context = uow.context

    async def release_again() -> None:
        # Again once committed: a row a sender held while this transaction ran was not matched above; the
        # sender's own put-back (repository.wait_for_shop) sees these settings once they are committed.
        if context is not None and context.pool is not None:
            await repository.release_waiting_for_shop(await context.pool(), changed)
            context.wake_senders()

    uow.after_commit(release_again)
