"""notify: e-mails to merchants and customers, once per (order or cart, kind), never lost.

Handlers (`handlers.py`) only decide (core) and INSERT mail rows keyed by (ref, kind); the senders (background
tasks, `sender.py`) render and deliver them over SMTP, so a slow mail server never stalls a stream.
"""

from __future__ import annotations

from typing import Any

from contracts import topics as t
from orderflow.runtime.app import Runtime
from orderflow.services import ServiceSpec
from orderflow.settings import Settings
from services.notify import api, handlers, status_feed
from services.notify.sender import MailMetrics, MailSender


def build(settings: Settings) -> Runtime:
    rt = Runtime(settings)
    metrics = MailMetrics(rt.metrics.registry)
    # Several senders, each on its own SMTP connection, claim disjoint rows (SKIP LOCKED, leases) exactly as senders
    # of several workers do: one connection waits on each SMTP round trip, and a remote server's add up.
    senders = [MailSender(rt.pool, settings, metrics, reports_depth=i == 0) for i in range(settings.mail_connections)]
    for one in senders:
        rt.background(one.run, drain=one.stop)  # a stop lets the mail in flight be sent and recorded

    async def mail_status_feed() -> None:  # mail.status: what the back office shows of each mail
        await status_feed.run_feed(rt)

    rt.background(mail_status_feed)

    @rt.health_check
    async def smtp_health() -> dict[str, Any]:
        states = sorted({(await one.health())["smtp"] for one in senders})
        return {"smtp": ", ".join(states)}

    def wake_senders() -> None:
        for one in senders:
            one.wake()

    api.register(rt, wake_senders)  # GET /mails, POST /mails/retry
    rt.context = handlers.Context(wake_senders=wake_senders, pool=rt.pool)
    rt.consume(t.ORDER_STATUS, handlers.order_status, batch=200)
    rt.consume(t.INVENTORY_DEDUCTIONS, handlers.inventory_deductions, batch=200)
    rt.consume(t.ORDER_FLAGGED, handlers.order_flagged, batch=200)  # one alert per (order, flag)
    rt.consume(t.CHECKOUT_ABANDONED, handlers.checkout_abandoned, batch=200)
    rt.consume(t.ORDER_MESSAGE, handlers.order_message, batch=200)
    rt.consume(t.SHOP_SETTINGS, handlers.shop_settings, batch=200)
    return rt


SERVICE = ServiceSpec("notify", "NOTIFY_HTTP_PORT", 8104, build,
                      "e-mails to merchants and customers, once per (order or cart, kind)")
