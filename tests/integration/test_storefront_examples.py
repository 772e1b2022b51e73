"""The storefront guide's examples (docs/examples) run against the real broker, an orders worker and a cart worker.

Each example fills a cart and places its order with fresh ids, then reads the cart back from the cart service with
the shop's storefront key, made as the guide says (`orderflow shop credentials create SHOP --kind storefront`); the
test then waits until the orders service lists that order with the example's customer and items. The Node example
is skipped where `node`/`npm` are absent, kcat's where `kcat` is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import wait_for
from workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
NODE_DIR = EXAMPLES / "node"


@pytest.fixture(scope="module")
def orders_worker(kafka_bootstrap: str, database_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = make_worker("orders", worker_env(kafka_bootstrap, database_url),
                         tmp_path_factory.mktemp("examples")).start().wait_ready(timeout=120)
    yield worker
    worker.kill()


@pytest.fixture(scope="module")
def cart_worker(kafka_bootstrap: str, database_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = make_worker("cart", worker_env(kafka_bootstrap, database_url),
                         tmp_path_factory.mktemp("examples-cart")).start().wait_ready(timeout=120)
    yield worker
    worker.kill()


def storefront_key(database_url: str, shop_id: str) -> str:
    """The operator's command, as docs/storefront.md shows it; prints the key once."""
    done = subprocess.run([sys.executable, "-m", "orderflow.cli", "shop", "credentials", "create", shop_id, "--kind",
                           "storefront"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[1]


def run_example(command: list[str], kafka_bootstrap: str, cart: WorkerProcess, database_url: str,
                cwd: Path = ROOT) -> tuple[str, str]:
    """Run an example with fresh ids and the shop's storefront key; returns (shop_id, the order id it printed)."""
    shop_id, order_id = f"shop-{uuid.uuid4().hex[:10]}", f"order-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "SHOP_ID": shop_id, "ORDER_ID": order_id,
           "PYTHONPATH": str(ROOT), "CART_URL": cart.url, "STOREFRONT_KEY": storefront_key(database_url, shop_id)}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == order_id
    assert lines[-2] in {f"cart cart-{order_id} open", f"cart cart-{order_id} ordered"}, lines
    return shop_id, order_id


def assert_placed(worker: WorkerProcess, shop_id: str, order_id: str) -> None:
    with worker.client() as api:
        def found() -> httpx.Response | None:
            response = api.get(f"/orders/{order_id}")
            return response if response.status_code == 200 else None

        order = wait_for(found, timeout=90, message=f"orders service to apply {order_id}").json()
        assert (order["shop_id"], order["status"], order["payment_status"]) == (shop_id, "pending", "awaiting")
        assert order["customer"]["name"] == "Ada Lovelace"
        assert [(i["sku"], i["quantity"]) for i in order["items"]] == [("MUG-1", 2)]
        listed = api.get("/orders", params={"tab": "pending", "q": order_id}).json()
        assert [o["order_id"] for o in listed["orders"]] == [order_id]


def test_python_contracts_producer(kafka_bootstrap: str, orders_worker: WorkerProcess, cart_worker: WorkerProcess,
                                   database_url: str) -> None:
    shop_id, order_id = run_example([sys.executable, str(EXAMPLES / "place_order.py")], kafka_bootstrap, cart_worker,
                                    database_url)
    assert_placed(orders_worker, shop_id, order_id)


def test_kcat_script(kafka_bootstrap: str, orders_worker: WorkerProcess, cart_worker: WorkerProcess,
                     database_url: str) -> None:
    if shutil.which("kcat") is None:
        pytest.skip("kcat is not installed (Debian: apt-get install kcat; `make setup` installs it)")
    shop_id, order_id = run_example(["bash", str(EXAMPLES / "kcat-place-order.sh")], kafka_bootstrap, cart_worker,
                                    database_url)
    assert_placed(orders_worker, shop_id, order_id)


def test_node_kafkajs_producer(kafka_bootstrap: str, orders_worker: WorkerProcess, cart_worker: WorkerProcess,
                               database_url: str) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js (node and npm) is not installed; the kafkajs example needs it")
    if not (NODE_DIR / "node_modules" / "kafkajs").is_dir():
        installed = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
                                   text=True, timeout=300)
        assert installed.returncode == 0, f"npm ci failed:\n{installed.stderr}"
    shop_id, order_id = run_example(["node", "produce.mjs"], kafka_bootstrap, cart_worker, database_url, cwd=NODE_DIR)
    assert_placed(orders_worker, shop_id, order_id)
