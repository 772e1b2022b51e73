"""Rendering and header safety: customer text is escaped in HTML and can never add a header."""

from __future__ import annotations

from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import default
from email.utils import parseaddr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notify import render

EVIL = "<script>alert(1)</script>\r\nBcc: victim@evil.test"


def order_context(name: str = "Ada") -> dict:
    return {
        "order_id": "o-1", "customer_name": name, "customer_email": "ada@example.com",
        "items": [{"sku": "MUG-1", "name": "Mug <b>", "quantity": 2, "unit_price": "12.50 EUR",
                   "line_total": "25.00 EUR"}],
        "total": "25.00 EUR", "payment_status": "Paid", "payment_method": "gateway", "payment_provider": "paypal",
        "reason": "",
    }


def parse(msg) -> object:
    return message_from_bytes(msg.as_bytes(), policy=default)


def test_every_template_renders_text_and_html_with_the_shop_name() -> None:
    contexts = {
        "new_order": order_context(), "confirmation": order_context(), "processed": order_context(),
        "delivered": order_context(), "canceled": order_context(),
        "shortfall": {"order_id": "o-1", "short_items": [{"sku": "MUG-1", "asked": 3, "moved": 1, "missing": 2}]},
        "recovery": {"cart_id": "c-1", "customer_name": "Ada", "items": [{"sku": "M", "name": "Mug", "quantity": 1}],
                     "recovery_url": "http://shop.test/cart/c-1"},
        "message": {"order_id": "o-1", "customer_name": "Ada", "text": "Hi"},
        "refunded": {**order_context(), "currency": "EUR", "total_cents": 2500, "refund_cents": 500,
                     "refunded_cents": 500, "refund_id": "r-1"},
        "alert": {"order_id": "o-1", "flag": "refund_due", "detail": "", "customer_name": "Ada",
                  "customer_email": "ada@example.com", "currency": "EUR", "total_cents": 2500, "refund_cents": 2500},
    }
    assert set(contexts) == set(render.SUBJECTS)
    for template, ctx in contexts.items():
        out = render.render(template, ctx, "Ada's Mugs")
        assert out.subject and "\n" not in out.subject
        assert "Ada&#39;s Mugs" in out.html and "Ada's Mugs" in out.text, template


def test_confirmation_shows_payment_status_and_items() -> None:
    out = render.render("confirmation", order_context(), "Mugs")
    assert "Payment status: Paid" in out.text
    assert "Mug &lt;b&gt;" in out.html and "25.00 EUR" in out.html


def test_script_in_a_name_is_escaped_in_html_and_adds_no_header() -> None:
    out = render.render("confirmation", order_context(EVIL), "Mugs\r\nBcc: shop@evil.test")
    assert "<script>" not in out.html and "&lt;script&gt;" in out.html
    msg = render.build_message(out, to_addr="ada@example.com", from_addr="shop@orderflow.test",
                               from_name="Mugs\r\nBcc: from@evil.test", message_id="<abc@orderflow>")
    parsed = parse(msg)
    assert parsed["Bcc"] is None
    assert [k.lower() for k in parsed] == ["from", "to", "subject", "message-id", "mime-version", "content-type"]
    assert str(parsed["To"]) == "ada@example.com"
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["From"])


def test_message_text_from_the_merchant_is_escaped() -> None:
    out = render.render("message", {"order_id": "o", "customer_name": "A", "text": "a <img src=x onerror=y> & b"},
                        "S")
    assert "<img" not in out.html and "&lt;img src=x onerror=y&gt; &amp; b" in out.html
    assert "a <img src=x onerror=y> & b" in out.text


@pytest.mark.parametrize("bad", ["a@b.co, c@d.co", "a@b.co\r\nBcc: c@d.co", "Ada <a@b.co>", "no-at-sign",
                                 "a@b@c.co", "a@b.co;c@d.co", ""])
