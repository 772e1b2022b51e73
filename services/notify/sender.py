"""The SMTP sender: drains the mail outbox apart from the consumers, over one reused connection (a notify worker
runs MAIL_SMTP_CONNECTIONS of them, claiming disjoint rows).

Each row is marked sent right after the server accepted it, one by one, so the window in which a SIGKILL leaves
an accepted message unrecorded is a single round trip to PostgreSQL. Such a row stays 'sending' until its lease
runs out, then is sent again with the same Message-ID (counted in orderflow_mail_resent_total): no SMTP client
can close that window, a deterministic Message-ID lets mail clients fold the copy.

Failures are told apart by cause:
- the server as a whole cannot take mail (no connection, a timeout before the greeting, TLS or AUTH failing, the
  sender address refused, 421): one event for the sender (`orderflow_mail_smtp_unavailable_total`, `/health`
  degraded), the batch is put back untried, and the sender waits a capped backoff (MAIL_RETRY_MAX_SECONDS) before
  it tries again - for as long as it takes;
- a transient answer about one mail (4xx, a connection lost or a timeout during its transaction): that mail is
  retried later with capped backoff, never given up;
- a 5xx naming the recipient or refusing the content, or an address the mailer cannot use: that mail is `failed`
  with the server's reply, for an operator to see and re-queue (`orderflow mail list|retry`).

Fencing: each claim carries a token that every later update matches (`repository`), and a heartbeat extends the
lease of the rows of the batch while the sender works on them - a stalled SMTP server delays a mail, it does not
hand it to a second sender. A mail is only started while the lease is known to have at least half its length left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import aiosmtplib
import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orderflow import mailaddr
from orderflow.settings import Settings
from services.notify import core, repository
from services.notify.render import InvalidRecipient, OutgoingMail, Rendered, build_message, render
from services.notify.repository import ClaimedMail

log = logging.getLogger(__name__)

BATCH = 50
POLL_SECONDS = 1.0
CONNECT_TIMEOUT = 30.0
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
        self.retried = Counter("orderflow_mail_retried_total",
                               "Mails the server answered with a transient failure (4xx, lost connection, timeout), "
                               "to be tried again", ["kind"], registry=r)
        self.failed = Counter("orderflow_mail_failed_total",
                              "Mails refused for good (5xx naming the recipient or the content, unusable address)",
                              ["kind"], registry=r)
        self.resent = Counter("orderflow_mail_resent_total",
                              "Mails sent again after a worker died while sending them (same Message-ID)", ["kind"],
                              registry=r)
        self.unavailable = Counter("orderflow_mail_smtp_unavailable_total",
                                   "Times a sender found the SMTP server unable to take any mail (connect, TLS, AUTH, "
                                   "sender refused, 421); its batch waits untried", registry=r)
        self.degraded = Gauge("orderflow_mail_smtp_degraded",
                              "Senders waiting for the SMTP server to come back", registry=r)
        self.depth = Gauge("orderflow_mail_outbox_depth", "Mails pending or being sent", registry=r)
        self.send_seconds = Histogram("orderflow_mail_send_seconds", "SMTP time to send one mail", registry=r,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.delay_seconds = Histogram("orderflow_mail_delivery_delay_seconds",
                                       "From the event recorded to the mail accepted by the server", registry=r,
                                       buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800))


class ServerUnavailable(Exception):
    """The SMTP server cannot take any mail now: every mail of the batch waits, untried."""


class TlsUnavailable(Exception):
    """TLS is required (SMTP_TLS=required, or credentials to send) and the server offers no STARTTLS."""


Cause = Literal["server", "retry", "permanent"]


def classify(exc: BaseException) -> Cause:
    """What an SMTP failure during one mail's transaction means for that mail.

    server: the server refuses every mail now (421, the sender address refused): wait, retry the batch later.
    permanent: a 5xx about this mail (its recipient, its content), or a message this server cannot carry.
    retry: anything else (4xx, the connection lost or a timeout mid-transaction).
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        if 421 in codes:
            return "server"
        return "permanent" if codes and all(c >= 500 for c in codes) else "retry"
    if isinstance(exc, aiosmtplib.SMTPSenderRefused | aiosmtplib.SMTPHeloError | aiosmtplib.SMTPAuthenticationError):
        return "server"
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code == 421:
            return "server"
        return "permanent" if exc.code >= 500 else "retry"
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return "permanent"
    return "retry"


