"""Two shops that reuse each other's order, cart and payment ids and SKUs (`orderflow simulate --shared-ids`),
driven through the topics into the four real services: every invariant of the fault suite's checker holds per shop.

The checker (`tests/faults/invariants.py`) keys orders by (shop_id, order_id) and carts by (shop_id, cart_id), so
stock, ledger, statuses, history, mails, checkouts and output topics are compared shop by shop against the
simulator's oracle; one shop's order 1001 landing on the other's would show as a wrong status, a wrong stock level,
an extra mail or a missing one.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events import OrderPlaced, PaymentConfirmed
from contracts.producer import StorefrontProducer
from orderflow.sim.driver import Pace, drive
from orderflow.sim.scenario import Mix, Scenario
from tests.faults.harness import Run, fault_stack, settle, wait_db

pytestmark = pytest.mark.slow

SESSIONS = 120


async def test_two_shops_sharing_every_id_keep_every_invariant_per_shop(
        kafka_bootstrap: str, database_url: str, mailsink: Any, tmp_path: Path) -> None:
    async with fault_stack(kafka_bootstrap, database_url, mailsink, tmp_path, name="tenants") as stack:
        # generated now, not before the workers started: occurred_at (and so each checkout's due time) is "now"
        ns = f"shared-{uuid.uuid4().hex[:6]}"
        scenario = Scenario.generate(14, SESSIONS, Mix(shops=2, skus_per_shop=4, cancels=0.1, abandon_after_seconds=12,
                                                       shared_ids=True), namespace=ns)
        events = [e for s in scenario.session_events for e in s]
        shops_of: dict[str, set[str]] = {}
        for e in events:
            if isinstance(e, OrderPlaced | PaymentConfirmed):
                shops_of.setdefault(e.order_id, set()).add(e.shop_id)
        shared = sorted(o for o, shops in shops_of.items() if len(shops) == 2)
        assert len(shared) >= 20, "the load must make both shops use the same order and payment ids"

        run = Run("shared-ids", scenario, [])
        stack.runs.append(run)
        async with StorefrontProducer(kafka_bootstrap, linger_ms=5) as producer:
            for event in scenario.setup_events:
                await producer.send(event)
            await wait_db(stack, "SELECT count(*) FROM inventory.stock WHERE starts_with(shop_id, $1)", f"{ns}-",
                          at_least=len(scenario.expected.initial_stock), timeout=60, what="the shops' SKUs")
            for table in ("orders.shops", "notify.shops", "cart.shop_settings"):
                await wait_db(stack, f"SELECT count(*) FROM {table} WHERE starts_with(shop_id, $1)", f"{ns}-",
                              at_least=len(scenario.shops), timeout=60, what=f"the shops in {table}")
            report = await drive(scenario, producer, Pace(rate=40.0), send_setup=False)
        assert report.sessions_sent == SESSIONS
        observed = await settle(stack, run)  # every invariant, per shop; fails with what differs

        # both shops hold an order under each shared id, each with its own customer
        assert all((shop, order_id) in observed.orders for order_id in shared for shop in shops_of[order_id])
        emails = {(o.shop_id, o.order_id): o.email for o in scenario.expected.orders.values()}
        async with httpx.AsyncClient(base_url=stack.workers["orders"].url, timeout=10,
                                     headers={"Authorization": f"Bearer {stack.workers['orders'].token}"}) as api:
            for order_id in shared[:5]:
                for shop in sorted(shops_of[order_id]):
                    if (shop, order_id) not in emails:
                        continue  # a payment for an id this shop never placed: held, and checked above
                    r = await api.get(f"/orders/{order_id}", params={"shop_id": shop})
                    assert r.status_code == 200, r.text
                    assert r.json()["customer"]["email"] == emails[shop, order_id]
                ambiguous = await api.get(f"/orders/{order_id}")
                if sum((shop, order_id) in emails for shop in shops_of[order_id]) == 2:
                    assert ambiguous.status_code == 409 and len(ambiguous.json()["shops"]) == 2
