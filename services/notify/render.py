"""Turns a mail's context into a safe MIME message: Jinja2 templates (HTML autoescaped) and checked headers.

Customer-supplied text can reach a subject, a display name or the body. Header values have every control
character removed; a recipient must be exactly one address; bodies are escaped in HTML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from orderflow import mailaddr

TEMPLATES = Path(__file__).parent / "templates"

_env = Environment(
    loader=FileSystemLoader(str(TEMPLATES)),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]+")

SUBJECTS = {
    "new_order": "{shop}: new order {order_id} ({total}, {payment_status})",
    "confirmation": "{shop}: your order {order_id} is confirmed",
    "processed": "{shop}: your order {order_id} is on its way",
    "delivered": "{shop}: your order {order_id} was delivered",
    "canceled": "{shop}: your order {order_id} was canceled",
    "shortfall": "{shop}: stock shortfall on order {order_id}",
    "recovery": "{shop}: your cart is waiting for you",
    "message": "{shop}: a message about your order {order_id}",
}


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


def render(template: str, context: dict[str, Any], shop_name: str) -> Rendered:
    ctx = {**context, "shop": header_safe(shop_name)}
    fields = {k: header_safe(str(v)) for k, v in ctx.items() if isinstance(v, str | int)}
    subject = header_safe(SUBJECTS[template].format_map(fields))
    text = _env.get_template(f"{template}.txt").render(ctx)
    html = _env.get_template(f"{template}.html").render(ctx)
    return Rendered(subject, text, html)


def build_message(rendered: Rendered, *, to_addr: str, from_addr: str, from_name: str, message_id: str,
                  reply_to: str | None = None, date: Any = None) -> EmailMessage:
    """The MIME message (multipart/alternative: plain text, then HTML) with checked headers.

    `from_addr` is MAIL_FROM (`name@domain` or `Name <name@domain>`); `from_name`, the shop's name, is the display
    name, MAIL_FROM's own name only when it is empty.
    """
    msg = EmailMessage(policy=SMTP)
    try:
        sender = mailaddr.mailbox(from_addr)
    except mailaddr.AddressError as exc:
        raise ValueError(f"MAIL_FROM: {exc}") from None
    msg["From"] = Address(display_name=header_safe(from_name or sender.display_name, 100),
                          username=sender.username, domain=sender.domain)
    msg["To"] = one_address(to_addr)
    if reply_to:
        msg["Reply-To"] = one_address(reply_to)
    msg["Subject"] = header_safe(rendered.subject)
    msg["Message-ID"] = header_safe(message_id)
    if date is not None:
        msg["Date"] = format_datetime(date)
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    return msg
