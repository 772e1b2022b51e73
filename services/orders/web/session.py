"""Back-office sign-in sessions and CSRF tokens, derived from BACKOFFICE_TOKEN with HMAC (pure, no I/O).

The cookie never holds the token: it holds `issued.nonce.scope.signature`, signed with a key derived from the token.
`scope` says who signed in: `operator` (BACKOFFICE_TOKEN) or `merchant-<credential_id>` (a shop's merchant
credential; the pages check on every request that it is still live, so revoking it signs that merchant out at
once). Nothing else is stored server-side, so changing BACKOFFICE_TOKEN signs everyone out. The CSRF token of a session
is another HMAC of its nonce: a form posted from another site cannot know it (and SameSite=Strict keeps the cookie
off cross-site requests in the first place).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600


OPERATOR_SCOPE = "operator"
MERCHANT_SCOPE = "merchant-"


@dataclass(frozen=True)
class Session:
    nonce: str
    csrf: str
    scope: str = OPERATOR_SCOPE

    @property
    def credential_id(self) -> str | None:
        """The merchant credential this session was opened with (None for the operator)."""
        return self.scope.removeprefix(MERCHANT_SCOPE) if self.scope.startswith(MERCHANT_SCOPE) else None


class SessionKeys:
    def __init__(self, backoffice_token: str, lifetime: int = SESSION_SECONDS) -> None:
        self._token = backoffice_token.encode()
        self._key = hmac.new(self._token, b"orderflow back-office session v1", hashlib.sha256).digest()
        self.lifetime = lifetime

    def token_matches(self, given: str) -> bool:
        """Constant-time comparison of a typed-in token with BACKOFFICE_TOKEN."""
        return hmac.compare_digest(given.encode(), self._token)

    def _sign(self, *parts: str) -> str:
        return hmac.new(self._key, ".".join(parts).encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None, scope: str = OPERATOR_SCOPE) -> str:
        """A new cookie value for someone who has just typed the right token (`scope`: who they are)."""
        if "." in scope:
            raise ValueError("a session scope has no dot")
        issued = str(int(time.time() if now is None else now))
        nonce = secrets.token_urlsafe(18)
        return f"{issued}.{nonce}.{scope}.{self._sign('session', issued, nonce, scope)}"

    def open(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie proves, or None (absent, forged, expired, or signed with another token)."""
        if not cookie or cookie.count(".") != 3:
            return None
        issued, nonce, scope, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._sign("session", issued, nonce, scope)):
            return None
        if not issued.isdigit() or (time.time() if now is None else now) - int(issued) > self.lifetime:
            return None
        return Session(nonce=nonce, csrf=self._sign("csrf", nonce), scope=scope)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), session.csrf.encode())  # type: ignore[union-attr]
