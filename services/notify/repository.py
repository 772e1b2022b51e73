"""SQL of the notify service: shops' mail settings and the mail outbox (state machine of each mail row).

pending → sending (claimed, with a lease and a fresh claim token) → sent | pending again (a transient failure,
backoff; or released untried) | failed (refused for good: a 5xx naming the recipient or the content, or an address
the mailer cannot use). failed → pending again only by an operator (`requeue`), with the same Message-ID.
A row left in 'sending' by a killed worker becomes claimable again when its lease (next_attempt_at) runs out; the
sender holding a row extends its lease while it works on it (`extend_lease`).

Fencing: every update a sender makes to a row it claimed matches the claim token, so a sender whose lease ran out
(it stalled, lost the database) can neither overwrite the outcome of a later claim nor see its stale result stored;
the update functions return whether the row was still theirs.
"""

from __future__ import annotations

import json
import uuid
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
    locale: str = "en"
    """BCP 47 (shop.settings, contract v1.1): the language of the shop's mails."""


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
    token: uuid.UUID
    """This claim's attempt token: every later update of the row matches it (fencing)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.ref, self.kind)


async def upsert_shop(conn: asyncpg.Connection, e: ShopSettings) -> bool:
    """Keep the newest settings per shop (a replay of the compacted topic does not roll them back)."""
    row = await conn.fetchrow(
        """INSERT INTO shops (shop_id, name, merchant_email, locale, updated_at) VALUES ($1, $2, $3, $5, $4)
           ON CONFLICT (shop_id) DO UPDATE SET name = EXCLUDED.name, merchant_email = EXCLUDED.merchant_email,
                                               locale = EXCLUDED.locale, updated_at = EXCLUDED.updated_at
           WHERE shops.updated_at <= EXCLUDED.updated_at
           RETURNING 1""",
        e.shop_id, e.name, e.merchant_email, e.occurred_at, e.locale,
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
    row = await conn.fetchrow("SELECT name, merchant_email, locale FROM shops WHERE shop_id = $1", shop_id)
    return Shop(row["name"], row["merchant_email"], row["locale"]) if row else None


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
           UPDATE mails m SET state = 'sending', attempts = m.attempts + 1, claim_token = gen_random_uuid(),
                              next_attempt_at = now() + make_interval(secs => $2)
           FROM due WHERE m.ref = due.ref AND m.kind = due.kind
           RETURNING m.ref, m.kind, m.shop_id, m.audience, m.template, m.context, m.to_addr, m.subject, m.text,
                     m.html, m.message_id, m.attempts, m.created_at, due.state = 'sending' AS reclaimed,
                     m.claim_token AS token""",
        limit, float(lease_seconds),
    )
    return [ClaimedMail(**{**dict(r), "context": json.loads(r["context"])}) for r in rows]


_HELD = "ref = $1 AND kind = $2 AND claim_token = $3 AND state = 'sending'"
"""The row is still this claim's: nobody re-claimed it since (fencing)."""


_CHANGED = "status_unpublished = true, status_changed_at = now()"
"""The merchant should see this change: the status feed publishes it (migrations/005_mail_status_feed.sql)."""


def _matched(status: str) -> bool:
    return status.rsplit(" ", 1)[-1] != "0"


async def store_rendering(pool: asyncpg.Pool, mail: ClaimedMail, to_addr: str, subject: str, text: str,
                          html: str) -> bool:
    return _matched(await pool.execute(
        f"UPDATE mails SET to_addr = $4, subject = $5, text = $6, html = $7 WHERE {_HELD}",
        mail.ref, mail.kind, mail.token, to_addr, subject, text, html,
    ))


async def mark_sent(pool: asyncpg.Pool, mail: ClaimedMail) -> bool:
    """False: the row is no longer this claim's (its lease ran out and another sender took it)."""
    return _matched(await pool.execute(
        f"UPDATE mails SET state = 'sent', sent_at = now(), last_error = NULL, claim_token = NULL, {_CHANGED} "
        f"WHERE {_HELD}",
        mail.ref, mail.kind, mail.token,
    ))


