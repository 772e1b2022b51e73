"""The one e-mail address parser: the contract, the settings and the mail renderer all ask it.

Built on the standard library's RFC 5322 parser (`email.headerregistry`), narrowed to what the mailer can really
send to: exactly one address, a dot-atom local part in ASCII (no quoted strings, comments, whitespace or control
characters), a dot-atom domain (an internationalised one is sent in its IDNA form), at most 64 + 1 + 253 chars.
So an address the contract accepts is one the renderer takes and an SMTP client can put in `RCPT TO`.

    addr_spec("ada@example.com")                   -> Address(username='ada', domain='example.com')
    mailbox("Chez Ada <orders@shop.example>")      -> Address(display_name='Chez Ada', ...)
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.policy import default as _default_policy

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
MAX_LENGTH = 254
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_PLAIN = re.compile(rf"({_DOT_ATOM})@({_DOT_ATOM})")
"""The common case (ASCII dot-atom @ dot-atom), which the full parser accepts unchanged: checked without it, since
the stdlib parser costs ~30 µs an address and the contract checks one per order event."""


class AddressError(ValueError):
    """Not one address the mailer can send to; the message says why, in one line."""


def _domain(domain: str, value: str, require_dot: bool) -> str:
    if domain.startswith("["):
        raise AddressError(f"{value!r}: an address literal as domain is not accepted")
    if require_dot and "." not in domain:
        raise AddressError(f"{value!r}: the domain has no dot (name@example.com)")
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise AddressError(f"{value!r}: the domain is not a valid internationalised domain name") from None


def addr_spec(value: str, *, require_dot: bool = False) -> Address:
    """Exactly one plain address (`name@domain`, no display name): the canonical Address, or AddressError.

    `require_dot`: the domain must have a dot (the contract asks it of shop and customer addresses).
    """
    if not isinstance(value, str) or not value:
        raise AddressError("an e-mail address is required")
    if _CONTROL.search(value):
        raise AddressError(f"{value!r}: control characters (CR, LF, tab...) are not allowed in an address")
    if len(value) > MAX_LENGTH:
        raise AddressError(f"an address is at most {MAX_LENGTH} characters")
    if plain := _PLAIN.fullmatch(value):
        username, domain = plain.groups()
        if len(username) > 64:
            raise AddressError(f"{value!r}: the part before @ is longer than 64 characters")
        return Address(username=username, domain=_domain(domain, value, require_dot))
    try:
        parsed = Address(addr_spec=value)
    except Exception as exc:  # noqa: BLE001 - the stdlib parser raises ValueError, IndexError, parse errors...
        raise AddressError(f"{value!r} is not one e-mail address (name@domain): {exc}") from None
    if parsed.addr_spec != value or not parsed.username or not parsed.domain:
        # comments, whitespace, a quoted local part: valid RFC 5322, but not a plain address
        raise AddressError(f"{value!r} is not one plain e-mail address (name@domain, no spaces or quotes)")
    if parsed.addr_spec.startswith('"'):
        raise AddressError(f"{value!r}: a quoted local part is not accepted")
    if len(parsed.username) > 64:
        raise AddressError(f"{value!r}: the part before @ is longer than 64 characters")
    domain = _domain(parsed.domain, value, require_dot)
    return Address(username=parsed.username, domain=domain)


def mailbox(value: str) -> Address:
    """One address, with or without a display name (`Shop <orders@shop.example>` or `orders@shop.example`)."""
    if not isinstance(value, str) or not value.strip():
        raise AddressError("an e-mail address is required")
    if _CONTROL.search(value):
        raise AddressError(f"{value!r}: control characters (CR, LF, tab...) are not allowed in an address")
    try:
        header = _default_policy.header_factory("From", value)
        groups, defects = header.groups, header.defects
    except Exception as exc:  # noqa: BLE001 - as above
        raise AddressError(f"{value!r} is not one e-mail address: {exc}") from None
    if defects:
        raise AddressError(f"{value!r} is not one e-mail address: {defects[0]}")
    if len(groups) != 1 or groups[0].display_name is not None or len(groups[0].addresses) != 1:
        raise AddressError(f"{value!r} must be exactly one address (Name <name@domain> or name@domain)")
    found = groups[0].addresses[0]
    plain = addr_spec(found.addr_spec)
    return Address(display_name=found.display_name, username=plain.username, domain=plain.domain)
