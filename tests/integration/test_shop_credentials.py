"""Per-shop credentials on a real orders worker and database: created, listed and revoked with the operator's
command (`orderflow shop credentials ...`), used on the back-office API and, in headless Chromium, on its pages.

Two shops both have an order with the same id (1001-…). Shop A's merchant credential sees A only: B's order by id
is 404 exactly like a missing one, the shop field is gone from the pages; a revoked credential is 401 on the very
next request; the operator's BACKOFFICE_TOKEN sees both (and is told which shops share an id); failed sign-ins are
throttled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

import contracts as c
from contracts.producer import StorefrontProducer
from tests.helpers import async_wait_for
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

TOKEN = "operator-token"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def shop_command(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderflow.cli", "shop", "credentials", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "DATABASE_URL": database_url})


def create_credential(database_url: str, shop_id: str, kind: str = "merchant") -> tuple[str, str]:
    """(credential id, token) as the operator's command prints them."""
    done = shop_command(database_url, "create", shop_id, "--kind", kind, "--label", "test")
    assert done.returncode == 0, done.stderr
    first, token = done.stdout.splitlines()[:2]
    assert first.startswith("created ") and "shown once" in done.stderr
    return first.split()[1], token


@pytest.fixture(scope="module")
def orders_worker(kafka_bootstrap: str, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = make_worker("orders", worker_env(kafka_bootstrap, database_url, BACKOFFICE_TOKEN=TOKEN),
                         tmp_path_factory.mktemp("credentials")).start().wait_ready(timeout=120)
    yield worker
    worker.stop()


class Shops:
    """Two fresh shops, each with an order 1001 (different customers) and one order of its own."""

    def __init__(self) -> None:
        self.a, self.b = uid("shop-a"), uid("shop-b")
        self.a_only, self.b_only = uid("a-only"), uid("b-only")
        self.shared = uid("1001")  # both shops use it (fresh, so no other test's shops share it)


def placed(shop_id: str, order_id: str, name: str) -> c.OrderPlaced:
    return c.OrderPlaced(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop_id, order_id=order_id,
                         cart_id=uid("cart"), customer=c.Customer(email=f"{name.lower()}@example.com", name=name),
                         items=[c.OrderItem(sku="MUG", name="Mug", quantity=1, unit_price_cents=900)],
                         total_cents=900, currency="EUR", payment=c.Payment(method="manual", provider="cheque"))


@pytest.fixture(scope="module")
async def shops(kafka_bootstrap: str, orders_worker: WorkerProcess) -> Shops:
    s = Shops()
    async with StorefrontProducer(kafka_bootstrap) as producer:
        for event in (placed(s.a, s.shared, "Alice"), placed(s.b, s.shared, "Bruno"), placed(s.a, s.a_only, "Anna"),
                      placed(s.b, s.b_only, "Berta")):
            await producer.send(event)
    async with operator(orders_worker) as api:
        async def all_there() -> bool:
            answers = [await api.get(f"/orders/{o}", params={"shop_id": shop})
                       for shop, o in ((s.a, s.shared), (s.b, s.shared), (s.a, s.a_only), (s.b, s.b_only))]
            return all(r.status_code == 200 for r in answers)

        await async_wait_for(all_there, timeout=90, message="the four orders placed")
    return s


def operator(worker: WorkerProcess) -> httpx.AsyncClient:
    return as_(worker, TOKEN)


def as_(worker: WorkerProcess, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=worker.url, timeout=10, headers={"Authorization": f"Bearer {token}"})


async def test_a_merchant_credential_reaches_its_own_shop_only(orders_worker: WorkerProcess, shops: Shops,
                                                               database_url: str) -> None:
    credential_id, token = create_credential(database_url, shops.a)
    async with as_(orders_worker, token) as a, operator(orders_worker) as op:
        mine = await a.get(f"/orders/{shops.shared}")
        assert mine.status_code == 200 and mine.json()["customer"]["name"] == "Alice"
        assert mine.json()["shop_id"] == shops.a

        missing = await a.get(f"/orders/{uid('nobody')}")
        for theirs in (await a.get(f"/orders/{shops.b_only}"),
                       await a.get(f"/orders/{shops.shared}", params={"shop_id": shops.b}),
                       await a.post(f"/orders/{shops.b_only}/status", json={"status": "processed"}),
                       await a.post(f"/orders/{shops.b_only}/payment", json={"status": "paid"}),
                       await a.post(f"/orders/{shops.b_only}/messages", json={"text": "hello"})):
            assert (theirs.status_code, theirs.json()) == (missing.status_code, missing.json()) == (
                404, {"error": "no such order"})

        listed = await a.get("/orders", params={"tab": "pending", "per_page": 200})
        assert {o["shop_id"] for o in listed.json()["orders"]} == {shops.a}
        assert {o["order_id"] for o in listed.json()["orders"]} == {shops.shared, shops.a_only}
        elsewhere = await a.get("/orders", params={"tab": "pending", "shop_id": shops.b})
        assert elsewhere.json()["orders"] == [] and elsewhere.json()["total"] == 0
        searched = await a.get("/orders", params={"tab": "pending", "q": shops.b_only})
        assert searched.json()["orders"] == []

        assert (await a.put(f"/shops/{shops.b}", json={"name": "Taken", "merchant_email": "x@example.com"})
                ).status_code == 404
        assert (await a.put(f"/shops/{shops.a}", json={"name": "Mine", "merchant_email": "a@example.com"})
                ).status_code == 200
        changed = await a.post(f"/orders/{shops.a_only}/status", json={"status": "processed"})
        assert changed.status_code == 200 and changed.json()["changed"] is True

        # the operator sees both shops, and is told which shops share an id
        ambiguous = await op.get(f"/orders/{shops.shared}")
        assert ambiguous.status_code == 409 and set(ambiguous.json()["shops"]) == {shops.a, shops.b}
        bruno = await op.get(f"/orders/{shops.shared}", params={"shop_id": shops.b})
        assert bruno.json()["customer"]["name"] == "Bruno"
        assert (await op.get(f"/orders/{shops.b_only}")).status_code == 200
        both = await op.get("/orders", params={"tab": "pending", "q": shops.shared, "per_page": 200})
        assert {(o["shop_id"], o["order_id"]) for o in both.json()["orders"]} == {(shops.a, shops.shared),
                                                                                (shops.b, shops.shared)}

        # revoked: 401 on the very next request
        listing = shop_command(database_url, "list", shops.a)
        assert credential_id in listing.stdout and "active" in listing.stdout
        revoked = shop_command(database_url, "revoke", shops.a, credential_id)
        assert revoked.returncode == 0, revoked.stderr
        assert (await a.get(f"/orders/{shops.shared}")).status_code == 401
        assert "revoked" in shop_command(database_url, "list", shops.a).stdout
        again = shop_command(database_url, "revoke", shops.a, credential_id)
        assert again.returncode == 1 and "no active credential" in again.stderr


async def test_other_tokens_are_refused(orders_worker: WorkerProcess, shops: Shops, database_url: str) -> None:
    _, storefront = create_credential(database_url, shops.a, "storefront")
    _, merchant = create_credential(database_url, shops.a)
    forged = merchant[:-4] + ("AAAA" if not merchant.endswith("AAAA") else "BBBB")
    for token in (storefront, forged, "nothing", "ofm_0000000000000000_" + "x" * 43):
        async with as_(orders_worker, token) as client:
            assert (await client.get(f"/orders/{shops.shared}")).status_code == 401, token
    async with as_(orders_worker, merchant) as a:
        assert (await a.get(f"/orders/{shops.shared}")).status_code == 200


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if CHROMIUM is None:
        pytest.skip("no chromium found (Debian: apt-get install chromium); browser tests need it")
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the dev extra")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def sign_in(browser: object, worker: WorkerProcess, token: str) -> object:
    page = await browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    await page.goto(f"{worker.url}/backoffice/login")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    return page


async def test_the_pages_show_a_merchant_its_own_shop_only(orders_worker: WorkerProcess, shops: Shops,
                                                           database_url: str, browser: object) -> None:
    credential_id, token = create_credential(database_url, shops.a)
    page = await sign_in(browser, orders_worker, token)
    assert page.url.endswith("/backoffice/orders")
    assert shops.a in await page.inner_text("#signed-in-shop")
    assert await page.locator("input[name=shop_id]").count() == 0, "no shop field for a merchant"
    rows = await page.locator("table.orders tbody tr").all_inner_texts()
    assert any(shops.a_only in r for r in rows) and all(shops.b_only not in r for r in rows)
    await page.goto(f"{orders_worker.url}/backoffice/orders?tab=pending&shop_id={shops.b}")
    assert await page.locator("table.orders tbody tr").count() == 0, "naming another shop finds nothing"
    for path in ("/stock", "/shop"):
        await page.goto(f"{orders_worker.url}/backoffice{path}")
        assert await page.locator("input[name=shop_id]").count() == 0, path

    answer = await page.goto(f"{orders_worker.url}/backoffice/orders/{shops.b_only}")
    assert answer.status == 404 and "No such order" in await page.inner_text("main")
    answer = await page.goto(f"{orders_worker.url}/backoffice/orders/{shops.shared}?shop_id={shops.b}")
    assert answer.status == 404
    answer = await page.goto(f"{orders_worker.url}/backoffice/orders/{shops.shared}")
    assert answer.status == 200 and "Alice" in await page.inner_text("#customer-name")

    assert shop_command(database_url, "revoke", shops.a, credential_id).returncode == 0
    await page.goto(f"{orders_worker.url}/backoffice/orders/{shops.shared}")
    assert page.url.endswith("/backoffice/login"), "a revoked credential's session ends at once"

    op = await sign_in(browser, orders_worker, TOKEN)
    assert await op.locator("input[name=shop_id]").count() == 1
    answer = await op.goto(f"{orders_worker.url}/backoffice/orders/{shops.shared}")
    assert answer.status == 409 and shops.b in await op.inner_text("main")
    answer = await op.goto(f"{orders_worker.url}/backoffice/orders/{shops.shared}?shop_id={shops.b}")
    assert answer.status == 200 and "Bruno" in await op.inner_text("#customer-name")


async def test_failed_tries_are_throttled_per_address(kafka_bootstrap: str, database_url: str,
                                                     tmp_path: Path) -> None:
    """A worker of its own: its budget of failed tries for this address starts empty."""
    worker = make_worker("orders", worker_env(kafka_bootstrap, database_url, BACKOFFICE_TOKEN=TOKEN),
                         tmp_path).start().wait_ready(timeout=120)
    try:
        async with httpx.AsyncClient(base_url=worker.url, timeout=10) as client:
            ok = await client.get("/orders", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200, "a right token is not a failed try"
            answers = [(await client.get("/orders", headers={"Authorization": f"Bearer guess-{n}"})).status_code
                       for n in range(5)]
            answers += [(await client.post("/backoffice/login", data={"token": f"guess-{n}"})).status_code
                        for n in range(6)]
            assert answers == [401] * 5 + [401] * 5 + [429], "10 failed tries a minute, API and sign-in together"
            refused = await client.post("/backoffice/login", data={"token": TOKEN})
            assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
            api = await client.get("/orders", headers={"Authorization": f"Bearer {TOKEN}"})
            assert api.status_code == 429 and "Retry-After" in api.headers
    finally:
        worker.stop()