async def mark_retry(pool: asyncpg.Pool, mail: ClaimedMail, delay_seconds: float, error: str) -> bool:
    return _matched(await pool.execute(
        "UPDATE mails SET state = 'pending', next_attempt_at = now() + make_interval(secs => $4), last_error = $5, "
        # the same error again is no news for the back office: only a first or a different one is published
        "status_unpublished = status_unpublished OR last_error IS DISTINCT FROM $5, "
        "status_changed_at = CASE WHEN last_error IS DISTINCT FROM $5 THEN now() ELSE status_changed_at END, "
        f"claim_token = NULL WHERE {_HELD}",
        mail.ref, mail.kind, mail.token, float(delay_seconds), error[:1000],
    ))


async def mark_failed(pool: asyncpg.Pool, mail: ClaimedMail, error: str) -> bool:
    return _matched(await pool.execute(
        f"UPDATE mails SET state = 'failed', failed_at = now(), last_error = $4, claim_token = NULL, {_CHANGED} "
        f"WHERE {_HELD}",
        mail.ref, mail.kind, mail.token, error[:1000],
    ))


async def release(pool: asyncpg.Pool, mails: Sequence[ClaimedMail], note: str | None = None) -> None:
    """Give claimed rows back, due at once, without counting the attempt (not tried: the SMTP server could not be
    reached, or the sender stops). `note`, when given, is kept as last_error so an operator sees why it waits."""
    if not mails:
        return
    await pool.execute(
        """UPDATE mails SET state = 'pending', attempts = attempts - 1, next_attempt_at = now(), claim_token = NULL,
                            last_error = COALESCE($4, mails.last_error),
                            status_unpublished = mails.status_unpublished
                                OR ($4 IS NOT NULL AND mails.last_error IS DISTINCT FROM $4),
                            status_changed_at = CASE WHEN $4 IS NOT NULL AND mails.last_error IS DISTINCT FROM $4
                                                     THEN now() ELSE mails.status_changed_at END
           FROM unnest($1::text[], $2::text[], $3::uuid[]) AS k(ref, kind, token)
           WHERE mails.ref = k.ref AND mails.kind = k.kind AND mails.claim_token = k.token
             AND mails.state = 'sending'""",
        [m.ref for m in mails], [m.kind for m in mails], [m.token for m in mails],
        note[:1000] if note else None,
    )


async def extend_lease(pool: asyncpg.Pool, mails: Sequence[ClaimedMail],
                       lease_seconds: float) -> set[tuple[str, str]]:
    """Push the lease of rows this sender still holds; returns the keys still held (a row missing was lost)."""
    if not mails:
        return set()
    rows = await pool.fetch(
        """UPDATE mails SET next_attempt_at = now() + make_interval(secs => $4)
           FROM unnest($1::text[], $2::text[], $3::uuid[]) AS k(ref, kind, token)
           WHERE mails.ref = k.ref AND mails.kind = k.kind AND mails.claim_token = k.token
             AND mails.state = 'sending'
           RETURNING mails.ref, mails.kind""",
        [m.ref for m in mails], [m.kind for m in mails], [m.token for m in mails], float(lease_seconds),
    )
    return {(r["ref"], r["kind"]) for r in rows}


async def wait_for_shop(pool: asyncpg.Pool, mail: ClaimedMail, delay_seconds: float, note: str) -> None:
    """Put back a mail that found no shop settings, for `delay_seconds` - or due at once if they arrived meanwhile.

    The shop.settings consumer releases waiting rows when it commits, but this row was 'sending' then and not
    released: the EXISTS (a snapshot taken after the sender looked) closes that lost wake-up.
    """
    await pool.execute(
        """UPDATE mails SET state = 'pending', attempts = attempts - 1, last_error = $5, claim_token = NULL,
                            next_attempt_at = CASE WHEN EXISTS (SELECT 1 FROM shops s WHERE s.shop_id = mails.shop_id)
                                                   THEN now() ELSE now() + make_interval(secs => $4) END
           WHERE ref = $1 AND kind = $2 AND claim_token = $3 AND state = 'sending'""",
        mail.ref, mail.kind, mail.token, float(delay_seconds), note,
    )