def reply_of(exc: BaseException) -> str:
    """The server's reply as an operator reads it: `550 5.1.1 <bob@x>: mailbox unavailable`."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return "; ".join(f"{r.code} {r.message} (RCPT TO {r.recipient})" for r in exc.recipients)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def tls_context(settings: Settings, *, verify: bool) -> ssl.SSLContext:
    """A client context: verified against SMTP_CA_FILE (only that CA) or the system's CAs, or - opportunistic
    STARTTLS without credentials - encrypted without verification, which still beats clear text."""
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=settings.smtp_ca_file)


@dataclass
class Outage:
    reason: str
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    failures: int = 0
    next_try: float = 0.0


class _Batch:
    """The rows one claim took, which of them this sender still holds, and how long their lease surely lasts."""

    def __init__(self, mails: Sequence[ClaimedMail], lease_seconds: float, claimed_at: float) -> None:
        self.mails = list(mails)
        self.lease = lease_seconds
        self.held = {m.key for m in mails}
        self.finished: set[tuple[str, str]] = set()
        self.lease_until = claimed_at + lease_seconds

    def unfinished(self) -> list[ClaimedMail]:
        return [m for m in self.mails if m.key in self.held and m.key not in self.finished]

    def renewed(self, asked_at: float, still_held: set[tuple[str, str]]) -> list[ClaimedMail]:
        """A lease extension asked at `asked_at` came back; returns the rows found lost."""
        self.lease_until = asked_at + self.lease
        lost = [m for m in self.unfinished() if m.key not in still_held]
        self.held -= {m.key for m in lost}
        return lost

    def lease_safe(self) -> bool:
        """At least half the lease is surely left: a mail may be started."""
        return time.monotonic() < self.lease_until - self.lease / 2


ACCEPTED_UNRECORDED: set[tuple[str, str]] = set()
"""(ref, kind) of mails the SMTP server accepted whose 'sent' is not recorded yet, shared by this worker's senders."""


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
        self._outage: Outage | None = None
        self._warned_clear = False
        self._envelope_from = mailaddr.mailbox(settings.mail_from).addr_spec
        self.stopping = asyncio.Event()
        """Set by the worker's stop: finish the mail in flight (sent and recorded), give the rest back, return."""

    def wake(self) -> None:
        """Called after a commit that inserted mails or released waiting ones: send now, not at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while not self.stopping.is_set():
            if self._outage is not None and (wait := self._outage.next_try - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # the server is away: new mails do not shorten the backoff
            try:
                claimed = await self.send_due()
                if self._reports_depth and time.monotonic() - self._depth_at >= DEPTH_EVERY_SECONDS:
                    self._depth_at = time.monotonic()
                    self._metrics.depth.set(await repository.depth(await self._pool_factory()))
            except DB_ERRORS as exc:
                log.warning("mail sender: database unavailable (%s); retrying", exc)
                claimed = 0
                await asyncio.sleep(1.0)
            if claimed < BATCH and not self.stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=POLL_SECONDS)
                self._wake.clear()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    async def health(self) -> dict[str, Any]:
        if self._outage is not None:
            return {"smtp": f"degraded: {self._outage.reason}"}
        return {"smtp": self._smtp_state}

    @property
    def outage(self) -> Outage | None:
        return self._outage

    # --- one round -------------------------------------------------------------------------------------------

    async def send_due(self) -> int:
        pool = await self._pool_factory()
        claimed_at = time.monotonic()
        mails = await repository.claim_due(pool, BATCH, self._settings.mail_lease_seconds)
        if not mails:
            if self._outage is not None:
                await self._probe()  # nothing of ours to send (another sender took the mails): is the server back?
            await self._close_if_idle()
            return 0
        batch = _Batch(mails, self._settings.mail_lease_seconds, claimed_at)
        heartbeat = asyncio.create_task(self._keep_leases(pool, batch))
        try:
            await self._send_batch(pool, batch)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            if leftover := batch.unfinished():  # an error or a stop mid-batch: not tried, due again at once
                with contextlib.suppress(*DB_ERRORS, asyncpg.InternalClientError):
                    await repository.release(pool, leftover)
        return len(mails)

    async def _send_batch(self, pool: asyncpg.Pool, batch: _Batch) -> None:
        shops: dict[str, repository.Shop | None] = {}
        for mail in batch.mails:
            if self.stopping.is_set():
                return  # a stop: the mails not started yet are given back (send_due's finally)
            if mail.key not in batch.held:
                continue  # the heartbeat found it claimed by another sender (our lease had run out)
            if not batch.lease_safe():
                log.warning("mail sender: the lease of %d mail(s) could not be extended; giving them back",
                            len(batch.unfinished()))
                return
            if mail.shop_id not in shops:
                shops[mail.shop_id] = await repository.get_shop(pool, mail.shop_id)
            message = await self._prepare(pool, mail, shops[mail.shop_id])
            if message is None:
                batch.finished.add(mail.key)
                continue
            if mail.key in ACCEPTED_UNRECORDED:
                # Accepted by the server through another sender of this worker, which could not record it yet:
                # record it under this claim, never send it again.
                if await repository.mark_sent(pool, mail):
                    ACCEPTED_UNRECORDED.discard(mail.key)
                batch.finished.add(mail.key)
                continue
            if mail.reclaimed:
                self._metrics.resent.labels(core.kind_family(mail.kind)).inc()
                log.warning("mail %s/%s re-sent after an expired lease (same Message-ID)", mail.ref, mail.kind)
            try:
                await self._send(message)
            except ServerUnavailable as exc:
                await self._server_unavailable(pool, batch, str(exc))
                return
            except aiosmtplib.SMTPException as exc:
                cause = classify(exc)
                if cause == "server":
                    await self._server_unavailable(pool, batch, f"the server refuses every mail: {reply_of(exc)}")
                    return
                await self._failed_attempt(pool, mail, reply_of(exc), permanent=cause == "permanent")
                batch.finished.add(mail.key)
                continue
            await self._record_sent(pool, mail)
            batch.finished.add(mail.key)
            self._metrics.sent.labels(core.kind_family(mail.kind)).inc()
            self._metrics.delay_seconds.observe((datetime.now(UTC) - mail.created_at).total_seconds())

    async def _keep_leases(self, pool: asyncpg.Pool, batch: _Batch) -> None:
        """While the batch is worked on (a send may stall far longer than the lease), keep its rows this sender's."""
        every = max(0.1, batch.lease / 3)
        while True:
            await asyncio.sleep(every)
            pending = batch.unfinished()
            if not pending:
                continue
            asked_at = time.monotonic()
            try:
                held = await repository.extend_lease(pool, pending, batch.lease)
            except (*DB_ERRORS, asyncpg.InternalClientError) as exc:
                log.warning("mail sender: extending the lease of %d mail(s) failed (%s)", len(pending), exc)
                continue
            for lost in batch.renewed(asked_at, held):
                log.warning("mail %s/%s: claimed by another sender meanwhile; this one leaves it", lost.ref,
                            lost.kind)

    async def _probe(self) -> None:
        """Connect without a mail, so that a sender in an outage learns the server is back (or counts one more
        failed attempt) even when other senders took every mail meanwhile."""
        try:
            await self._connection()
        except ServerUnavailable as exc:
            self._outage_event(str(exc), 0)

    async def _server_unavailable(self, pool: asyncpg.Pool, batch: _Batch, reason: str) -> None:
        """One event, whatever the size of the batch: the mails go back untried and the sender waits."""
        waiting = batch.unfinished()
        await repository.release(pool, waiting, f"waiting for the SMTP server: {reason}")
        batch.finished.update(m.key for m in waiting)
        self._outage_event(reason, len(waiting))

    def _outage_event(self, reason: str, waiting: int) -> None:
        if self._outage is None:
            self._outage = Outage(reason)
            self._metrics.degraded.inc()
        outage = self._outage
        outage.reason = reason
        outage.failures += 1
        delay = core.backoff_seconds(outage.failures, self._settings.mail_retry_base_seconds,
                                     self._settings.mail_retry_max_seconds)
        outage.next_try = time.monotonic() + delay
        self._metrics.unavailable.inc()
        log.warning("SMTP server unavailable (%s): %d mail(s) wait untried; next try in %.1fs (%d failure(s) since %s)",
                    reason, waiting, delay, outage.failures, outage.since.isoformat(timespec="seconds"))

    def _server_back(self) -> None:
        if self._outage is not None:
            log.warning("SMTP server available again after %d failed attempt(s) since %s", self._outage.failures,
                        self._outage.since.isoformat(timespec="seconds"))
            self._outage = None
            self._metrics.degraded.dec()

    async def _record_sent(self, pool: asyncpg.Pool, mail: ClaimedMail) -> None:
        """The server has accepted the mail: record that however long the database is away. Giving up here would
        leave the row 'sending' and its lease would send the mail again (a duplicate no SIGKILL caused).

        While it is unrecorded its key is in ACCEPTED_UNRECORDED: another sender of this worker that claims the
        row after the lease ran out (the database was away longer than the lease) records it instead of sending
        it again."""
        ACCEPTED_UNRECORDED.add(mail.key)
        if await self._record_sent_until_done(pool, mail):
            ACCEPTED_UNRECORDED.discard(mail.key)
        # else: another sender holds the row now; if it is one of this worker's, it finds the key and records the
        # mail instead of sending it again (the key stays until then; a worker's set only holds such rare rows)

    async def _record_sent_until_done(self, pool: asyncpg.Pool, mail: ClaimedMail) -> bool:
        """True once recorded under this sender's claim; False when another sender claimed the row meanwhile."""
        delay = 0.1
        while mail.key in ACCEPTED_UNRECORDED:
            try:
                if not await repository.mark_sent(pool, mail):
                    log.warning("mail %s/%s accepted by the server while another sender claimed it (the database "
                                "was away longer than the lease): that sender records it; one of another worker "
                                "would send it again (same Message-ID)", mail.ref, mail.kind)
                    return False
                return True
            except (*DB_ERRORS, asyncpg.InternalClientError) as exc:  # the latter: a connection the server cut
                log.warning("mail %s/%s sent, recording it failed (%s); retrying in %.1fs", mail.ref, mail.kind,
                            exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _prepare(self, pool: asyncpg.Pool, mail: ClaimedMail,
                       shop: repository.Shop | None) -> OutgoingMail | None:
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
                locale = core.mail_locale(mail.audience, mail.context.get("locale"), shop.locale if shop else None)
                rendered = render(mail.template, mail.context, recipient.shop_name, locale)
                if not await repository.store_rendering(pool, mail, to_addr, rendered.subject, rendered.text,
                                                        rendered.html):
                    return None  # no longer this sender's
            else:
                rendered = _stored(mail)
            return build_message(rendered, to_addr=to_addr, from_addr=self._settings.mail_from,
                                 from_name=recipient.shop_name, message_id=mail.message_id,
                                 reply_to=recipient.reply_to, date=mail.created_at,
                                 unsubscribe_url=mail.context.get("unsubscribe_url"))
        except (InvalidRecipient, ValueError) as exc:
            await self._failed_attempt(pool, mail, f"cannot build the mail: {exc}", permanent=True)
            return None

    async def _failed_attempt(self, pool: asyncpg.Pool, mail: ClaimedMail, error: str, permanent: bool) -> None:
        kind = core.kind_family(mail.kind)
        if permanent:
            if await repository.mark_failed(pool, mail, error):
                self._metrics.failed.labels(kind).inc()
                log.error("mail %s/%s failed: %s (orderflow mail retry %s %s re-queues it)", mail.ref, mail.kind,
                          error, mail.ref, mail.kind)
            return
        delay = core.backoff_seconds(mail.attempts, self._settings.mail_retry_base_seconds,
                                     self._settings.mail_retry_max_seconds)
        if await repository.mark_retry(pool, mail, delay, error):
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
        implicit = s.smtp_tls == "implicit"
        smtp = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, timeout=s.smtp_timeout_seconds,
                               use_tls=implicit, start_tls=False,
                               tls_context=tls_context(s, verify=True) if implicit else None)
        try:
            await smtp.connect(timeout=min(CONNECT_TIMEOUT, s.smtp_timeout_seconds))
            secured = implicit or await self._starttls(smtp)
            if s.smtp_username and s.smtp_password:
                await smtp.login(s.smtp_username, s.smtp_password)
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TlsUnavailable) as exc:
            smtp.close()
            self._smtp_state = "idle"
            detail = reply_of(exc) if isinstance(exc, aiosmtplib.SMTPResponseException) else str(exc)
            raise ServerUnavailable(f"SMTP server {s.smtp_host}:{s.smtp_port}: {detail}") from exc
        self._smtp = smtp
        self._last_used = time.monotonic()  # a fresh connection is not idle (a probe's stays open for the next mail)
        self._smtp_state = "connected (TLS)" if secured else "connected (no TLS)"
        self._server_back()
        return smtp

    async def _starttls(self, smtp: aiosmtplib.SMTP) -> bool:
        """STARTTLS per SMTP_TLS; True when the session is now encrypted. Credentials never go out in clear unless
        SMTP_TLS=none: with them, `starttls` behaves as `required` (and the certificate is verified)."""
        s = self._settings
        if s.smtp_tls == "none":
            return False
        await smtp.ehlo()
        with_credentials = bool(s.smtp_username)
        if smtp.supports_extension("starttls"):
            verify = s.smtp_tls == "required" or with_credentials or s.smtp_ca_file is not None
            await smtp.starttls(tls_context=tls_context(s, verify=verify))
            return True
        if s.smtp_tls == "required":
            raise TlsUnavailable("the server offers no STARTTLS and SMTP_TLS=required")
        if with_credentials:
            raise TlsUnavailable("the server offers no STARTTLS: SMTP credentials are never sent in clear "
                                 "(SMTP_TLS=none would allow it)")
        if not self._warned_clear:
            self._warned_clear = True
            log.warning("SMTP server %s:%s offers no STARTTLS: mail goes to it unencrypted", s.smtp_host,
                        s.smtp_port)
        return False

    async def _send(self, message: OutgoingMail) -> None:
        smtp = await self._connection()
        started = time.perf_counter()
        try:
            await smtp.sendmail(self._envelope_from, [message.to_addr], message.data)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()  # whatever state the session is in, the next mail starts on a fresh one
            if isinstance(exc, OSError) and not isinstance(exc, aiosmtplib.SMTPException):
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


def _stored(mail: ClaimedMail) -> Rendered:
    return Rendered(mail.subject or "", mail.text or "", mail.html or "")
