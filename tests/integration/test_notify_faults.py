"""notify under faults, on the real broker, database and mail sink: SMTP down for a while, a worker SIGKILLed.

A module of its own so that no other notify worker is alive meanwhile (they share the mail outbox table, and any
live worker would deliver these mails itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest

from contracts import topics as t
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
from tests.integration.test_orders_service import TopicTail
from tests.workers import free_port, make_worker

pytestmark = pytest.mark.slow


@pytest.fixture
async def producer(kafka_bootstrap: str):
    async with StorefrontProducer(kafka_bootstrap) as p:
        yield p


async def mail_rows(database_url: str, shop: str) -> list[dict]:
    conn = await asyncpg.connect(database_url)
    try:
        return [dict(r) for r in await conn.fetch(
            "SELECT ref, kind, state, attempts, last_error, message_id FROM notify.mails WHERE shop_id = $1", shop)]
    finally:
        await conn.close()


def health(worker) -> dict:
    """The detailed report: the SMTP server's address and error are shown with the operator's token only."""
    return httpx.get(f"{worker.url}/health", timeout=5, headers={"Authorization": f"Bearer {worker.token}"}).json()


async def test_smtp_down_longer_than_the_old_give_up_then_every_mail_arrives_once(
        kafka_bootstrap, database_url, producer, tmp_path: Path) -> None:
    """The server is away for 20+ retries (the backoff capped at 2 s): nothing fails, /health says degraded, one
    failed connect is one event (not one per mail); once it is back every mail arrives once."""
    smtp_port = free_port()  # nothing listens there yet
    worker = await notify_worker(kafka_bootstrap, database_url, tmp_path, SMTP_HOST="127.0.0.1",
                                 SMTP_PORT=str(smtp_port), MAIL_RETRY_BASE_MS="200", MAIL_RETRY_MAX_SECONDS="2",
                                 MAIL_SMTP_CONNECTIONS="1")
    shop, merchant = f"shop-{uid()}", f"merchant-{uid()}@example.com"
    customers = [f"cust-{uid()}@example.com" for _ in range(5)]
    late_sink = None
    try:
        await producer.send(shop_settings(shop, merchant))
        for customer in customers:
            await producer.send(new_order(shop, customer))
        await async_wait_for(lambda: metric(worker, "orderflow_mail_smtp_unavailable_total") >= 20, timeout=120,
                             message="20 failed connection attempts while the SMTP server is down", interval=0.5)
        report = health(worker)
        assert report["smtp"].startswith("degraded: ") and "127.0.0.1" in report["smtp"], report
        assert report["ready"] is True  # the worker still consumes and records mails
        assert metric(worker, "orderflow_mail_smtp_degraded") == 1
        # the outage is counted per connection attempt, never per mail, and never ends in 'failed'
        assert metric(worker, "orderflow_mail_failed_total") == 0
        assert metric(worker, "orderflow_mail_retried_total") == 0
        rows = await mail_rows(database_url, shop)
        # waiting untried (a probe may hold them for the moment of a connection attempt), saying why
        assert len(rows) == 10 and {r["state"] for r in rows} <= {"pending", "sending"}, rows
        assert all(r["attempts"] <= 1 and "waiting for the SMTP server" in (r["last_error"] or "") for r in rows)

        late_sink = sink.start(tmp_path / "sink", smtp_port=smtp_port)
        box = SinkReader(late_sink.http_url)
        await mails_to(box, merchant, 5, timeout=30)
        for customer in customers:
            await mails_to(box, customer, 1, timeout=30)
        # barrier: a mail queued after all of those, once delivered, shows nothing else was on its way
        barrier = f"cust-{uid()}@example.com"
        await producer.send(new_order(shop, barrier))
        await mails_to(box, barrier, 1)
        await mails_to(box, merchant, 6)  # the barrier order's own merchant mail: the two go out in either order
        mails = [m for m in box.messages() if m["to"] in {merchant, barrier, *customers}]
        assert len(mails) == 12
        assert len({m["message_id"] for m in mails}) == 12

        async def all_sent() -> list[dict]:  # the sink keeps a mail before its 250; notify records `sent` after
            rows = await mail_rows(database_url, shop)
            return rows if {r["state"] for r in rows} == {"sent"} else []

        await async_wait_for(all_sent, timeout=30, message="every mail row sent")
        assert health(worker)["smtp"].startswith("connected")
        assert metric(worker, "orderflow_mail_smtp_degraded") == 0
    finally:
        worker.kill()
        if late_sink is not None:
            late_sink.stop()


def orderflow_cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "orderflow.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


async def test_a_recipient_refused_with_550_fails_with_the_reply_and_is_retried_once_fixed(
        kafka_bootstrap, database_url, producer, tmp_path: Path) -> None:
    box_handle = sink.start(tmp_path / "sink")
    box = SinkReader(box_handle.http_url)
    shop, merchant = f"shop-{uid()}", f"merchant-{uid()}@example.com"
    bounced, fine = f"bob-{uid()}@example.com", f"ann-{uid()}@example.com"
    httpx.put(f"{box_handle.http_url}/faults", json={"reject_rcpt": [bounced]}, timeout=5).raise_for_status()
    worker = await notify_worker(kafka_bootstrap, database_url, tmp_path, SMTP_HOST="127.0.0.1",
                                 SMTP_PORT=str(box_handle.smtp_port), MAIL_SMTP_CONNECTIONS="1")
    feed = await TopicTail(kafka_bootstrap, t.MAIL_STATUS.name).start()  # what the back office is told
    try:
        await producer.send(shop_settings(shop, merchant))
        order = f"o-{uid()}"
        await producer.send(new_order(shop, bounced, order))
        await producer.send(new_order(shop, fine))
        await mails_to(box, fine, 1)
        await mails_to(box, merchant, 2)
        ref = f"{shop}/{order}"

        async def failed() -> list[dict]:
            return [r for r in await mail_rows(database_url, shop) if r["state"] == "failed"]

        [row] = await async_wait_for(failed, timeout=30, message="the refused mail marked failed")
        assert (row["ref"], row["kind"]) == (ref, "confirmation")
        assert row["last_error"].startswith("550 5.1.1") and bounced in row["last_error"]
        assert metric(worker, "orderflow_mail_failed_total") == 1
        assert box.messages(to=bounced) == []

        def states_of(kind: str) -> list[tuple[str, str | None]]:
            values = [json.loads(r.value) for r in feed.records if r.key == order.encode()]
            return [(v["state"], v.get("reply")) for v in values if v["shop_id"] == shop and v["kind"] == kind]

        # published on mail.status for the back office: failed, with the server's reply (the orders read model of
        # it is tested in test_orders_v11.py)
        await feed.until(lambda _: states_of("confirmation") != [], "the failure published on mail.status")
        [(state, reply)] = states_of("confirmation")
        assert state == "failed" and reply == row["last_error"]
        await feed.until(lambda _: states_of("new_order") == [("sent", None)], "the merchant's mail published")

        # visible over notify's HTTP API (bearer token) ...
        assert httpx.get(f"{worker.url}/mails", params={"shop": shop}, timeout=5).status_code == 401
        with worker.client() as api:
            [shown] = api.get("/mails", params={"shop": shop, "state": "failed"}).json()["mails"]
            assert (shown["ref"], shown["kind"], shown["last_error"]) == (ref, "confirmation", row["last_error"])
            assert api.get("/mails", params={"state": "lost"}).status_code == 400
        # ... and on the command line
        listed = orderflow_cli(database_url, "mail", "list", "--failed", "--shop", shop)
        assert listed.returncode == 0, listed.stderr
        assert ref in listed.stdout and "550 5.1.1" in listed.stdout and "1 mail(s)" in listed.stdout

        httpx.delete(f"{box_handle.http_url}/faults", timeout=5).raise_for_status()  # the mailbox is fixed
        retried = orderflow_cli(database_url, "mail", "retry", ref, "confirmation")
        assert retried.returncode == 0, retried.stderr
        assert f"re-queued {ref} confirmation {core.message_id(ref, 'confirmation')}" in retried.stdout
        [mail] = await mails_to(box, bounced, 1)
        assert mail["message_id"] == core.message_id(ref, "confirmation")
        # re-queued, then sent: the feed ends on "sent" (the queued state may be folded into it when both changes
        # land in one round of the feed)
        await feed.until(lambda _: states_of("confirmation")[-1:] == [("sent", None)], "the re-sent mail published")
        assert states_of("confirmation")[0][0] == "failed"
        assert {r["state"] for r in await mail_rows(database_url, shop)} == {"sent"}
        # a sent mail is never re-queued
        again = orderflow_cli(database_url, "mail", "retry", ref, "confirmation")
        assert again.returncode == 1 and "not re-queued" in again.stderr
        barrier = f"cust-{uid()}@example.com"
        await producer.send(new_order(shop, barrier))
        await mails_to(box, barrier, 1)
        assert len(box.messages(to=bounced)) == 1
    finally:
        await feed.stop()
        worker.kill()
        box_handle.stop()


async def test_a_server_stalling_past_the_lease_inside_data_gets_one_copy(
        kafka_bootstrap, database_url, producer, tmp_path: Path) -> None:
    """The server holds its reply to DATA for 40 s, eight times the 5 s lease, while two senders (two workers) poll:
    the sender in flight keeps extending its lease, the other never takes the mail; one copy, the row `sent`."""
    box_handle = sink.start(tmp_path / "sink")
    box = SinkReader(box_handle.http_url)
    shop, merchant, slow = f"shop-{uid()}", f"merchant-{uid()}@example.com", f"slow-{uid()}@example.com"
    httpx.put(f"{box_handle.http_url}/faults", json={"stall_data_seconds": 40, "stall_rcpt": [slow]},
              timeout=5).raise_for_status()
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(box_handle.smtp_port), "MAIL_SMTP_CONNECTIONS": "1",
           "MAIL_LEASE_SECONDS": "5"}
    first = await notify_worker(kafka_bootstrap, database_url, tmp_path, **env)
    second = make_worker("notify", first.env, tmp_path, 1).start().wait_ready()
    try:
        await producer.send(shop_settings(shop, merchant))
        order = f"o-{uid()}"
        await producer.send(new_order(shop, slow, order))

        def faults() -> dict:
            return httpx.get(f"{box_handle.http_url}/faults", timeout=5).json()

        await async_wait_for(lambda: faults()["in_data"] == 1, timeout=30, message="the mail stalled in DATA")
        [mail] = await mails_to(box, slow, 1, timeout=90)
        assert mail["message_id"] == core.message_id(f"{shop}/{order}", "confirmation")

        async def settled() -> bool:
            rows = {r["kind"]: r for r in await mail_rows(database_url, shop)}
            return rows.get("confirmation", {}).get("state") == "sent" and faults()["in_data"] == 0

        await async_wait_for(settled, timeout=30, message="the row sent and no DATA in progress")
        assert faults()["data_started"].get(slow) == 1  # no second sender ever started this mail
        assert len(box.messages(to=slow)) == 1
        resent = metric(first, "orderflow_mail_resent_total") + metric(second, "orderflow_mail_resent_total")
        assert resent == 0
    finally:
        first.kill()
        second.kill()
        box_handle.stop()


async def test_sigkill_mid_burst_loses_nothing_and_never_changes_a_message_id(
        kafka_bootstrap, database_url, producer, mailsink, tmp_path: Path) -> None:
    # one SMTP connection, so one SMTP window: with N connections (MAIL_SMTP_CONNECTIONS) a kill can catch N mails
    # in theirs, each re-sent once with its Message-ID
    worker = await notify_worker(kafka_bootstrap, database_url, tmp_path, MAIL_LEASE_SECONDS="2",
                                 MAIL_SMTP_CONNECTIONS="1", **mailsink.env)
    shop, merchant = f"shop-{uid()}", f"merchant-{uid()}@example.com"
    customer = f"cust-{uid()}@example.com"
    orders = [f"o-{uid()}" for _ in range(150)]
    expected = {core.message_id(f"{shop}/{o}", k) for o in orders for k in ("new_order", "confirmation")}

    async def every_one(address: str, kind: str) -> list[dict]:
        # by Message-ID, not a count: the one copy the SMTP window allows would make 150 mails with one missing
        async def arrived() -> list[dict] | None:
            found = mailsink.messages(to=address)
            wanted = {core.message_id(f"{shop}/{o}", kind) for o in orders}
            return found if wanted <= {m["message_id"] for m in found} else None

        return await async_wait_for(arrived, timeout=60, message=f"every {kind} mail to {address}", interval=0.1)

    try:
        await producer.send(shop_settings(shop, merchant))
        deliveries = [await producer.send_soon(new_order(shop, customer, order)) for order in orders]
        for delivery in deliveries:
            await delivery
        await mails_to(mailsink, merchant, 5)
        worker.kill()  # SIGKILL, in the middle of the burst
        sent_before_kill = len(mailsink.messages(to=merchant))
        worker.start().wait_ready()
        merchant_mails = await every_one(merchant, "new_order")
        customer_mails = await every_one(customer, "confirmation")
    finally:
        worker.kill()
    received = [m["message_id"] for m in merchant_mails + customer_mails]
    assert set(received) == expected  # none lost, no mail with a different Message-ID for one (ref, kind)
    # a copy can only come from the one SMTP window (accepted, then killed before recording): at most one mail
    assert len(received) - len(expected) <= 1, f"{Counter(received).most_common(3)} (before kill: {sent_before_kill})"
