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
from tests.helpers import async_wait_for

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


# --- fencing: a claim's token guards every later update --------------------------------------------------------

def customer_mail(shop_id: str, n: int = 1) -> MailIntent:
    return MailIntent(ref=f"{shop_id}/o-{n}", kind="confirmation", shop_id=shop_id, audience="customer",
                      template="confirmation", to_addr=f"c{n}@example.com", context={})


async def state_of(pool: asyncpg.Pool, ref: str) -> str:
    return await pool.fetchval("SELECT state FROM mails WHERE ref = $1", ref)


async def test_a_stale_sender_can_neither_record_nor_undo_anything(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await repository.insert_mails(conn, [customer_mail("shop-f")])
    [stale] = await repository.claim_due(pool, 10, lease_seconds=0.05)
    # the lease runs out (the first sender stalled): a second sender claims the row, with a new token
    [fresh] = await async_wait_for(lambda: repository.claim_due(pool, 10, lease_seconds=60), timeout=10,
                                   message="the row claimable again once its lease ran out")
    assert fresh.reclaimed and fresh.token != stale.token
    assert not await repository.store_rendering(pool, stale, "x@evil.test", "s", "t", "h")
    assert not await repository.mark_retry(pool, stale, 1, "4xx")
    assert not await repository.mark_failed(pool, stale, "550")
    assert not await repository.mark_sent(pool, stale)
    assert await state_of(pool, fresh.ref) == "sending"
    assert await repository.mark_sent(pool, fresh)
    # the stale sender's late outcome cannot turn 'sent' back into anything
    assert not await repository.mark_retry(pool, stale, 1, "4xx")
    assert not await repository.mark_failed(pool, stale, "550")
    await repository.release(pool, [stale, fresh])
    assert await state_of(pool, fresh.ref) == "sent"


async def test_an_extended_lease_keeps_the_row_from_other_senders(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await repository.insert_mails(conn, [customer_mail("shop-l", 1), customer_mail("shop-l", 2)])
    first, second = await repository.claim_due(pool, 10, lease_seconds=5)
    assert await repository.mark_sent(pool, second)
    held = await repository.extend_lease(pool, [first, second], lease_seconds=60)
    assert held == {first.key}  # the sent one is no longer 'sending'
    assert 55 < await seconds_until_due(pool, first.ref) <= 60
    assert await repository.claim_due(pool, 10, lease_seconds=60) == []


async def test_a_failed_mail_is_listed_with_the_reply_and_requeued_with_its_message_id(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await repository.insert_mails(conn, [customer_mail("shop-r", 1), customer_mail("shop-r", 2),
                                             merchant_mail("shop-q")])
    claimed = {m.ref: m for m in await repository.claim_due(pool, 10, lease_seconds=60)}
    bounced, sent, merchant = claimed["shop-r/o-1"], claimed["shop-r/o-2"], claimed["shop-q/o-1"]
    assert await repository.store_rendering(pool, bounced, "c1@example.com", "s", "t", "h")
    assert await repository.mark_failed(pool, bounced, "550 5.1.1 mailbox unavailable (RCPT TO c1@example.com)")
    assert await repository.mark_sent(pool, sent)
    assert await repository.mark_failed(pool, merchant, "550 no such merchant")

    [listed] = await repository.list_mails(pool, shop_id="shop-r", state="failed")
    assert (listed["ref"], listed["state"], listed["message_id"]) == (bounced.ref, "failed", bounced.message_id)
    assert listed["last_error"].startswith("550 5.1.1") and listed["failed_at"] is not None
    assert len(await repository.list_mails(pool, shop_id="shop-r")) == 2

    # a sent mail is never re-queued; a failed one is, due now, its rendering dropped
    assert await repository.requeue(pool, keys=[sent.key]) == []
    [again] = await repository.requeue(pool, keys=[bounced.key])
    assert again["message_id"] == bounced.message_id
    [row] = await repository.list_mails(pool, ref=bounced.ref)
    assert (row["state"], row["attempts"], row["requeued"], row["to_addr"]) == ("pending", 0, 1, "c1@example.com")
    assert [m.message_id for m in await repository.claim_due(pool, 10, 60)] == [bounced.message_id]

    [by_shop] = await repository.requeue(pool, failed_of_shop="shop-q")
    assert by_shop["ref"] == merchant.ref
    [row] = await repository.list_mails(pool, ref=merchant.ref)
    assert row["to_addr"] is None  # a merchant mail is addressed again, to the shop's current address
