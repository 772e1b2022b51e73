"""`orderflow shop credentials create|list|revoke SHOP`: the operator manages a shop's credentials.

    orderflow shop credentials create shop-1                      # a merchant credential (back office), shown once
    orderflow shop credentials create shop-1 --kind storefront    # a storefront key (GET /carts), shown once
    orderflow shop credentials list shop-1
    orderflow shop credentials revoke shop-1 3f9c0a1b2c3d4e5f     # refused at once by every worker

Stored in the shared `auth` schema (orderflow/auth/credentials.py) as scrypt hashes: a lost credential cannot be
shown again, only revoked and replaced. The schema is created by `orderflow migrate` (and by any worker's start).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

import asyncpg
from pydantic import TypeAdapter, ValidationError

from contracts.base import Identifier
from orderflow.auth import credentials
from orderflow.runtime.db import migrate_auth

_SHOP = TypeAdapter(Identifier)


class ShopOpsError(Exception):
    """An operator-facing problem in one line."""


async def _connect(database_url: str) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ShopOpsError(f"cannot reach the database: {exc}") from None
    await migrate_auth(conn)  # idempotent: the schema exists before the first worker ever started
    return conn


def _shop(value: str) -> str:
    try:
        return _SHOP.validate_python(value)
    except ValidationError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a shop id (1-128 characters, no slash or space)") \
            from None


async def create(database_url: str, shop_id: str, kind: credentials.Kind, label: str | None
                 ) -> tuple[str, credentials.Credential]:
    conn = await _connect(database_url)
    try:
        return await credentials.create(conn, shop_id, kind, label)
    finally:
        await conn.close()


async def list_for(database_url: str, shop_id: str) -> list[credentials.Credential]:
    conn = await _connect(database_url)
    try:
        return await credentials.list_for(conn, shop_id)
    finally:
        await conn.close()


async def revoke(database_url: str, shop_id: str, credential_id: str) -> bool:
    conn = await _connect(database_url)
    try:
        return await credentials.revoke(conn, shop_id, credential_id)
    finally:
        await conn.close()


def cmd_create(args: argparse.Namespace, database_url: str) -> int:
    try:
        token, made = asyncio.run(create(database_url, args.shop, args.kind, args.label))
    except ShopOpsError as exc:
        print(f"orderflow shop credentials create: error: {exc}", file=sys.stderr)
        return 1
    what = ("merchant credential: the back office (API and pages) of this shop only" if made.kind == "merchant"
            else "storefront key (publishable): GET /carts/{cart_id} of this shop's carts")
    print(f"created {made.credential_id} for shop {made.shop_id}, {what}")
    print(token)
    print("shown once: store it now (only a hash is kept); revoke it with "
          f"`orderflow shop credentials revoke {made.shop_id} {made.credential_id}`", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace, database_url: str) -> int:
    try:
        found = asyncio.run(list_for(database_url, args.shop))
    except ShopOpsError as exc:
        print(f"orderflow shop credentials list: error: {exc}", file=sys.stderr)
        return 1
    for c in found:
        state = f"revoked {c.revoked_at.isoformat(timespec='seconds')}" if c.revoked_at else "active"
        print(f"{c.credential_id}  {c.kind:<10} {state:<32} created {c.created_at.isoformat(timespec='seconds')}"
              + (f"  {c.label}" if c.label else ""))
    print(f"{len(found)} credential(s) for shop {args.shop}")
    return 0


def cmd_revoke(args: argparse.Namespace, database_url: str) -> int:
    try:
        done = asyncio.run(revoke(database_url, args.shop, args.credential_id))
    except ShopOpsError as exc:
        print(f"orderflow shop credentials revoke: error: {exc}", file=sys.stderr)
        return 1
    if not done:
        print(f"orderflow shop credentials revoke: error: shop {args.shop} has no active credential "
              f"{args.credential_id} (see `orderflow shop credentials list {args.shop}`)", file=sys.stderr)
        return 1
    print(f"revoked {args.credential_id} of shop {args.shop}")
    return 0


def add_parser(sub: argparse._SubParsersAction, database_url: Callable[[], str]) -> None:
    p = sub.add_parser("shop", help="a shop's credentials (merchant back office, storefront key)")
    what = p.add_subparsers(dest="shop_command", required=True, metavar="WHAT")
    c = what.add_parser("credentials", help="create, list or revoke a shop's credentials")
    actions = c.add_subparsers(dest="credentials_command", required=True, metavar="ACTION")
    s = actions.add_parser("create", help="a new credential, printed once")
    s.add_argument("shop", type=_shop)
    s.add_argument("--kind", choices=["merchant", "storefront"], default="merchant",
                   help="merchant: the back office of this shop (default); storefront: its publishable cart key")
    s.add_argument("--label", help="a note shown by `list` (who or what uses it)")
    s.set_defaults(func=lambda args: cmd_create(args, database_url()))
    s = actions.add_parser("list", help="the shop's credentials (ids, kinds, states; never the secrets)")
    s.add_argument("shop", type=_shop)
    s.set_defaults(func=lambda args: cmd_list(args, database_url()))
    s = actions.add_parser("revoke", help="revoke one credential at once")
    s.add_argument("shop", type=_shop)
    s.add_argument("credential_id")
    s.set_defaults(func=lambda args: cmd_revoke(args, database_url()))
