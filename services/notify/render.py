"""Turns a mail's context into a safe MIME message: Jinja2 templates (HTML autoescaped) and checked headers.

Customer-supplied text can reach a subject, a display name or the body. Header values have every control
character removed; a recipient must be exactly one address; bodies are escaped in HTML.

Mails are written in the mail's locale (`orderflow/i18n.py`: gettext catalogs, money and dates by CLDR). A mail's
stored context holds amounts as integer minor units with their currency and the payment status as its value; they
are written out here, in the locale, when the mail is rendered. A context stored before that (amounts already
written, a payment label) is shown as it is.
"""

from __future__ import annotations

import re
import secrets
from binascii import b2a_qp
from dataclasses import dataclass
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime, formataddr
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from babel import Locale
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from orderflow import i18n, mailaddr
from orderflow.i18n import N_

TEMPLATES = Path(__file__).parent / "templates"


@cache
def _environment(language: str) -> Environment:
    """One environment per language: Jinja2's i18n extension binds one catalog to an environment."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        auto_reload=False,  # compiled once: templates ship with the code (the check stat()ed both files per mail)
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.i18n"],
    )
    return i18n.install(env, Locale.parse(language))


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")

SUBJECTS = {
    "new_order": N_("{shop}: new order {order_id} ({total}, {payment_status})"),
    "confirmation": N_("{shop}: your order {order_id} is confirmed"),
    "processed": N_("{shop}: your order {order_id} is on its way"),
    "delivered": N_("{shop}: your order {order_id} was delivered"),
    "canceled": N_("{shop}: your order {order_id} was canceled"),
    "shortfall": N_("{shop}: stock shortfall on order {order_id}"),
    "alert": N_("{shop}: order {order_id} needs your attention"),  # one per (order, flag): alerts.py
    "recovery": N_("{shop}: your cart is waiting for you"),
    "message": N_("{shop}: a message about your order {order_id}"),
    "refunded": N_("{shop}: a refund for your order {order_id}"),
}
"""English message ids, translated when the mail is rendered."""

PAYMENT_LABELS = {
    "paid": N_("Paid"),
    "awaiting": N_("Awaiting payment"),
    "incomplete": N_("Not paid"),
    "partially_refunded": N_("Partially refunded"),
    "refunded": N_("Refunded"),
}
"""Payment statuses (contracts.PaymentStatus values) as a customer or merchant reads them."""


class InvalidRecipient(ValueError):
    """The address is not exactly one plain address (a comma list, a display name, CR/LF...): the mail is `failed`."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def header_safe(value: str, limit: int = 200) -> str:
    """A header value with no way to start a new header: control characters become one space."""
    return _CONTROL.sub(" ", value).strip()[:limit]


def one_address(value: str) -> Address:
    """Exactly one addr-spec (orderflow.mailaddr, the parser the contract uses); anything else is refused."""
    try:
        return mailaddr.addr_spec(value)
    except mailaddr.AddressError as exc:
        raise InvalidRecipient(str(exc)) from None


def localized(context: dict[str, Any], locale: Locale) -> dict[str, Any]:
    """The context with its amounts and payment status written for the locale (`total`, `items[].unit_price`...).

    Amounts are `*_cents` with the context's `currency`; a context without a currency (a cart's, a shortfall's,
    or one stored already written out) keeps what it has.
    """
    ctx = dict(context)
    status = ctx.get("payment_status")
    if isinstance(status, str):
        ctx["payment_status"] = i18n.gettext_for(locale).gettext(PAYMENT_LABELS.get(status, status))
    currency = ctx.get("currency")
    if not isinstance(currency, str):
        return ctx

    def money(cents: int) -> str:
        return i18n.format_money(cents, currency, locale)

    if "items" in ctx:
        ctx["items"] = [
            {**item, "unit_price": money(item["unit_price_cents"]),
             "line_total": money(item["unit_price_cents"] * item["quantity"])} if "unit_price_cents" in item else item
            for item in ctx["items"]
        ]
    for name in ("total", "discount", "tax", "refund", "refunded"):
        if f"{name}_cents" in ctx:  # None: the order has none (no tax given); a discount of 0 is not shown
            cents = ctx[f"{name}_cents"]
            ctx[name] = money(cents) if cents is not None and (cents or name != "discount") else ""
    shipping = ctx.get("shipping")
    if isinstance(shipping, dict):
        carrier = f" ({shipping['carrier']})" if shipping.get("carrier") else ""
        ctx["shipping"] = f"{shipping['method']}{carrier}, {money(shipping['cost_cents'])}"
    return ctx


def render(template: str, context: dict[str, Any], shop_name: str, locale: Locale | None = None) -> Rendered:
    """The mail in `locale` (English when None): subject, plain text and HTML."""
    locale = locale or Locale.parse(i18n.DEFAULT_LANGUAGE)
    env = _environment(locale.language if locale.language in i18n.LANGUAGES else i18n.DEFAULT_LANGUAGE)
    ctx = {**localized(context, locale), "shop": header_safe(shop_name), "language": locale.language}
    fields = {k: header_safe(str(v)) for k, v in ctx.items() if isinstance(v, str | int)}
    subject = header_safe(i18n.gettext_for(locale).gettext(SUBJECTS[template]).format_map(fields))
    text = env.get_template(f"{template}.txt").render(ctx)
    html = env.get_template(f"{template}.html").render(ctx)
    return Rendered(subject, text, html)


