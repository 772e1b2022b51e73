"""notify: e-mails to merchants and customers, once per (order or cart, kind), never lost.

Consumers only decide (core) and INSERT mail rows, in one transaction with the processed-event keys; the
sender (a background task) renders and delivers them over SMTP, so a slow mail server never stalls a stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from contracts import Event, TopicSpec
from contracts import topics as t
from orderflow.runtime.app import Incoming, Runtime
from orderflow.runtime.db import first_times
from orderflow.services import ServiceSpec
from orderflow.settings import Settings
from services.notify import core, repository
from services.notify.core import MailIntent
from services.notify.sender import MailMetrics, MailSender


def build(settings: Settings) -> Runtime:
    rt = Runtime(settings)
    metrics = MailMetrics(rt.metrics.registry)
    # Several senders, each on its own SMTP connection, claim disjoint rows (SKIP LOCKED, leases) exactly as senders
    # of several workers do: one connection waits on each SMTP round trip, and a remote server's add up.
    senders = [MailSender(rt.pool, settings, metrics, reports_depth=i == 0) for i in range(settings.mail_connections)]
    for one in senders:
        rt.background(one.run)

    @rt.health_check
    async def smtp_health() -> dict[str, Any]:
        states = sorted({(await one.health())["smtp"] for one in senders})
        return {"smtp": ", ".join(states)}

    def wake_senders() -> None:
        for one in senders:
            one.wake()

    async def new_events(conn: Any, spec: TopicSpec, batch: Sequence[Incoming[Any]]) -> list[Event]:
        fresh = await first_times(conn, [i.event.event_id for i in batch], spec.name)
        return [i.event for i in batch if i.event.event_id in fresh]

    def mails_from(spec: TopicSpec, decide: Callable[[Any], list[MailIntent]]):  # noqa: ANN202 - a handler
        async def handler(batch: list[Incoming[Any]]) -> None:
            pool = await rt.pool()
            async with pool.acquire() as conn, conn.transaction():
                events = await new_events(conn, spec, batch)
                inserted = await repository.insert_mails(conn, [m for e in events for m in decide(e)])
            if inserted:
                wake_senders()

        handler.__name__ = f"mails_from_{spec.name.replace('.', '_')}"
        return handler

    rt.consume(t.ORDER_STATUS, batch=200, within=0.05)(mails_from(t.ORDER_STATUS, core.mails_for_status))
    rt.consume(t.INVENTORY_DEDUCTIONS, batch=200, within=0.05)(
        mails_from(t.INVENTORY_DEDUCTIONS, core.mails_for_deduction))
    rt.consume(t.CHECKOUT_ABANDONED, batch=200, within=0.05)(
        mails_from(t.CHECKOUT_ABANDONED, core.mails_for_abandoned))
    rt.consume(t.ORDER_MESSAGE, batch=200, within=0.05)(mails_from(t.ORDER_MESSAGE, core.mails_for_message))

    @rt.consume(t.SHOP_SETTINGS, batch=200, within=0.05)
    async def shop_settings(batch: list[Incoming[Any]]) -> None:
        pool = await rt.pool()
        async with pool.acquire() as conn, conn.transaction():
            events = sorted(await new_events(conn, t.SHOP_SETTINGS, batch), key=lambda e: e.occurred_at)
            changed = [e.shop_id for e in events if await repository.upsert_shop(conn, e)]
            await repository.release_waiting_for_shop(conn, changed)
        if changed:
            # Again once committed: a row a sender held while this transaction ran was not matched above; the
            # sender's own put-back (repository.wait_for_shop) sees these settings once they are committed.
            await repository.release_waiting_for_shop(pool, changed)
            wake_senders()

    return rt


SERVICE = ServiceSpec("notify", "NOTIFY_HTTP_PORT", 8104, build,
                      "e-mails to merchants and customers, once per (order or cart, kind)")
