"""SQL of the notify service: shops' mail settings and the mail outbox (state machine of each mail row).

pending → sending (claimed, with a lease) → sent | pending again (retry, backoff) | failed (last try or refused).
A row left in 'sending' by a killed worker becomes claimable again when its lease (next_attempt_at) runs out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from contracts import ShopSettings
from services.notify.core import MailIntent


@dataclass(frozen=True)
class Shop:
    name: str
    merchant_email: str


@dataclass(frozen=True)
class ClaimedMail:
    ref: str
    kind: str
    shop_id: str
    audience: str
    template: str
    context: dict[str, Any]
    to_addr: str | None
    subject: str | None
    text: str | None
    html: str | None
    message_id: str
    attempts: int
    created_at: datetime
    reclaimed: bool
    """It was in 'sending' with an expired lease: a worker died mid-send, the server may already have it."""


async def upsert_shop(conn: asyncpg.Connection, e: ShopSettings) -> bool:
    """Keep the newest settings per shop (a replay of the compacted topic does not roll them back)."""
    row = await conn.fetchrow(
        """INSERT INTO shops (shop_id, name, merchant_email, updated_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (shop_id) DO UPDATE SET name = EXCLUDED.name, merchant_email = EXCLUDED.merchant_email,
                                               updated_at = EXCLUDED.updated_at
           WHERE shops.updated_at <= EXCLUDED.updated_at
           RETURNING 1""",
        e.shop_id, e.name, e.merchant_email, e.occurred_at,
    )
    return row is not None


async def release_waiting_for_shop(conn: asyncpg.Connection | asyncpg.Pool, shop_ids: Sequence[str]) -> None:
    """Mails that were waiting for these shops' settings become due now."""
    await conn.execute(
        "UPDATE mails SET next_attempt_at = now() WHERE shop_id = ANY($1::text[]) AND state = 'pending' "
        "AND html IS NULL AND next_attempt_at > now()",
        list(shop_ids),
    )


async def insert_mails(conn: asyncpg.Connection, intents: Sequence[MailIntent]) -> int:
    """Set-based insert; a key already there (duplicate, replay) is left alone. Returns how many are new."""
    if not intents:
        return 0
    rows = await conn.fetch(
        """INSERT INTO mails (ref, kind, shop_id, audience, template, context, to_addr, message_id)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                                $7::text[], $8::text[])
           ON CONFLICT (ref, kind) DO NOTHING
           RETURNING 1""",
        [i.ref for i in intents], [i.kind for i in intents], [i.shop_id for i in intents],
        [i.audience for i in intents], [i.template for i in intents],
        [json.dumps(i.context) for i in intents], [i.to_addr for i in intents], [i.message_id for i in intents],
    )
    return len(rows)


async def get_shop(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str) -> Shop | None:
    row = await conn.fetchrow("SELECT name, merchant_email FROM shops WHERE shop_id = $1", shop_id)
    return Shop(row["name"], row["merchant_email"]) if row else None


async def claim_due(pool: asyncpg.Pool, limit: int, lease_seconds: float) -> list[ClaimedMail]:
    """Take up to `limit` due rows for this worker; other workers skip them (SKIP LOCKED) until the lease ends.

    Newest first: a customer waiting for a fresh confirmation is not kept behind a backlog (a replay, a long
    SMTP outage); the backlog drains whenever the sender has spare capacity, which is nearly always.
    """
    rows = await pool.fetch(
        """WITH due AS (
               SELECT ref, kind, state FROM mails
               WHERE state IN ('pending', 'sending') AND next_attempt_at <= now()
               ORDER BY created_at DESC
               LIMIT $1
               FOR UPDATE SKIP LOCKED)
           UPDATE mails m SET state = 'sending', attempts = m.attempts + 1,
                              next_attempt_at = now() + make_interval(secs => $2)
           FROM due WHERE m.ref = due.ref AND m.kind = due.kind
           RETURNING m.ref, m.kind, m.shop_id, m.audience, m.template, m.context, m.to_addr, m.subject, m.text,
                     m.html, m.message_id, m.attempts, m.created_at, due.state = 'sending' AS reclaimed""",
        limit, float(lease_seconds),
    )
    return [ClaimedMail(**{**dict(r), "context": json.loads(r["context"])}) for r in rows]


async def store_rendering(pool: asyncpg.Pool, mail: ClaimedMail, to_addr: str, subject: str, text: str,
                          html: str) -> None:
    await pool.execute(
        "UPDATE mails SET to_addr = $3, subject = $4, text = $5, html = $6 WHERE ref = $1 AND kind = $2",
        mail.ref, mail.kind, to_addr, subject, text, html,
    )


async def mark_sent(pool: asyncpg.Pool, mail: ClaimedMail) -> None:
    await pool.execute(
        "UPDATE mails SET state = 'sent', sent_at = now(), last_error = NULL WHERE ref = $1 AND kind = $2",
        mail.ref, mail.kind,
    )


async def mark_retry(pool: asyncpg.Pool, mail: ClaimedMail, delay_seconds: float, error: str) -> None:
    await pool.execute(
        "UPDATE mails SET state = 'pending', next_attempt_at = now() + make_interval(secs => $3), last_error = $4 "
        "WHERE ref = $1 AND kind = $2",
        mail.ref, mail.kind, float(delay_seconds), error[:1000],
    )


async def mark_failed(pool: asyncpg.Pool, mail: ClaimedMail, error: str) -> None:
    await pool.execute(
        "UPDATE mails SET state = 'failed', last_error = $3 WHERE ref = $1 AND kind = $2",
        mail.ref, mail.kind, error[:1000],
    )


async def release(pool: asyncpg.Pool, mails: Sequence[ClaimedMail]) -> None:
    """Give claimed rows back, due at once, without counting the attempt (not tried in time)."""
    if not mails:
        return
    await pool.execute(
        """UPDATE mails SET state = 'pending', attempts = attempts - 1, next_attempt_at = now()
           FROM unnest($1::text[], $2::text[]) AS k(ref, kind)
           WHERE mails.ref = k.ref AND mails.kind = k.kind""",
        [m.ref for m in mails], [m.kind for m in mails],
    )


async def wait_for_shop(pool: asyncpg.Pool, mail: ClaimedMail, delay_seconds: float, note: str) -> None:
    """Put back a mail that found no shop settings, for `delay_seconds` - or due at once if they arrived meanwhile.

    The shop.settings consumer releases waiting rows when it commits, but this row was 'sending' then and not
    released: the EXISTS (a snapshot taken after the sender looked) closes that lost wake-up.
    """
    await pool.execute(
        """UPDATE mails SET state = 'pending', attempts = attempts - 1, last_error = $4,
                            next_attempt_at = CASE WHEN EXISTS (SELECT 1 FROM shops s WHERE s.shop_id = mails.shop_id)
                                                   THEN now() ELSE now() + make_interval(secs => $3) END
           WHERE ref = $1 AND kind = $2""",
        mail.ref, mail.kind, float(delay_seconds), note,
    )


async def depth(pool: asyncpg.Pool) -> int:
    """Mails not yet sent nor failed (pending or being sent)."""
    return await pool.fetchval("SELECT count(*) FROM mails WHERE state IN ('pending', 'sending')")