def test_recipient_must_be_exactly_one_address(bad: str) -> None:
    out = render.render("processed", order_context(), "S")
    with pytest.raises(render.InvalidRecipient):
        render.build_message(out, to_addr=bad, from_addr="s@o.test", from_name="S", message_id="<x@orderflow>")


def test_header_safe_removes_every_line_break() -> None:
    assert render.header_safe("a\r\nBcc: b\u2028c\x00d") == "a Bcc: b c d"


def test_message_is_multipart_alternative_with_both_parts() -> None:
    out = render.render("delivered", order_context(), "Mugs")
    msg = render.build_message(out, to_addr="ada@example.com", from_addr="s@o.test", from_name="Mugs",
                               message_id="<m@orderflow>", reply_to="m@shop.test")
    parsed = parse(msg)
    assert parsed.get_content_type() == "multipart/alternative"
    assert parsed.get_body(("plain",)) is not None and parsed.get_body(("html",)) is not None
    assert str(parsed["Message-ID"]) == "<m@orderflow>" and str(parsed["Reply-To"]) == "m@shop.test"


def _round_trip(subject: str, shop: str, text: str, html: str, unsubscribe: str | None = None):
    msg = render.build_message(render.Rendered(subject, text, html), to_addr="ada@example.com",
                               from_addr="Shop <orders@shop.example>", from_name=shop, message_id="<m@orderflow>",
                               unsubscribe_url=unsubscribe)
    return msg, parse(msg)


def _display_name(msg: render.OutgoingMail) -> str:
    """From's display name as RFC 2047 reads it: the whitespace between two encoded words is not text (the email
    package's address parser keeps it; mail clients do not)."""
    name, _ = parseaddr(msg.header("From"))
    return str(make_header(decode_header(name)))


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400)


@settings(max_examples=200, deadline=None)
@given(subject=_TEXT, shop=_TEXT, text=_TEXT, html=_TEXT)
def test_what_the_email_package_reads_back_is_what_was_written(subject: str, shop: str, text: str,
                                                               html: str) -> None:
    """build_message writes the MIME itself (for speed); the email package must read every part back unchanged,
    whatever the text: non-ASCII, CR/LF inside, lines of any length, things that look like encoded words."""
    msg, parsed = _round_trip(subject, shop, text, html)
    assert not parsed.defects and all(not part.defects for part in parsed.walk())
    assert str(parsed["Subject"]) == render.header_safe(subject)
    assert _display_name(msg) == (render.header_safe(shop, 100) or "Shop")  # blank: MAIL_FROM's name
    assert parsed["From"].addresses[0].addr_spec == "orders@shop.example"
    plain, rich = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain.get_content().replace("\r\n", "\n") == text.replace("\r\n", "\n")
    assert rich.get_content().replace("\r\n", "\n") == html.replace("\r\n", "\n")
    lines = msg.data.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines) and b"\n" not in msg.data.replace(b"\r\n", b"")
    assert msg.data.isascii()


def test_a_long_french_subject_is_folded_into_encoded_words_that_read_back_whole() -> None:
    subject = "Boutique Hélène : votre commande n° 1001 a été expédiée, elle arrivera très bientôt chez vous"
    msg, parsed = _round_trip(subject, "Boutique Hélène", "Bonjour Zoë,\n", "<p>Bonjour Zoë</p>")
    head = msg.data.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if not line.startswith(b"List-Unsubscribe"))
    assert str(parsed["Subject"]) == subject
    assert parsed["From"].addresses[0].display_name == "Boutique Hélène"
    assert msg.header("Message-ID") == "<m@orderflow>" and parsed["To"].addresses[0].addr_spec == "ada@example.com"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120))
def test_a_subject_is_written_as_the_email_package_writes_it(subject: str) -> None:
    """The shortcut for plain subjects that fit on their line writes what `Header.encode` writes."""
    from email.header import Header

    value = render.header_safe(subject)
    charset = "us-ascii" if render._plain(value) else "utf-8"
    expected = Header(value, charset, header_name="Subject").encode(linesep="\r\n")
    assert render._encoded(value) == expected
