"""The SMTP sender: drains the mail outbox apart from the consumers, over one reused connection (a notify worker
runs MAIL_SMTP_CONNECTIONS of them, claiming disjoint rows).

Each row is marked sent right after the server accepted it, one by one, so the window in which a SIGKILL leaves
an accepted message unrecorded is a single round trip to PostgreSQL. Such a row stays 'sending' until its lease
runs out, then is sent again with the same Message-ID (counted in orderflow_mail_resent_total): no SMTP client
can close that window, a deterministic Message-ID lets mail clients fold the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orderflow.settings import Settings
from services.notify import core, repository
from services.notify.render import InvalidRecipient, Rendered, build_message, render
from services.notify.repository import ClaimedMail

log = logging.getLogger(__name__)

BATCH = 50
POLL_SECONDS = 1.0
SMTP_TIMEOUT = 10.0
DEPTH_EVERY_SECONDS = 5.0
"""The outbox-depth gauge counts every unsent row: a count per round would cost O(backlog) per 50 mails."""
IDLE_CHECK_SECONDS = 15.0
"""A connection idle longer than this is checked with NOOP before use (servers drop idle clients)."""

DB_ERRORS = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
             asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError, TimeoutError)


class MailMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.sent = Counter("orderflow_mail_sent_total", "Mails accepted by the SMTP server, by kind", ["kind"],
                            registry=r)
        self.retried = Counter("orderflow_mail_retried_total", "Send attempts that failed and will be retried",
                               ["kind"], registry=r)
        self.failed = Counter("orderflow_mail_failed_total", "Mails given up on (last try, or refused)", ["kind"],
                              registry=r)
        self.resent = Counter("orderflow_mail_resent_total",
                              "Mails sent again after a worker died while sending them (same Message-ID)", ["kind"],
                              registry=r)
        self.depth = Gauge("orderflow_mail_outbox_depth", "Mails pending or being sent", registry=r)
        self.send_seconds = Histogram("orderflow_mail_send_seconds", "SMTP time to send one mail", registry=r,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.delay_seconds = Histogram("orderflow_mail_delivery_delay_seconds",
                                       "From the event recorded to the mail accepted by the server", registry=r,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))


class _Unreachable(Exception):
    """Connecting to the SMTP server failed: every mail of the batch waits."""


class MailSender:
    def __init__(self, pool: Callable[[], Awaitable[asyncpg.Pool]], settings: Settings, metrics: MailMetrics,
                 *, reports_depth: bool = True) -> None:
        self._pool_factory = pool
        self._reports_depth = reports_depth
        self._depth_at = 0.0
        self._settings = settings
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._smtp: aiosmtplib.SMTP | None = None
        self._last_used = 0.0
        self._smtp_state = "idle"

    def wake(self) -> None:
        """Called after a commit that inserted mails or released waiting ones: send now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                claimed = await self.send_due()
                if self._reports_depth and time.monotonic() - self._depth_at >= DEPTH_EVERY_SECONDS:
                    self._depth_at = time.monotonic()
                    self._metrics.depth.set(await repository.depth(await self._pool_factory()))
            except DB_ERRORS as exc:
                log.warning("mail sender: database unavailable (%s); retrying", exc)
                claimed = 0
                await asyncio.sleep(1.0)
            if claimed < BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
                self._wake.clear()

    async def health(self) -> dict[str, Any]:
        return {"smtp": self._smtp_state}

    # --- one round -------------------------------------------------------------------------------------------

    async def send_due(self) -> int:
        pool = await self._pool_factory()
        mails = await repository.claim_due(pool, BATCH, self._settings.mail_lease_seconds)
        if not mails:
            await self._close_if_idle()
            return 0
        started = time.monotonic()
        shops: dict[str, repository.Shop | None] = {}
        for i, mail in enumerate(mails):
            if time.monotonic() - started > self._settings.mail_lease_seconds / 2:
                await repository.release(pool, mails[i:])  # keep well inside the lease: never two senders
                break
            if mail.shop_id not in shops:
                shops[mail.shop_id] = await repository.get_shop(pool, mail.shop_id)
            message = await self._prepare(pool, mail, shops[mail.shop_id])
            if message is None:
                continue
            if mail.reclaimed:
                self._metrics.resent.labels(core.kind_family(mail.kind)).inc()
                log.warning("mail %s/%s re-sent after an expired lease (same Message-ID)", mail.ref, mail.kind)
            try:
                await self._send(message)
            except _Unreachable as exc:
                for waiting in mails[i:]:
                    await self._failed_attempt(pool, waiting, str(exc), permanent=False)
                break
            except aiosmtplib.SMTPException as exc:
                permanent = _is_permanent(exc)
                await self._failed_attempt(pool, mail, f"{type(exc).__name__}: {exc}", permanent)
                continue
            await self._record_sent(pool, mail)
            self._metrics.sent.labels(core.kind_family(mail.kind)).inc()
            self._metrics.delay_seconds.observe((datetime.now(UTC) - mail.created_at).total_seconds())
        return len(mails)

    async def _record_sent(self, pool: asyncpg.Pool, mail: ClaimedMail) -> None:
        """The server has accepted the mail: record that however long the database is away. Giving up here would
        leave the row 'sending' and its lease would send the mail again (a duplicate no SIGKILL caused)."""
        delay = 0.1
        while True:
            try:
                await repository.mark_sent(pool, mail)
                return
            except (*DB_ERRORS, asyncpg.InternalClientError) as exc:  # the latter: a connection the server cut
                log.warning("mail %s/%s sent, recording it failed (%s); retrying in %.1fs", mail.ref, mail.kind,
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _prepare(self, pool: asyncpg.Pool, mail: ClaimedMail,
                       shop: repository.Shop | None) -> EmailMessage | None:
        """Render on the first attempt (stored, so a re-send is the same mail); None when it must wait or failed."""
        waited = (datetime.now(UTC) - mail.created_at).total_seconds()
        try:
            recipient = core.resolve_recipient(
                mail.audience, mail.to_addr, shop.name if shop else None, shop.merchant_email if shop else None,
                mail.shop_id, waited,
            )
            if recipient is None:
                await repository.wait_for_shop(pool, mail, core.wait_for_shop_seconds(mail.audience, waited),
                                               "waiting for the shop's settings (shop.settings)")
                return None
            to_addr = mail.to_addr if mail.html is not None and mail.to_addr else recipient.to_addr
            if mail.html is None or mail.subject is None or mail.text is None:
                rendered = render(mail.template, mail.context, recipient.shop_name)
                await repository.store_rendering(pool, mail, to_addr, rendered.subject, rendered.text, rendered.html)
            else:
                rendered = _stored(mail)
            return build_message(rendered, to_addr=to_addr, from_addr=self._settings.mail_from,
                                 from_name=recipient.shop_name, message_id=mail.message_id,
                                 reply_to=recipient.reply_to, date=mail.created_at)
        except (InvalidRecipient, ValueError) as exc:
            await self._failed_attempt(pool, mail, f"cannot build the mail: {exc}", permanent=True)
            return None

    async def _failed_attempt(self, pool: asyncpg.Pool, mail: ClaimedMail, error: str, permanent: bool) -> None:
        kind = core.kind_family(mail.kind)
        if core.after_failure(mail.attempts, self._settings.mail_max_attempts, permanent) == "failed":
            await repository.mark_failed(pool, mail, error)
            self._metrics.failed.labels(kind).inc()
            log.error("mail %s/%s failed after %d attempt(s): %s", mail.ref, mail.kind, mail.attempts, error)
        else:
            delay = core.backoff_seconds(mail.attempts, self._settings.mail_retry_base_seconds)
            await repository.mark_retry(pool, mail, delay, error)
            self._metrics.retried.labels(kind).inc()
            log.warning("mail %s/%s attempt %d failed (%s); next in %.1fs", mail.ref, mail.kind, mail.attempts,
                        error, delay)

    # --- SMTP ------------------------------------------------------------------------------------------------

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            if time.monotonic() - self._last_used < IDLE_CHECK_SECONDS:
                return self._smtp
            try:
                await self._smtp.noop()
                return self._smtp
            except (aiosmtplib.SMTPException, OSError):
                self._drop()
        s = self._settings
        smtp = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, timeout=SMTP_TIMEOUT,
                               start_tls=s.smtp_starttls, username=s.smtp_username, password=s.smtp_password)
        try:
            await smtp.connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._smtp_state = f"error: {exc}"
            raise _Unreachable(f"SMTP server {s.smtp_host}:{s.smtp_port} unreachable: {exc}") from exc
        self._smtp = smtp
        self._smtp_state = "connected"
        return smtp

    async def _send(self, message: EmailMessage) -> None:
        smtp = await self._connection()
        started = time.perf_counter()
        try:
            await smtp.send_message(message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()  # whatever state the session is in, the next mail starts on a fresh one
            if isinstance(exc, OSError):
                raise aiosmtplib.SMTPServerDisconnected(str(exc)) from exc
            raise
        finally:
            self._last_used = time.monotonic()
        self._metrics.send_seconds.observe(time.perf_counter() - started)

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None
        self._smtp_state = "idle"

    async def _close_if_idle(self) -> None:
        if self._smtp is not None and time.monotonic() - self._last_used > 60:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await self._smtp.quit()
            self._drop()


def _is_permanent(exc: aiosmtplib.SMTPException) -> bool:
    """5xx replies are final (bad address, refused content); 4xx and broken connections are worth a retry."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(r.code >= 500 for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code >= 500
    return False


def _stored(mail: ClaimedMail) -> Rendered:
    return Rendered(mail.subject or "", mail.text or "", mail.html or "")
