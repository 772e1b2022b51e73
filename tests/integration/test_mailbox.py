"""One mailbox interface over Mailpit's API and the sink's: the same mail reads back as the same record from both.

The demo and tests that read mail through orderflow.infra.mailbox then work unchanged against the local sink,
Mailpit on this machine, and the Mailpit of docker-compose.yml or of `orderflow containers up`.
"""

from __future__ import annotations

import uuid
from email.message import EmailMessage

import aiosmtplib
import httpx

from orderflow.infra.mailbox import MailpitMailbox, SinkMailbox, open_mailbox


def a_mail(tag: str, to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Chez Ada <orders@shop.example>"
    msg["To"] = f"Ann Lee <{to}>"
    msg["Subject"] = f"Order {tag} confirmed"
    msg["Message-ID"] = f"<{tag}@orderflow.test>"
    msg.set_content(f"Thanks!\nhttp://shop.example/orders/{tag}\n")
    msg.add_alternative(f"<p>Thanks! <a href='http://shop.example/orders/{tag}'>{tag}</a></p>", subtype="html")
    return msg


async def test_mailpit_and_the_sink_give_the_same_records(mailsink, mailpit_server) -> None:
    tag = uuid.uuid4().hex[:10]
    servers = {
        "sink": (mailsink.smtp_host, mailsink.smtp_port, mailsink.http_url),
        "mailpit": (mailpit_server.smtp_host, mailpit_server.smtp_port, mailpit_server.http_url),
    }
    records = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for name, (host, port, url) in servers.items():
            for who in ("ann", "bob"):
                await aiosmtplib.send(
                    a_mail(f"{tag}-{who}", f"{who}+{tag}@example.com"), hostname=host, port=port, start_tls=False
                )
            mailbox = await open_mailbox(url, http)
            assert isinstance(mailbox, MailpitMailbox if name == "mailpit" else SinkMailbox)
            both = await mailbox.messages(tag)
            assert [m["subject"] for m in both] == [f"Order {tag}-ann confirmed", f"Order {tag}-bob confirmed"]
            records[name] = await mailbox.messages(f"ann+{tag}@")  # part of an address, as the demo asks
    fields = ("to", "from", "subject", "message_id", "rcpt_to", "text")
    sink_record, mailpit_record = records["sink"], records["mailpit"]
    assert len(sink_record) == len(mailpit_record) == 1
    assert {f: mailpit_record[0][f] for f in fields} == {f: sink_record[0][f] for f in fields}
    assert f"http://shop.example/orders/{tag}-ann" in mailpit_record[0]["html"]


async def test_no_mail_is_an_empty_list(mailpit_server) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        mailbox = await open_mailbox(mailpit_server.http_url, http)
        assert await mailbox.messages(f"nobody-{uuid.uuid4().hex}") == []
