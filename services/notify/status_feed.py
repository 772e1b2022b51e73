"""The mail status feed: notify's outbox rows' state changes, published on `mail.status` for the back office.

A service never calls another (DESIGN.md): the orders back office learns what became of each mail from this topic
and keeps its own read model. Senders only flag a changed row (repository `_CHANGED`); this task, one per worker,
turns flagged rows into events through the runtime's transactional outbox, in batches, so the hot send path pays
one column update and never a produce.
"""

from __future__ import annotations

import asyncio

from orderflow.runtime.app import Runtime
from orderflow.runtime.unit import UnitOfWork
from services.notify import core, repository

BATCH = 500
POLL_SECONDS = 1.0
"""How long a change may wait before the feed looks: a read model for people, not for machines."""


async def publish_changes(uow: UnitOfWork, limit: int = BATCH) -> int:
    """Stage one mail.status event per flagged row, clearing the flags in the same transaction."""
    rows = await repository.take_unpublished_states(uow.conn, limit)
    uow.emit(core.mail_status_event(row) for row in rows)
    return len(rows)


async def run_feed(rt: Runtime, poll_seconds: float = POLL_SECONDS) -> None:
    """Publish changes until stopped; a full batch is followed at once by the next."""
    while True:
        # run_unit waits out a database outage (pausing, shown on /health) instead of raising
        if await rt.run_unit(publish_changes, topic="mail.status feed") < BATCH:
            await asyncio.sleep(poll_seconds)
