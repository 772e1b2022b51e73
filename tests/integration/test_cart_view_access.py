"""GET /carts/{cart_id} on a real cart worker: who may read a cart, and what they see.

Two shops use the same cart id. The storefront key of each shop opens its own cart (with the customer), never the
other's; without any credential it is 401; the recovery link of a real checkout.abandoned opens that one cart
without the customer's e-mail or name, and nothing else (another shop, another cart, an expired or altered token:
401); the operator's token opens any cart for support (409 when the id is ambiguous), without the customer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest

import contracts as c
from contracts.producer import StorefrontProducer
from orderflow.auth import credentials
from services.cart import recovery
from tests.faults.invariants import read_topics
from tests.helpers import async_wait_for
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

STORE_URL = "https://store.test"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def cart_worker(kafka_bootstrap: str, database_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    env = worker_env(kafka_bootstrap, database_url, ABANDON_AFTER_SECONDS="2", ABANDON_SCAN_MS="200",
                     PUBLIC_STORE_URL=STORE_URL)
    worker = make_worker("cart", env, tmp_path_factory.mktemp("cartview")).start().wait_ready(timeout=120)
    yield worker
    worker.stop()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def envelope(shop_id: str) -> dict:
    return {"event_id": c.new_event_id(), "occurred_at": c.now(), "shop_id": shop_id}


async def view(worker: WorkerProcess, cart_id: str, *, key: str | None = None, **params: str) -> httpx.Response:
    """GET /carts/{cart_id}; `key` goes in the Authorization header, `params` (shop_id, token) in the query."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=worker.url, timeout=10, headers=headers) as client:
        return await client.get(f"/carts/{cart_id}", params=params)


async def test_who_may_read_a_cart_and_what_they_see(kafka_bootstrap: str, cart_worker: WorkerProcess,
                                                     pg: asyncpg.Connection) -> None:
    a, b, cart_id = uid("shop-a"), uid("shop-b"), uid("cart")
    alice = c.Customer(email=f"alice.{a}@example.com", name="Alice")
    items = [c.CartItem(sku="MUG", quantity=2, name="Mug", unit_price_cents=900)]
    async with StorefrontProducer(kafka_bootstrap) as producer:
        await producer.send(c.CartUpdated(**envelope(a), cart_id=cart_id, customer=c.CartCustomer(
            **alice.model_dump()), items=items))
        await producer.send(c.CartUpdated(**envelope(b), cart_id=cart_id, customer=c.CartCustomer(
            email=f"bob.{b}@example.com", name="Bob"), items=[c.CartItem(sku="TEE", quantity=1)]))
        await producer.send(c.CheckoutStarted(**envelope(a), cart_id=cart_id, customer=alice, items=items,
                                              total_cents=1800, currency="EUR"))
    key_a, made_a = await credentials.create(pg, a, "storefront")
    key_b, _ = await credentials.create(pg, b, "storefront")
    merchant_a, _ = await credentials.create(pg, a, "merchant")

    async def opened() -> httpx.Response | None:
        r = await view(cart_worker, cart_id, key=key_a)
        return r if r.status_code == 200 else None

    mine = (await async_wait_for(opened, timeout=60, message="A's cart stored")).json()
    assert (mine["shop_id"], mine["customer"]["email"]) == (a, alice.email)
    assert [i["sku"] for i in mine["items"]] == ["MUG"]

    async def b_opened() -> httpx.Response | None:
        r = await view(cart_worker, cart_id, key=key_b)
        return r if r.status_code == 200 else None

    theirs = (await async_wait_for(b_opened, timeout=60, message="B's cart stored")).json()
    assert (theirs["shop_id"], theirs["customer"]["name"]) == (b, "Bob") and theirs["items"][0]["sku"] == "TEE"
    assert (await view(cart_worker, cart_id, key=key_a, shop_id=b)).status_code == 404, "not another shop's"

    for token in (None, merchant_a, key_a[:-3] + "abc", "test-token-not"):
        refused = await view(cart_worker, cart_id, key=token)
        assert refused.status_code == 401, token
        assert "storefront key" in refused.json()["error"]

    support = await view(cart_worker, cart_id, key=cart_worker.token)
    assert support.status_code == 409 and set(support.json()["shops"]) == {a, b}
    support = await view(cart_worker, cart_id, key=cart_worker.token, shop_id=a)
    assert support.status_code == 200 and "customer" not in support.json()

    # the recovery link of A's abandoned checkout opens A's cart, and nothing else
    async def abandoned() -> c.CheckoutAbandoned | None:
        found = [c.decode(c.CheckoutAbandoned, r.value) for r in await read_topics(
            kafka_bootstrap, [c.topics.CHECKOUT_ABANDONED.name], keep=lambda r: r.key == cart_id.encode())]
        return found[0] if found else None

    event = await async_wait_for(abandoned, timeout=60, message="A's checkout abandoned", interval=0.5)
    link = urlsplit(event.recovery_url)
    assert f"{link.scheme}://{link.netloc}{link.path}" == f"{STORE_URL}/cart/{cart_id}"
    query = {k: v[0] for k, v in parse_qs(link.query).items()}
    assert query["shop_id"] == a
    resumed = await view(cart_worker, cart_id, **query)
    assert resumed.status_code == 200
    body = resumed.json()
    assert body["shop_id"] == a and [i["sku"] for i in body["items"]] == ["MUG"]
    assert "customer" not in body and alice.email not in resumed.text and "Alice" not in resumed.text

    other_cart = uid("cart")
    expired = recovery.sign(recovery.key_from(cart_worker.token), a, cart_id, c.now() - timedelta(seconds=1))
    for params in ({**query, "shop_id": b}, {"shop_id": a, "token": query["token"][:-2] + "xx"},
                   {"shop_id": a, "token": expired}, {"token": query["token"]}):
        assert (await view(cart_worker, cart_id, **params)).status_code == 401, params
    assert (await view(cart_worker, other_cart, **query)).status_code == 401, "a token for another cart"

    # a revoked storefront key is refused on the next request
    assert await credentials.revoke(pg, a, made_a.credential_id)
    assert (await view(cart_worker, cart_id, key=key_a)).status_code == 401
