"""The local mail sink accepts what an SMTP client sends and lists it as JSON, and keeps it over a restart."""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from helpers import wait_for

from orderflow.infra import mailsink as sink

pytestmark = pytest.mark.timeout(60)


def _mail(to: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Shop <shop@example.com>"
    msg["To"] = f"Ada <{to}>"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@orderflow.test>"
    msg.set_content("Thanks for your order.\nIt is on its way.")
    msg.add_alternative("<p>Thanks for your <b>order</b>.</p>", subtype="html")
    return msg


async def test_sent_mail_is_listed(mailsink) -> None:
    to = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    sent = _mail(to, "Your order ORD-1 — confirmed")
    await aiosmtplib.send(sent, hostname=mailsink.smtp_host, port=mailsink.smtp_port)

    [msg] = wait_for(lambda: mailsink.messages(to=to), timeout=10, message=f"a message to {to}")
    assert msg["subject"] == "Your order ORD-1 — confirmed"
    assert msg["rcpt_to"] == [to]
    assert msg["mail_from"] == "shop@example.com"
    assert to in msg["to"]
    assert msg["from"] == "Shop <shop@example.com>"
    assert msg["message_id"] == sent["Message-ID"]
    assert msg["text"] == "Thanks for your order.\nIt is on its way.\n"
    assert msg["html"] == "<p>Thanks for your <b>order</b>.</p>\n"
    assert msg["headers"]["Subject"] == ["Your order ORD-1 — confirmed"]
    assert msg["id"] and msg["received_at"]


async def test_clear_and_restart_keep_the_store(tmp_path: Path) -> None:
    handle = sink.start(tmp_path)
    try:
        base = handle.http_url
        await aiosmtplib.send(_mail("first@example.com", "one"), hostname=handle.smtp_host, port=handle.smtp_port)
        assert [m["subject"] for m in httpx.get(f"{base}/messages").json()] == ["one"]

        handle.restart()
        assert [m["subject"] for m in httpx.get(f"{base}/messages").json()] == ["one"], "lost over a restart"

        assert httpx.delete(f"{base}/messages").status_code == 200
        assert httpx.get(f"{base}/messages").json() == []
        handle.restart()
        assert httpx.get(f"{base}/messages").json() == [], "a cleared mailbox came back after a restart"
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        handle.stop()
    assert not handle.alive()
