"""Signed recovery tokens: what a recovery e-mail's link carries so the cart view opens for it, without credentials
and for that one cart only (DESIGN.md, "Cart rules": the recovery link carries a signed token).

A token is `<expires>.<signature>`: `expires` a Unix time, the signature HMAC-SHA256 over shop id, cart id and
`expires`, with a key derived from BACKOFFICE_TOKEN (every cart worker of a deployment shares it; changing the
token invalidates every link already sent). Pure: no I/O, no clock unless given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta

LINK_LIFETIME = timedelta(days=30)


def key_from(backoffice_token: str) -> bytes:
    return hmac.new(backoffice_token.encode(), b"orderflow cart recovery link v1", hashlib.sha256).digest()


def _signature(key: bytes, shop_id: str, cart_id: str, expires: int) -> str:
    mac = hmac.new(key, f"{shop_id}\n{cart_id}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")


def sign(key: bytes, shop_id: str, cart_id: str, expires: datetime) -> str:
    """The token for this shop's cart, valid until `expires`."""
    at = int(expires.timestamp())
    return f"{at}.{_signature(key, shop_id, cart_id, at)}"


def expiry(since: datetime) -> datetime:
    """When a link for a checkout abandoned at `since` stops working (derived, so a re-emission signs the same)."""
    return since + LINK_LIFETIME


def verify(key: bytes, token: str | None, shop_id: str, cart_id: str, now: float) -> bool:
    """Whether `token` was signed for exactly this shop and cart and has not expired."""
    expires, _, signature = (token or "").partition(".")
    if not expires.isdigit() or not signature or int(expires) < now:
        return False
    return hmac.compare_digest(signature, _signature(key, shop_id, cart_id, int(expires)))


# --- unsubscribe links ---------------------------------------------------------------------------------------
# A recovery e-mail's unsubscribe link names the shop and the customer's e-mail; its token is signed like the
# recovery link's, with a key of its own (derived from the recovery key) so neither token opens the other's door.

UNSUBSCRIBE_LIFETIME = timedelta(days=365)


def normalized_email(email: str) -> str:
    """The form an unsubscribed address is recorded, signed and compared in (case does not make another mailbox in
    practice, and a customer may type it either way from one checkout to the next)."""
    return email.strip().lower()


def _unsubscribe_key(key: bytes) -> bytes:
    return hmac.new(key, b"orderflow unsubscribe link v1", hashlib.sha256).digest()


def sign_unsubscribe(key: bytes, shop_id: str, email: str, expires: datetime) -> str:
    """The token of this shop's unsubscribe link for `email`, valid until `expires`."""
    return sign(_unsubscribe_key(key), shop_id, normalized_email(email), expires)


def unsubscribe_expiry(since: datetime) -> datetime:
    return since + UNSUBSCRIBE_LIFETIME


def verify_unsubscribe(key: bytes, token: str | None, shop_id: str, email: str, now: float) -> bool:
    return verify(_unsubscribe_key(key), token, shop_id, normalized_email(email), now)
