"""The sender's pure rules: what each SMTP failure means for a mail, and when a claimed batch may still be sent."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import aiosmtplib
import pytest

from orderflow.settings import load_settings
from services.notify.repository import ClaimedMail
from services.notify.sender import _Batch, classify, reply_of, tls_context


def refused(*codes: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(code, f"reply {code}", f"r{i}@x.co") for i, code in enumerate(codes)])


@pytest.mark.parametrize(("exc", "cause"), [
    (refused(550), "permanent"),                       # a 5xx naming the recipient
    (refused(451), "retry"),                           # greylisting, mailbox busy
    (refused(421), "server"),                          # the server closes: every mail waits
    (aiosmtplib.SMTPDataError(554, "content refused"), "permanent"),
    (aiosmtplib.SMTPDataError(452, "try later"), "retry"),
    (aiosmtplib.SMTPDataError(421, "closing"), "server"),
    (aiosmtplib.SMTPSenderRefused(553, "sender not allowed", "o@x.co"), "server"),  # MAIL FROM: every mail alike
    (aiosmtplib.SMTPSenderRefused(451, "later", "o@x.co"), "server"),
    (aiosmtplib.SMTPServerDisconnected("gone"), "retry"),
    (aiosmtplib.SMTPReadTimeoutError("slow"), "retry"),
    (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"), "permanent"),
])
def test_each_smtp_failure_has_a_cause(exc: Exception, cause: str) -> None:
    assert classify(exc) == cause


def test_the_reply_is_what_the_server_said() -> None:
    assert reply_of(refused(550)) == "550 reply 550 (RCPT TO r0@x.co)"
    assert reply_of(aiosmtplib.SMTPDataError(554, "5.7.1 spam")) == "554 5.7.1 spam"


def mail(ref: str) -> ClaimedMail:
    return ClaimedMail(ref=ref, kind="k", shop_id="s", audience="customer", template="t", context={},
                       to_addr="a@b.co", subject=None, text=None, html=None, message_id="<m@o>", attempts=1,
                       created_at=datetime.now(UTC), reclaimed=False, token=uuid.uuid4())


def test_a_batch_is_sent_only_while_half_its_lease_is_surely_left() -> None:
    now = time.monotonic()
    batch = _Batch([mail("a"), mail("b")], lease_seconds=30, claimed_at=now)
    assert batch.lease_safe()
    stale = _Batch([mail("a")], lease_seconds=30, claimed_at=now - 16)  # no extension for 16 s of 30
    assert not stale.lease_safe()
    assert stale.renewed(now, {("a", "k")}) == [] and stale.lease_safe()  # an extension came back


def test_a_row_the_extension_did_not_find_is_left_to_its_new_owner() -> None:
    a, b = mail("a"), mail("b")
    batch = _Batch([a, b], lease_seconds=30, claimed_at=time.monotonic())
    batch.finished.add(a.key)
    assert batch.renewed(time.monotonic(), set()) == [b]  # a was finished (sent): not lost
    assert batch.unfinished() == []


def test_opportunistic_tls_without_credentials_encrypts_without_verifying() -> None:
    settings = load_settings("notify", "NOTIFY_HTTP_PORT", 8104, {})
    import ssl

    assert tls_context(settings, verify=False).verify_mode == ssl.CERT_NONE
    verified = tls_context(settings, verify=True)
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
