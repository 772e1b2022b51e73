"""Per-shop credentials: who may call the back office (merchant credentials) and read carts (storefront keys).

Shops are tenants (DESIGN.md): the operator creates credentials for a shop (`orderflow shop credentials create
SHOP`), each reaching that one shop. Two kinds:
- **merchant** (`ofm_…`): the back-office API and pages of its own shop; secret, like a password.
- **storefront** (`ofs_…`): publishable, for the shop's storefront code; it only reads the shop's carts
  (`GET /carts/{cart_id}` on the cart service), never the back office.
`BACKOFFICE_TOKEN` stays the operator's credential for every shop.

A credential is `<prefix>_<credential_id>_<secret>`. The table (`auth.credentials`, migrations in
`orderflow/auth/migrations/`, applied by `orderflow migrate` and by every worker at start) keeps the id in clear and
the secret as `hashlib.scrypt` (N=2^14, r=8, p=1, its own 16-byte salt): shown once at creation, never stored.
Checking a credential reads its row on every request (so a revoked one is refused at once, by every worker) and
runs scrypt only the first time a worker sees that exact credential (then it remembers a SHA-256 of it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import asyncpg

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "auth"

Kind = Literal["merchant", "storefront"]
PREFIX: dict[str, str] = {"merchant": "ofm", "storefront": "ofs"}
_KIND_OF = {v: k for k, v in PREFIX.items()}
_TOKEN = re.compile(r"^(ofm|ofs)_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


@dataclass(frozen=True)
class Principal:
    """Who a request is: the operator (every shop), or a shop's merchant or storefront."""

    kind: Literal["operator", "merchant", "storefront"]
    shop_id: str | None = None
    credential_id: str | None = None

    @property
    def operator(self) -> bool:
        return self.kind == "operator"


OPERATOR = Principal("operator")


@dataclass(frozen=True)
class Credential:
    credential_id: str
    shop_id: str
    kind: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Parsed:
    kind: Kind
    credential_id: str
    secret: str


def new_token(kind: Kind) -> tuple[str, str, str]:
    """(credential_id, secret, token) for a new credential of `kind`."""
    credential_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return credential_id, secret, f"{PREFIX[kind]}_{credential_id}_{secret}"


def parse(token: str | None) -> Parsed | None:
    match = _TOKEN.match(token or "")
    if match is None:
        return None
    return Parsed(_KIND_OF[match[1]], match[2], match[3])  # type: ignore[arg-type]


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024,
                          dklen=32)


def secret_matches(secret: str, salt: bytes, stored: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret, salt), stored)


# --- the operator's commands (orderflow shop credentials ...) ------------------------------------------------


def _credential(row: asyncpg.Record) -> Credential:
    return Credential(row["credential_id"], row["shop_id"], row["kind"], row["label"], row["created_at"],
                      row["revoked_at"])


async def create(conn: asyncpg.Connection, shop_id: str, kind: Kind, label: str | None = None
                 ) -> tuple[str, Credential]:
    """A new credential for the shop: (the token, shown once; what is stored)."""
    credential_id, secret, token = new_token(kind)
    salt = secrets.token_bytes(16)
    digest = await asyncio.to_thread(hash_secret, secret, salt)
    row = await conn.fetchrow(
        "INSERT INTO auth.credentials (credential_id, shop_id, kind, label, salt, hash) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING *", credential_id, shop_id, kind, label, salt, digest)
    return token, _credential(row)


async def list_for(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str) -> list[Credential]:
    rows = await conn.fetch("SELECT * FROM auth.credentials WHERE shop_id = $1 ORDER BY created_at, credential_id",
                            shop_id)
    return [_credential(r) for r in rows]


async def revoke(conn: asyncpg.Connection, shop_id: str, credential_id: str) -> bool:
    """Revoke one of the shop's credentials; False when the shop has no such (unrevoked) credential."""
    status = await conn.execute(
        "UPDATE auth.credentials SET revoked_at = now() "
        "WHERE shop_id = $1 AND credential_id = $2 AND revoked_at IS NULL", shop_id, credential_id)
    return status.endswith(" 1")


# --- checking a request's credential -------------------------------------------------------------------------


class Verifier:
    """Resolves a bearer token to a Principal (or None): the operator's token, or a shop's live credential."""

    def __init__(self, pool: Callable[[], Awaitable[asyncpg.Pool]], operator_token: str, cache_size: int = 4096
                 ) -> None:
        self._pool = pool
        self._operator = operator_token.encode()
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size

    def is_operator(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), self._operator)  # type: ignore[union-attr]

    async def principal(self, token: str | None, kinds: Iterable[Kind]) -> Principal | None:
        """The principal `token` proves, if it is the operator's or a live credential of one of `kinds`."""
        if self.is_operator(token):
            return OPERATOR
        parsed = parse(token)
        if parsed is None or parsed.kind not in set(kinds):
            return None
        pool = await self._pool()
        row = await pool.fetchrow("SELECT shop_id, kind, salt, hash, revoked_at FROM auth.credentials "
                                  "WHERE credential_id = $1", parsed.credential_id)
        if row is None or row["revoked_at"] is not None or row["kind"] != parsed.kind:
            return None
        fingerprint = hashlib.sha256(token.encode()).digest()  # type: ignore[union-attr]
        if self._verified.get(parsed.credential_id) != fingerprint:
            ok = await asyncio.to_thread(secret_matches, parsed.secret, bytes(row["salt"]), bytes(row["hash"]))
            if not ok:
                return None
            self._verified[parsed.credential_id] = fingerprint
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        self._verified.move_to_end(parsed.credential_id)
        return Principal(parsed.kind, row["shop_id"], parsed.credential_id)

    async def by_id(self, credential_id: str, kind: Kind) -> Principal | None:
        """The principal of a credential a signed session names, if it is still live (not revoked)."""
        pool = await self._pool()
        row = await pool.fetchrow("SELECT shop_id FROM auth.credentials WHERE credential_id = $1 AND kind = $2 "
                                  "AND revoked_at IS NULL", credential_id, kind)
        return Principal(kind, row["shop_id"], credential_id) if row else None


class Throttle:
    """At most `limit` tries per `per` seconds per address (in this worker): sign-in and failed bearer tokens."""

    def __init__(self, limit: int = 10, per: float = 60.0, max_addresses: int = 10_000) -> None:
        self.limit, self.per, self.max_addresses = limit, per, max_addresses
        self._tries: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str, now: float | None = None) -> float:
        """Seconds until `address` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        tries = self._tries.get(address)
        if not tries:
            return 0.0
        while tries and tries[0] <= now - self.per:
            tries.popleft()
        return 0.0 if len(tries) < self.limit else tries[0] + self.per - now

    def record(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._tries.setdefault(address, deque()).append(now)
        self._tries.move_to_end(address)
        while len(self._tries) > self.max_addresses:
            self._tries.popitem(last=False)
