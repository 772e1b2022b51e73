"""What the back office is told of a mail (notify core: mail_status_event and its helpers)."""

from datetime import UTC, datetime

import contracts
from services.notify import core


def _row(**overrides):
    row = {"ref": "shop-a/1001", "kind": "confirmation", "audience": "customer", "state": "failed", "attempts": 2,
           "last_error": "550 5.1.1 <ada@example.com>:\r\n no such user", "message_id": "<x@orderflow>",
           "status_changed_at": datetime(2026, 12, 1, 12, 0, tzinfo=UTC)}
    return row | overrides


def test_a_failed_mail_is_published_with_the_servers_reply_on_one_line():
    event = core.mail_status_event(_row())
    assert (event.shop_id, event.subject, event.subject_id) == ("shop-a", "order", "1001")
    assert event.state is contracts.MailState.FAILED
    assert event.reply == "550 5.1.1 <ada@example.com>: no such user"
    assert contracts.decode(contracts.MailStatusChanged, contracts.encode(event)) == event  # honours its own contract


def test_a_waiting_mail_is_retrying_when_it_has_an_error_and_queued_when_not():
    assert core.shown_state("pending", "421 try later") is contracts.MailState.RETRYING
    assert core.shown_state("sending", "connection refused") is contracts.MailState.RETRYING
    assert core.shown_state("pending", None) is contracts.MailState.QUEUED
    assert core.shown_state("sent", None) is contracts.MailState.SENT


def test_recovery_mails_are_about_a_cart_every_other_kind_about_an_order():
    assert core.mail_subject("recovery") == "cart"
    assert core.mail_subject("recovery:1") == "cart"
    assert core.mail_subject("message:m-1") == "order"
    assert core.mail_status_event(_row(ref="shop-a/cart-9", kind="recovery")).subject == "cart"


def test_the_event_id_names_the_mail_and_the_moment_of_the_change():
    first = core.mail_status_event(_row())
    assert core.mail_status_event(_row()).event_id == first.event_id
    later = core.mail_status_event(_row(status_changed_at=datetime(2026, 12, 1, 12, 5, tzinfo=UTC), state="sent"))
    assert later.event_id != first.event_id
    other_shop = core.mail_status_event(_row(ref="shop-b/1001"))
    assert other_shop.event_id != first.event_id
