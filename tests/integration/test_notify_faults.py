"""notify under faults, on the real broker, database and mail sink: SMTP down for a while, a worker SIGKILLed.

A module of its own so that no other notify worker is alive meanwhile (they share the mail outbox table, and any
live worker would deliver these mails itself).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from contracts.producer import StorefrontProducer
from orderflow.infra import mailsink as sink
from services.notify import core
from tests.helpers import async_wait_for
from tests.integration.test_notify_mail import (
    SinkReader,
    mails_to,
    metric,
    new_order,
    notify_worker,
    shop_settings,
    uid,
)
from tests.workers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
async def producer(kafka_bootstrap: str):
    async with StorefrontProducer(kafka_bootstrap) as p:
        yield p


async def test_smtp_down_for_a_while_then_every_mail_arrives_once(kafka_bootstrap, database_url, producer,
                                                                  tmp_path: Path) -> None:
    smtp_port = free_port()  # nothing listens there yet
    worker = await notify_worker(kafka_bootstrap, database_url, tmp_path, SMTP_HOST="127.0.0.1",
                                 SMTP_PORT=str(smtp_port), MAIL_RETRY_BASE_MS="200")
    shop, merchant = f"shop-{uid()}", f"merchant-{uid()}@example.com"
    customers = [f"cust-{uid()}@example.com" for _ in range(5)]
    late_sink = None
    try:
        await producer.send(shop_settings(shop, merchant))
        for customer in customers:
            await producer.send(new_order(shop, customer))
        await async_wait_for(lambda: metric(worker, "orderflow_mail_retried_total") >= 2, timeout=30,
                             message="failed attempts while the SMTP server is down")
        assert metric(worker, "orderflow_mail_failed_total") == 0

        late_sink = sink.start(tmp_path / "sink", smtp_port=smtp_port)
        box = SinkReader(late_sink.http_url)
        await mails_to(box, merchant, 5, timeout=30)
        for customer in customers:
            await mails_to(box, customer, 1, timeout=30)
        # barrier: a mail queued after all of those, once delivered, shows nothing else was on its way
        barrier = f"cust-{uid()}@example.com"
        await producer.send(new_order(shop, barrier))
        await mails_to(box, barrier, 1)
        mails = [m for m in box.messages() if m["to"] in {merchant, barrier, *customers}]
        assert len(mails) == 12
        assert len({m["message_id"] for m in mails}) == 12
    finally:
        worker.kill()
        if late_sink is not None:
            late_sink.stop()


async def test_sigkill_mid_burst_loses_nothing_and_never_changes_a_message_id(
        kafka_bootstrap, database_url, producer, mailsink, tmp_path: Path) -> None:
    # one SMTP connection, so one SMTP window: with N connections (MAIL_SMTP_CONNECTIONS) a kill can catch N mails
    # in theirs, each re-sent once with its Message-ID
    worker = await notify_worker(kafka_bootstrap, database_url, tmp_path, MAIL_LEASE_SECONDS="2",
                                 MAIL_SMTP_CONNECTIONS="1", **mailsink.env)
    shop, merchant = f"shop-{uid()}", f"merchant-{uid()}@example.com"
    customer = f"cust-{uid()}@example.com"
    orders = [f"o-{uid()}" for _ in range(150)]
    try:
        await producer.send(shop_settings(shop, merchant))
        deliveries = [await producer.send_soon(new_order(shop, customer, order)) for order in orders]
        for delivery in deliveries:
            await delivery
        await mails_to(mailsink, merchant, 5)
        worker.kill()  # SIGKILL, in the middle of the burst
        sent_before_kill = len(mailsink.messages(to=merchant))
        worker.start().wait_ready()
        merchant_mails = await mails_to(mailsink, merchant, len(orders), timeout=60)
        customer_mails = await mails_to(mailsink, customer, len(orders), timeout=60)
    finally:
        worker.kill()
    expected = {core.message_id(f"{shop}/{o}", k) for o in orders for k in ("new_order", "confirmation")}
    received = [m["message_id"] for m in merchant_mails + customer_mails]
    assert set(received) == expected  # none lost, no mail with a different Message-ID for one (ref, kind)
    # a copy can only come from the one SMTP window (accepted, then killed before recording): at most one mail
    assert len(received) - len(expected) <= 1, f"{Counter(received).most_common(3)} (before kill: {sent_before_kill})"
