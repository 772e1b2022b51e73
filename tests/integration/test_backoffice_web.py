"""The back-office web pages in a real headless Chromium (Debian's), against a real orders worker.

Orders are created the way a storefront creates them: by producing `order.placed`. Screenshots of the orders list
and of one order (at a phone's width) land in test-output/.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from helpers import async_wait_for
from workers import WorkerProcess, make_worker, worker_env

import contracts as c
from contracts.producer import StorefrontProducer

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
TOKEN = "test-token"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def orders_worker(kafka_bootstrap: str, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = make_worker("orders", worker_env(kafka_bootstrap, database_url, BACKOFFICE_TOKEN=TOKEN),
                         tmp_path_factory.mktemp("backoffice")).start().wait_ready(timeout=120)
    yield worker
    worker.kill()


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if CHROMIUM is None:
        pytest.skip("no chromium found (Debian: apt-get install chromium); browser tests need it")
    playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the dev extra")
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


async def place_order(bootstrap: str, worker: WorkerProcess, shop_id: str, sku: str, name: str) -> str:
    order_id = uid("order")
    event = c.OrderPlaced(
        event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop_id, order_id=order_id, cart_id=uid("cart"),
        customer=c.Customer(email="ada@example.com", name=name),
        items=[c.OrderItem(sku=sku, name="Mug", quantity=2, unit_price_cents=1250)], total_cents=2500,
        currency="EUR", payment=c.Payment(method="manual", provider="cheque"))
    async with StorefrontProducer(bootstrap) as producer:
        await producer.send(event)
    async with httpx.AsyncClient(base_url=worker.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        async def placed() -> bool:
            return (await api.get(f"/orders/{order_id}")).status_code == 200
        await async_wait_for(placed, timeout=120, message=f"order {order_id} placed")
    return order_id


async def test_wrong_token_is_refused(orders_worker: WorkerProcess, browser: object) -> None:
    page = await browser.new_page()  # type: ignore[attr-defined]
    await page.goto(f"{orders_worker.url}/backoffice/orders")
    assert page.url.endswith("/backoffice/login")
    await page.fill("#token", "not-the-token")
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await page.click("button[type=submit]")
    assert (await answer.value).status == 401
    assert "not the back-office token" in await page.inner_text("[role=alert]")
    assert await page.context.cookies() == []
    await page.goto(f"{orders_worker.url}/backoffice/orders")
    assert page.url.endswith("/backoffice/login")


async def test_merchant_finds_and_processes_an_order(kafka_bootstrap: str, orders_worker: WorkerProcess,
                                                     browser: object) -> None:
    shop_id, sku = uid("shop"), uid("SKU")
    hostile = "<script>window.__xss = 1</script>Ada"
    order_id = await place_order(kafka_bootstrap, orders_worker, shop_id, sku, hostile)
    OUTPUT.mkdir(exist_ok=True)

    page = await browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
    await page.goto(f"{orders_worker.url}/backoffice/login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    assert page.url.endswith("/backoffice/orders")
    cookie = next(k for k in await page.context.cookies() if k["name"] == "orderflow_backoffice")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]

    await page.fill("input[name=q]", sku)
    await page.click("form.search button")
    row = page.locator("table.orders tbody tr")
    assert await row.count() == 1
    assert await page.inner_text("[data-tab=pending] .count") == "1"
    assert await page.inner_text("[data-tab=closed] .count") == "0"
    assert hostile in await row.locator("td[data-label=Customer]").inner_text()  # shown as text, not run
    assert await page.evaluate("window.__xss") is None
    await page.screenshot(path=str(OUTPUT / "backoffice-orders.png"), full_page=True)

    await page.click(f"text={order_id}")
    assert await page.inner_text("#customer-name") == hostile
    assert await page.locator("#timeline li").count() == 1
    buttons = page.locator("#actions button")
    assert await buttons.all_inner_texts() == ["Processed", "Cancel", "Mark paid"]

    await page.click("#actions button[data-action=processed]")
    assert "Status changed" in await page.inner_text("[role=status]")
    assert await page.inner_text("#order-status") == "processed"
    assert await page.locator("#timeline li").count() == 2
    assert "pending → processed" in await page.locator("#timeline li").nth(1).inner_text()
    assert await buttons.all_inner_texts() == ["Delivered", "Cancel", "Mark paid"]
    async with httpx.AsyncClient(base_url=orders_worker.url, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        assert (await api.get(f"/orders/{order_id}")).json()["status"] == "processed"

    # A change the core refuses (a stale form, say) is answered with the reason, and nothing changes.
    csrf = await page.get_attribute("#actions input[name=csrf]", "value")
    refused = await page.request.post(f"{orders_worker.url}/backoffice/orders/{order_id}/status",
                                      form={"csrf": csrf or "", "status": "pending"})
    assert refused.status == 409
    assert "cannot change processed to pending" in await refused.text()
    # Without the session's CSRF token a POST changes nothing.
    forged = await page.request.post(f"{orders_worker.url}/backoffice/orders/{order_id}/status",
                                     form={"csrf": "forged", "status": "canceled"})
    assert forged.status == 403

    await page.set_viewport_size({"width": 390, "height": 844})
    await page.reload()
    await page.screenshot(path=str(OUTPUT / "backoffice-order-phone.png"), full_page=True)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling


async def test_restock_form_produces_stock_adjusted(kafka_bootstrap: str, orders_worker: WorkerProcess,
                                                    browser: object) -> None:
    shop_id, sku = uid("shop"), uid("SKU")
    page = await browser.new_page()  # type: ignore[attr-defined]
    await page.goto(f"{orders_worker.url}/backoffice/login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.goto(f"{orders_worker.url}/backoffice/stock?shop_id={shop_id}")
    assert "No stock known for this shop yet" in await page.inner_text("main")  # no inventory.levels for it yet
    await page.fill("input[name=sku]", sku)
    await page.fill("input[name=amount]", "7")
    await page.click(".stock-form button")
    assert "Stock adjustment sent" in await page.inner_text("[role=status]")

    consumer = AIOKafkaConsumer(c.topics.STOCK_ADJUSTED.name, bootstrap_servers=kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    found: list[c.StockAdjusted] = []
    try:
        async def adjusted() -> bool:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.key == f"{shop_id}/{sku}".encode():
                        found.append(c.decode(c.StockAdjusted, record.value))
            return bool(found)
        await async_wait_for(adjusted, timeout=60, message="stock.adjusted from the back office")
    finally:
        await consumer.stop()
    assert [(e.sku, e.delta, e.set_to) for e in found] == [(sku, 7, None)]

    await page.goto(f"{orders_worker.url}/backoffice/shop?shop_id={shop_id}")
    await page.fill("#name", "Ada's <Mugs>")
    await page.fill("#merchant_email", "shop@example.com")
    await page.fill("#abandon_after_seconds", "900")
    await page.click("main form[method=post] button")
    assert "Shop settings saved" in await page.inner_text("[role=status]")
    assert await page.input_value("#name") == "Ada's <Mugs>"
    assert await page.input_value("#abandon_after_seconds") == "900"


async def test_stock_page_shows_levels_from_the_stream(kafka_bootstrap: str, orders_worker: WorkerProcess,
                                                       browser: object) -> None:
    """The Stock page reads orders' own copy of inventory.levels (no INVENTORY_URL, no call to inventory): the
    levels inventory publishes appear, the newest per SKU, out of stock first, and another shop's never."""
    shop_id, other_shop, mug, plate = uid("shop"), uid("shop"), uid("MUG"), uid("PLATE")
    earlier, later = c.now() - timedelta(seconds=5), c.now()

    def level(shop: str, sku: str, available: int, at: datetime) -> c.InventoryLevel:
        return c.InventoryLevel(event_id=c.new_event_id(), occurred_at=at, shop_id=shop, sku=sku,
                                available=available, updated_at=at)

    async with StorefrontProducer(kafka_bootstrap) as producer:  # what the inventory service would publish
        for event in (level(shop_id, mug, 9, earlier), level(shop_id, plate, 0, later),
                      level(other_shop, mug, 77, later), level(shop_id, mug, 4, later)):
            await producer.send(event)

    page = await browser.new_page()  # type: ignore[attr-defined]
    await page.goto(f"{orders_worker.url}/backoffice/login")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")

    async def rows() -> list[str]:
        await page.goto(f"{orders_worker.url}/backoffice/stock?shop_id={shop_id}")
        return [" ".join((await row.inner_text()).split()) for row in await page.locator("table.stock tbody tr").all()]

    shown_rows: list[str] = []

    async def shown() -> bool:
        shown_rows[:] = await rows()
        return len(shown_rows) == 2 and shown_rows[1].startswith(f"{mug} 4 ")
    await async_wait_for(shown, timeout=60, message="the shop's newest levels on the Stock page")
    assert shown_rows[0].startswith(f"{plate} out of stock")
    # the other shop's level (77) is in no cell; a substring test failed once on a random SKU, PLATE-75899377dd
    cells = [cell for row in await page.locator("table.stock tbody tr").all()
             for cell in (await row.locator("td").all_inner_texts())]
    assert cells and "77" not in [cell.strip() for cell in cells]