@dataclass(frozen=True)
class OutgoingMail:
    """A mail ready for SMTP: its one recipient and its bytes (RFC 5322 with CRLF line ends, MIME)."""

    to_addr: str
    headers: tuple[tuple[str, str], ...]  # as written, RFC 2047-encoded where needed
    data: bytes

    def as_bytes(self) -> bytes:
        return self.data

    def header(self, name: str) -> str | None:
        """The first header of that name as written (unfolded), or None."""
        wanted = name.lower()
        return next((v.replace("\r\n ", " ") for k, v in self.headers if k.lower() == wanted), None)


_CRLF = "\r\n"


def _plain(value: str) -> bool:
    """Written as it is: ASCII, and nothing a reader would decode as an RFC 2047 encoded word."""
    return value.isascii() and "=?" not in value


def _encoded(value: str) -> str:
    """An unstructured header value: as it is when plain, else RFC 2047 encoded words; folded at 78 characters.

    A plain value that fits on its line is what `Header.encode` returns for it (checked on 200,000 random values)
    and is returned without it: the encoder was 3 % of notify's CPU samples while it mailed a bench's burst."""
    plain = _plain(value)
    if plain and len("Subject: ") + len(value) <= 76:
        return value
    return Header(value, "us-ascii" if plain else "utf-8", header_name="Subject").encode(linesep=_CRLF)


def _with_name(name: str, addr: str) -> str:
    """`Name <addr>`, the name quoted when it holds specials (RFC 5322) or encoded when it is not ASCII."""
    if not name:
        return addr
    if _plain(name):
        return formataddr((name, addr))
    return f"{Header(name, 'utf-8').encode(linesep=_CRLF)} <{addr}>"


def _part(subtype: str, body: str) -> str:
    """A text part in UTF-8, quoted-printable: 7-bit lines under 77 characters whatever the text, and no line of it
    can hold the boundary (which starts with `=_`, and `=` is always encoded)."""
    encoded = b2a_qp(body.replace("\r\n", "\n").encode("utf-8"), istext=True).decode("ascii")
    return (f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: quoted-printable{_CRLF}'
            f"{_CRLF}{encoded.replace(chr(10), _CRLF)}{_CRLF}")


@lru_cache(maxsize=8)
def _sender(from_addr: str) -> Address:
    """MAIL_FROM, parsed once (a setting; the header parser costs more than the rest of a mail)."""
    try:
        return mailaddr.mailbox(from_addr)
    except mailaddr.AddressError as exc:
        raise ValueError(f"MAIL_FROM: {exc}") from None


def build_message(rendered: Rendered, *, to_addr: str, from_addr: str, from_name: str, message_id: str,
                  reply_to: str | None = None, date: Any = None, unsubscribe_url: str | None = None) -> OutgoingMail:
    """The MIME message (multipart/alternative: plain text, then HTML) with checked headers.

    `unsubscribe_url` (recovery mails): `List-Unsubscribe` and RFC 8058's `List-Unsubscribe-Post:
    List-Unsubscribe=One-Click`, so the mail client's unsubscribe button POSTs to the cart service at once. It is
    written on one line, never folded nor encoded: folded, mail clients do not read it as a link (under 998
    characters: header_safe caps it at 900).

    `from_addr` is MAIL_FROM (`name@domain` or `Name <name@domain>`); `from_name`, the shop's name, is the display
    name, MAIL_FROM's own name only when it is blank.

    Written here rather than by the email package's EmailMessage and generator, which cost 2 ms per mail (1.1 ms to
    build, 0.9 ms to flatten; measured on this machine), the largest part of notify's CPU at 200 mails/s. The
    package still does the parts with rules in them: RFC 2047 words and folding (`email.header.Header`), quoting a
    display name (`email.utils.formataddr`), dates (`format_datetime`); quoted-printable is `binascii.b2a_qp`.
    Every test parses what this writes with the email package.
    """
    sender = _sender(from_addr)
    to = one_address(to_addr).addr_spec
    name = header_safe(from_name, 100) or header_safe(sender.display_name, 100)  # a blank shop name: MAIL_FROM's
    headers = [("From", _with_name(name, sender.addr_spec)),
               ("To", to)]
    if reply_to:
        headers.append(("Reply-To", one_address(reply_to).addr_spec))
    headers += [("Subject", _encoded(header_safe(rendered.subject))), ("Message-ID", header_safe(message_id))]
    if date is not None:
        headers.append(("Date", format_datetime(date)))
    if unsubscribe_url:
        headers += [("List-Unsubscribe", f"<{header_safe(unsubscribe_url, 900)}>"),
                    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    boundary = f"=_{secrets.token_hex(16)}"
    headers += [("MIME-Version", "1.0"), ("Content-Type", f'multipart/alternative;{_CRLF} boundary="{boundary}"')]
    head = "".join(f"{name}: {value}{_CRLF}" for name, value in headers)
    body = (f"{_CRLF}--{boundary}{_CRLF}{_part('plain', rendered.text)}"
            f"--{boundary}{_CRLF}{_part('html', rendered.html)}--{boundary}--{_CRLF}")
    return OutgoingMail(to, tuple(headers), (head + body).encode("ascii"))
