"""Recovery mails: one per reminder, each with an unsubscribe link and RFC 8058's one-click headers (issue 16)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from contracts import CheckoutAbandoned
from services.notify.core import mails_for_abandoned
from services.notify.render import Rendered, build_message, render

UNSUBSCRIBE = "https://cart.example/unsubscribe?shop_id=s1&email=ada%40example.com&token=1.abc"


def abandoned(reminder: int, unsubscribe_url: str | None = UNSUBSCRIBE) -> CheckoutAbandoned:
    return CheckoutAbandoned(
        event_id=uuid.uuid4(), occurred_at=datetime(2024, 5, 1, tzinfo=UTC), shop_id="s1", cart_id="c1",
        customer={"email": "ada@example.com", "name": "Ada"}, items=[{"sku": "A", "quantity": 1, "name": "Mug"}],
        started_at=datetime(2024, 5, 1, tzinfo=UTC), recovery_url="https://shop.example/cart/c1?shop_id=s1&token=1.x",
        reminder=reminder, unsubscribe_url=unsubscribe_url)


def test_each_reminder_is_its_own_mail_and_the_first_keeps_its_kind() -> None:
    kinds = [m.kind for r in (0, 1, 2) for m in mails_for_abandoned(abandoned(r))]
    assert kinds == ["recovery", "recovery:1", "recovery:2"]
    assert {m.ref for r in (0, 1) for m in mails_for_abandoned(abandoned(r))} == {"s1/c1"}


def test_recovery_mail_shows_the_unsubscribe_link_and_carries_one_click_headers() -> None:
    (mail,) = mails_for_abandoned(abandoned(1))
    rendered = render(mail.template, mail.context, "Shop")
    assert UNSUBSCRIBE in rendered.text
    assert UNSUBSCRIBE.replace("&", "&amp;") in rendered.html
    msg = build_message(rendered, to_addr="ada@example.com", from_addr="shop@example.com", from_name="Shop",
                        message_id="<x@orderflow>", unsubscribe_url=mail.context["unsubscribe_url"])
    assert msg.header("List-Unsubscribe") == f"<{UNSUBSCRIBE}>"
    assert msg.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert f"List-Unsubscribe: <{UNSUBSCRIBE}>\r\n".encode() in msg.data  # on one line: mail clients read a link


def test_a_mail_without_a_link_has_no_unsubscribe_header_and_an_old_context_still_renders() -> None:
    msg = build_message(Rendered("s", "t", "<p>h</p>"), to_addr="ada@example.com", from_addr="shop@example.com",
                        from_name="Shop", message_id="<x@orderflow>")
    assert msg.header("List-Unsubscribe") is None and msg.header("List-Unsubscribe-Post") is None
    (mail,) = mails_for_abandoned(abandoned(0, None))
    old = {k: v for k, v in mail.context.items() if k != "unsubscribe_url"}  # stored before reminders existed
    assert "Unsubscribe" not in render("recovery", old, "Shop").text
