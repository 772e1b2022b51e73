"""The notify sender against real SMTP servers (the project's mail sink in its TLS/AUTH modes) and the real
PostgreSQL, in process: STARTTLS with a certificate trusted through SMTP_CA_FILE, implicit TLS, credentials that
never go out in clear, and a sender noticing the end of an outage.

The certificate is self-signed and made here with the `openssl` command (Debian's openssl package).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

import contracts as c
from orderflow.infra import mailsink as sink
from orderflow.settings import load_settings
from services.notify import repository
from services.notify.core import MailIntent
from services.notify.sender import MailMetrics, MailSender
from tests.integration.test_notify_outbox import pool  # noqa: F401 - the fixture: a schema of its own
from tests.workers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test certificate (apt-get install openssl)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return cert, key


def start_sink(path: Path, **tls: object) -> sink.MailSinkHandle:
    return sink.start(path, tls=sink.TlsOptions(**tls))  # type: ignore[arg-type]


def messages(handle: sink.MailSinkHandle, to: str) -> list[dict]:
    return httpx.get(f"{handle.http_url}/messages", params={"to": to}, timeout=5).json()


async def one_mail(pool: asyncpg.Pool) -> str:  # noqa: F811
    """A customer confirmation of a shop whose settings are known; returns its recipient."""
    shop, to = f"shop-{uuid.uuid4().hex[:8]}", f"cust-{uuid.uuid4().hex[:8]}@example.com"
    context = {"order_id": "o-1", "customer_name": "Ada", "customer_email": to, "items": [], "total": "1.00 EUR",
               "payment_status": "Paid", "payment_method": "manual", "payment_provider": "cheque", "reason": ""}
    async with pool.acquire() as conn:
        await repository.upsert_shop(conn, c.ShopSettings(event_id=c.new_event_id(), occurred_at=c.now(),
                                                          shop_id=shop, name="Chez Ada",
                                                          merchant_email="ada@example.com"))
        await repository.insert_mails(conn, [MailIntent(f"{shop}/o-1", "confirmation", shop, "customer",
                                                        "confirmation", to, context)])
    return to


def sender_for(pool: asyncpg.Pool, handle: sink.MailSinkHandle, **env: str) -> MailSender:  # noqa: F811
    settings = load_settings("notify", "NOTIFY_HTTP_PORT", 0, {
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(handle.smtp_port), "SMTP_TIMEOUT_SECONDS": "10", **env})

    async def pool_factory() -> asyncpg.Pool:
        return pool

    return MailSender(pool_factory, settings, MailMetrics(CollectorRegistry()))


async def test_starttls_with_a_private_ca_then_auth(pool, certificate, tmp_path: Path) -> None:  # noqa: F811
    cert, key = certificate
    handle = start_sink(tmp_path, cert=cert, key=key, auth=("mailer", "s3cret"))
    try:
        to = await one_mail(pool)
        sender = sender_for(pool, handle, SMTP_CA_FILE=str(cert), SMTP_USERNAME="mailer", SMTP_PASSWORD="s3cret")
        assert await sender.send_due() == 1
        [mail] = messages(handle, to)
        assert mail["tls"] is True  # the session was encrypted (STARTTLS, default SMTP_TLS=starttls)
        assert (mail["auth_user"], mail["auth_tls"]) == ("mailer", True)  # and AUTH came after it
        assert (await sender.health())["smtp"] == "connected (TLS)"
        [row] = await repository.list_mails(pool, state="sent")
        assert row["to_addr"] == to
    finally:
        handle.stop()


async def test_implicit_tls(pool, certificate, tmp_path: Path) -> None:  # noqa: F811
    cert, key = certificate
    handle = start_sink(tmp_path, cert=cert, key=key, implicit=True, auth=("mailer", "s3cret"))
    try:
        to = await one_mail(pool)
        sender = sender_for(pool, handle, SMTP_TLS="implicit", SMTP_CA_FILE=str(cert), SMTP_USERNAME="mailer",
                            SMTP_PASSWORD="s3cret")
        assert await sender.send_due() == 1
        [mail] = messages(handle, to)
        assert (mail["tls"], mail["auth_user"], mail["auth_tls"]) == (True, "mailer", True)
    finally:
        handle.stop()


async def test_opportunistic_starttls_encrypts_even_an_untrusted_certificate(pool, certificate,  # noqa: F811
                                                                               tmp_path: Path) -> None:
    cert, key = certificate
    handle = start_sink(tmp_path, cert=cert, key=key)
    try:
        to = await one_mail(pool)
        sender = sender_for(pool, handle)  # no CA file, no credentials: encrypt, without verifying
        assert await sender.send_due() == 1
        [mail] = messages(handle, to)
        assert mail["tls"] is True and mail["auth_user"] is None
    finally:
        handle.stop()


async def test_credentials_are_never_sent_to_a_server_without_starttls(pool, tmp_path: Path) -> None:  # noqa: F811
    handle = start_sink(tmp_path, auth=("mailer", "s3cret"))  # offers AUTH in clear, no STARTTLS
    try:
        to = await one_mail(pool)
        sender = sender_for(pool, handle, SMTP_USERNAME="mailer", SMTP_PASSWORD="s3cret")
        assert await sender.send_due() == 1
        assert messages(handle, to) == []
        outage = sender.outage
        assert outage is not None and "never sent in clear" in outage.reason and outage.failures == 1
        assert (await sender.health())["smtp"].startswith("degraded: ")
        [row] = await repository.list_mails(pool)
        # the mail waits, untried (the attempt is not counted), saying why
        assert (row["state"], row["attempts"]) == ("pending", 0)
        assert "never sent in clear" in row["last_error"]

        # SMTP_TLS=required refuses such a server as well; SMTP_TLS=none, chosen explicitly, sends in clear
        required = sender_for(pool, handle, SMTP_TLS="required")
        assert await required.send_due() == 1 and "SMTP_TLS=required" in required.outage.reason
        clear = sender_for(pool, handle, SMTP_TLS="none", SMTP_USERNAME="mailer", SMTP_PASSWORD="s3cret")
        assert await clear.send_due() == 1
        [mail] = messages(handle, to)
        assert (mail["tls"], mail["auth_user"], mail["auth_tls"]) == (False, "mailer", False)
    finally:
        handle.stop()


async def test_a_sender_in_an_outage_notices_the_server_is_back_without_a_mail_of_its_own(
        pool, tmp_path: Path) -> None:  # noqa: F811
    port = free_port()  # nothing listens there yet
    to = await one_mail(pool)
    away = sink.MailSinkHandle(port, free_port(), tmp_path / "mail.jsonl", tmp_path / "sink.log")
    sender = sender_for(pool, away)
    assert await sender.send_due() == 1  # the connect fails: one event, the mail put back untried
    assert sender.outage is not None and sender.outage.failures == 1
    assert await sender.send_due() == 1 and sender.outage.failures == 2  # tried again: one more event
    handle = sink.start(tmp_path, smtp_port=port)
    try:
        other = sender_for(pool, handle)  # another sender delivers the mail meanwhile
        assert await other.send_due() == 1 and len(messages(handle, to)) == 1
        assert await sender.send_due() == 0  # nothing left to claim: it probes the server instead
        assert sender.outage is None and (await sender.health())["smtp"].startswith("connected")
    finally:
        handle.stop()
