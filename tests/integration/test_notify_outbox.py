"""The notify mail outbox's SQL on the real PostgreSQL, in a schema of its own: the hand-offs between the consumers
and the senders that no end-to-end test can time on purpose."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

import contracts as c
from orderflow.runtime.db import RUNTIME_MIGRATIONS, connect_pool, migrate, service_migrations
from services.notify import repository
from services.notify.core import MailIntent

pytestmark = pytest.mark.slow


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    schema = f"notify_outbox_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, schema, [RUNTIME_MIGRATIONS, service_migrations("notify")])
        pool = await connect_pool(database_url, schema)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


def merchant_mail(shop_id: str) -> MailIntent:
    return MailIntent(ref=f"{shop_id}/o-1", kind="new_order", shop_id=shop_id, audience="merchant",
                      template="new_order", to_addr=None, context={})


def settings(shop_id: str) -> c.ShopSettings:
    return c.ShopSettings(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop_id, name="Chez Ada",
                          merchant_email="ada@example.com")


async def seconds_until_due(pool: asyncpg.Pool, ref: str) -> float:
    due: datetime = await pool.fetchval("SELECT next_attempt_at FROM mails WHERE ref = $1", ref)
    return (due - datetime.now(UTC)).total_seconds()


async def test_settings_committed_while_a_sender_held_the_mail_make_it_due_at_once(pool: asyncpg.Pool) -> None:
    """The lost wake-up: the shop.settings consumer commits while a sender holds the mail (state 'sending', so its
    release does not match); the sender, which saw no shop, then puts the mail back. It must be due now, not after
    the wait for settings (600 s for a merchant mail)."""
    async with pool.acquire() as conn:
        await repository.insert_mails(conn, [merchant_mail("shop-a")])
    [claimed] = await repository.claim_due(pool, 10, lease_seconds=60)
    assert await repository.get_shop(pool, "shop-a") is None  # what the sender saw

    async with pool.acquire() as conn, conn.transaction():  # the shop.settings consumer, meanwhile
        assert await repository.upsert_shop(conn, settings("shop-a"))
        await repository.release_waiting_for_shop(conn, ["shop-a"])

    await repository.wait_for_shop(pool, claimed, 600, "waiting for the shop's settings (shop.settings)")
    assert await seconds_until_due(pool, claimed.ref) <= 0
    [again] = await repository.claim_due(pool, 10, lease_seconds=60)
    assert (again.ref, again.attempts) == (claimed.ref, 1)  # the put-back did not count as an attempt


async def test_a_mail_without_its_shop_waits(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await repository.insert_mails(conn, [merchant_mail("shop-b")])
    [claimed] = await repository.claim_due(pool, 10, lease_seconds=60)
    await repository.wait_for_shop(pool, claimed, 600, "waiting for the shop's settings (shop.settings)")
    assert 590 < await seconds_until_due(pool, claimed.ref) <= 600
    assert await repository.claim_due(pool, 10, lease_seconds=60) == []

    async with pool.acquire() as conn, conn.transaction():  # the settings arrive: released at once
        assert await repository.upsert_shop(conn, settings("shop-b"))
        await repository.release_waiting_for_shop(conn, ["shop-b"])
    assert [m.ref for m in await repository.claim_due(pool, 10, lease_seconds=60)] == [claimed.ref]
