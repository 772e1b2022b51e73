"""`orderflow mail list|retry`: see notify's mails (a failed one with the server's reply) and re-queue failed ones.

A re-queued mail goes back to 'pending' with the same Message-ID, rendered again with the shop's current settings
(a merchant address fixed since the bounce is used); a notify worker sends it within a second or so. A mail already
sent is never re-queued: sending it again would be the duplicate the mail table exists to prevent.

    orderflow mail list --failed --shop shop-1
    orderflow mail retry shop-1/o-42 confirmation
    orderflow mail retry --failed --shop shop-1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import asyncpg

SCHEMA = "notify"


class MailOpsError(Exception):
    """An operator-facing problem in one line."""


async def _connect(database_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(database_url, server_settings={"search_path": f"{SCHEMA},public"})
    except (OSError, asyncpg.PostgresError) as exc:
        raise MailOpsError(f"cannot reach the database: {exc}") from None


async def list_mails(database_url: str, *, shop_id: str | None = None, state: str | None = None,
                     ref: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    from services.notify import repository

    conn = await _connect(database_url)
    try:
        return await repository.list_mails(conn, shop_id=shop_id, state=state, ref=ref, limit=limit)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise MailOpsError("notify's mail table is missing or old: run `orderflow migrate` first") from None
    finally:
        await conn.close()


async def retry_mails(database_url: str, *, keys: list[tuple[str, str]] | None = None,
                      failed_of_shop: str | None = None) -> list[dict[str, Any]]:
    from services.notify import repository

    conn = await _connect(database_url)
    try:
        return await repository.requeue(conn, keys=keys, failed_of_shop=failed_of_shop)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise MailOpsError("notify's mail table is missing or old: run `orderflow migrate` first") from None
    finally:
        await conn.close()


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def describe(mail: dict[str, Any]) -> str:
    line = (f"{_when(mail['created_at'])}  {mail['state']:<7} {mail['ref']}  {mail['kind']}  "
            f"to={mail['to_addr'] or '(merchant)'}  attempts={mail['attempts']}")
    if mail["requeued"]:
        line += f"  requeued={mail['requeued']}"
    if mail["state"] == "sent":
        line += f"  sent={_when(mail['sent_at'])}"
    elif mail["last_error"]:
        line += f"\n    {mail['last_error']}"
    return line


def cmd_list(args: argparse.Namespace, database_url: str) -> int:
    state = "failed" if args.failed else args.state
    try:
        mails = asyncio.run(list_mails(database_url, shop_id=args.shop, state=state, ref=args.ref,
                                       limit=args.limit))
    except MailOpsError as exc:
        print(f"orderflow mail list: error: {exc}", file=sys.stderr)
        return 1
    for mail in mails:
        print(json.dumps(mail, default=str) if args.json else describe(mail))
    if not args.json:
        print(f"{len(mails)} mail(s)" + (f" (limit {args.limit})" if len(mails) == args.limit else ""))
    return 0


def cmd_retry(args: argparse.Namespace, database_url: str) -> int:
    if args.failed:
        if args.ref or args.kind or not args.shop:
            print("orderflow mail retry: error: use either REF KIND, or --failed --shop SHOP", file=sys.stderr)
            return 2
        keys, shop = None, args.shop
    else:
        if not (args.ref and args.kind) or args.shop:
            print("orderflow mail retry: error: use either REF KIND, or --failed --shop SHOP", file=sys.stderr)
            return 2
        keys, shop = [(args.ref, args.kind)], None
    try:
        requeued = asyncio.run(retry_mails(database_url, keys=keys, failed_of_shop=shop))
    except MailOpsError as exc:
        print(f"orderflow mail retry: error: {exc}", file=sys.stderr)
        return 1
    for mail in requeued:
        print(f"re-queued {mail['ref']} {mail['kind']} {mail['message_id']}")
    if keys and not requeued:
        print(f"orderflow mail retry: {args.ref} {args.kind} was not re-queued: no such mail, or it is sent or "
              "being sent (see `orderflow mail list --ref REF`)", file=sys.stderr)
        return 1
    print(f"{len(requeued)} mail(s) re-queued")
    return 0


def add_parser(sub: argparse._SubParsersAction, database_url: Callable[[], str]) -> None:
    p = sub.add_parser("mail", help="list notify's mails (failed ones with the server's reply); re-queue failed ones")
    actions = p.add_subparsers(dest="mail_command", required=True, metavar="ACTION")
    s = actions.add_parser("list", help="mails newest first")
    s.add_argument("--failed", action="store_true", help="only failed mails (same as --state failed)")
    s.add_argument("--state", choices=["pending", "sending", "sent", "failed"])
    s.add_argument("--shop", help="only this shop's mails")
    s.add_argument("--ref", help="only this order's or cart's mails (SHOP/ORDER_OR_CART)")
    s.add_argument("--limit", type=int, default=100)
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=lambda args: cmd_list(args, database_url()))
    s = actions.add_parser("retry", help="re-queue one mail (REF KIND) or every failed mail of a shop")
    s.add_argument("ref", nargs="?", help="SHOP/ORDER_OR_CART, as `mail list` shows it")
    s.add_argument("kind", nargs="?", help="confirmation, new_order, processed, ..., message:<id>")
    s.add_argument("--failed", action="store_true", help="every failed mail of --shop")
    s.add_argument("--shop")
    s.set_defaults(func=lambda args: cmd_retry(args, database_url()))