async def depth(pool: asyncpg.Pool) -> int:
    """Mails not yet sent nor failed (pending or being sent)."""
    return await pool.fetchval("SELECT count(*) FROM mails WHERE state IN ('pending', 'sending')")


# --- what an operator sees and does (orderflow mail list|retry, GET /mails) -----------------------------------

STATES = ("pending", "sending", "sent", "failed")
LISTED = ("ref", "kind", "shop_id", "audience", "state", "attempts", "requeued", "to_addr", "subject",
          "message_id", "last_error", "created_at", "next_attempt_at", "sent_at", "failed_at")


async def list_mails(conn: asyncpg.Connection | asyncpg.Pool, *, shop_id: str | None = None,
                     state: str | None = None, ref: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Mails newest first, filtered by shop, state and/or ref; `last_error` holds the server's reply."""
    rows = await conn.fetch(
        f"""SELECT {", ".join(LISTED)} FROM mails
            WHERE ($1::text IS NULL OR shop_id = $1) AND ($2::text IS NULL OR state = $2)
              AND ($3::text IS NULL OR ref = $3)
            ORDER BY created_at DESC, ref, kind LIMIT $4""",
        shop_id, state, ref, limit,
    )
    return [dict(r) for r in rows]


async def requeue(conn: asyncpg.Connection | asyncpg.Pool, *, keys: Sequence[tuple[str, str]] | None = None,
                  failed_of_shop: str | None = None) -> list[dict[str, Any]]:
    """Put failed (or waiting) mails back to 'pending', due now, with the same Message-ID.

    Either `keys` ((ref, kind) pairs) or every failed mail of `failed_of_shop`. A mail already sent, or being sent,
    is left alone (re-sending it would be the duplicate this table exists to prevent). The rendering is dropped, so
    the mail is rendered again with the shop's current settings (a merchant address fixed since, for instance).
    Returns the rows re-queued.
    """
    if (keys is None) == (failed_of_shop is None):
        raise ValueError("give either keys or failed_of_shop")
    rows = await conn.fetch(
        """UPDATE mails SET state = 'pending', next_attempt_at = now(), attempts = 0, requeued = requeued + 1,
                            claim_token = NULL, failed_at = NULL, subject = NULL, text = NULL, html = NULL,
                            to_addr = CASE WHEN audience = 'merchant' THEN NULL ELSE to_addr END,
                            status_unpublished = true, status_changed_at = now()
           WHERE state IN ('failed', 'pending')
             AND CASE WHEN $3::text IS NOT NULL THEN shop_id = $3 AND state = 'failed'
                      ELSE (ref, kind) IN (SELECT * FROM unnest($1::text[], $2::text[])) END
           RETURNING ref, kind, shop_id, message_id""",
        [k[0] for k in keys or []], [k[1] for k in keys or []], failed_of_shop,
    )
    return [dict(r) for r in rows]


# --- the status feed (topic mail.status) -----------------------------------------------------------------------

async def take_unpublished_states(conn: asyncpg.Connection, limit: int) -> list[dict[str, Any]]:
    """Clear the flag of up to `limit` rows whose state change is not yet published, returning what to publish.

    Run in the transaction that stages their mail.status events: the flag and the events commit together. SKIP
    LOCKED lets every worker's feed take its own rows; a row a sender is updating right now is taken next round.
    """
    rows = await conn.fetch(
        """WITH due AS (
               SELECT ref, kind FROM mails WHERE status_unpublished
               ORDER BY status_changed_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           UPDATE mails m SET status_unpublished = false
           FROM due WHERE m.ref = due.ref AND m.kind = due.kind
           RETURNING m.ref, m.kind, m.shop_id, m.audience, m.state, m.attempts, m.last_error, m.message_id,
                     m.status_changed_at""",
        limit,
    )
    return [dict(r) for r in rows]
