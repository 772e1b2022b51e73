"""The expiry sweep: unpaid gateway orders (incomplete) past their shop's `expire_unpaid_after_seconds` become
canceled, reason `expired`, changed by the system (DESIGN.md, "Order and payment rules").

Every orders worker runs one sweep (a runtime background task). Each round is one unit of work: it claims the due
orders with `FOR UPDATE SKIP LOCKED` (`repository.claim_expired`), lets the core decide again on each claimed row
(`core.expire`), writes the cancel and stages its order.status event in the outbox in that same transaction. So an
order is expired once whatever the number of workers: the second sweep skips the rows the first holds and, once the
first commits, no longer finds them incomplete; a worker killed mid-round rolls back, and the next round (its own
after a restart, or the other worker's) does it. No stock moves (an incomplete order took none: inventory closes it)
and no mail goes out (notify mails no cancel of an order that was never committed).

After a replay or rebuild the sweep waits until every input topic caught up: an order whose payment the replay has
not reached yet would otherwise be expired.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from contracts import now
from services.orders import core
from services.orders import repository as repo
from services.orders.batch import OrderBatch

if TYPE_CHECKING:
    from orderflow.runtime.app import Runtime
    from orderflow.runtime.unit import UnitOfWork
    from services.orders.handlers import OrdersMetrics

log = logging.getLogger(__name__)

CLAIM_LIMIT = 500
"""Orders one round expires at most; a longer backlog is taken by the next rounds at once."""


async def expire_due(uow: UnitOfWork) -> list[repo.OrderKey]:
    """One round: claim the due orders, cancel each (reason `expired`), stage their order.status events."""
    at = now()
    claimed = await repo.claim_expired(uow.conn, at, CLAIM_LIMIT)
    if not claimed:
        return []
    batch = OrderBatch([o.key for o, _ in claimed], {o.key: o for o, _ in claimed})
    decisions: list[core.Decision] = []
    expired: list[repo.OrderKey] = []
    for order, expire_after in claimed:
        decision = core.expire(order.state, order.placed_at, at, expire_after)
        batch.apply(order, decision)
        decisions.append(decision)
        if decision.changes:
            expired.append(order.key)
    await batch.flush(uow.conn)
    metrics: OrdersMetrics | None = getattr(uow.context, "metrics", None)
    if metrics is not None:
        uow.after_commit(lambda: metrics.count(decisions))
    return expired


def register(rt: Runtime, every_seconds: float) -> None:
    """Run the sweep in this worker every `every_seconds` (EXPIRE_SCAN_MS)."""

    @rt.background
    async def expiry_sweep() -> None:
        while True:
            await rt.wait_caught_up(None, "the expiry sweep")
            expired = await rt.run_unit(expire_due, topic="expiry-sweep")
            if expired:
                log.info("expired unpaid orders: %s", ", ".join(f"{s}/{o}" for s, o in expired))
            if len(expired) < CLAIM_LIMIT:  # a full round: more may be due, go on at once
                await asyncio.sleep(every_seconds)
