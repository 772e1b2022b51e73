"""Each service's HTTP API driven by schemathesis from its own /openapi.json, on real workers, broker and database.

schemathesis knows nothing of the API but the document: it calls every operation with examples it derives from the
schemas (valid and invalid), a bounded number per operation, with the operator's token. No answer may be a server
error, and every answer must be what the document says: its status, its media type, its schema — which makes every
error a JSON `{"error": …}` (`orderflow.runtime.openapi.ERROR_SCHEMA`). The back office's HTML pages are left out
(they answer pages and redirects, not JSON).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

import contracts as c
from contracts.producer import StorefrontProducer
from tests.examples import example
from tests.helpers import async_wait_for
from tests.workers import WorkerProcess, make_worker, worker_env

pytestmark = pytest.mark.slow

SERVICES = ("cart", "inventory", "notify", "orders")
MAX_EXAMPLES = 10
"""Per operation in the fuzzing phase (the coverage phase tries each parameter's edges whatever this is). The whole
file took 100 s with its four workers' start, at load averages of 16-30 on the shared 2 cores."""
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def workers(kafka_bootstrap: str, database_url: str, mailsink, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[dict[str, WorkerProcess]]:
    env = worker_env(kafka_bootstrap, database_url, **mailsink.env)
    folder = tmp_path_factory.mktemp("apifuzz")
    running = {name: make_worker(name, env, folder).start() for name in SERVICES}
    try:
        for worker in running.values():
            worker.wait_ready(timeout=120)
        yield running
    finally:
        for worker in running.values():
            worker.kill()  # SIGKILL: nothing of theirs is checked after the run


@pytest.fixture(scope="module")
async def known_ids(workers: dict[str, WorkerProcess], kafka_bootstrap: str) -> dict[str, str]:
    """A shop with settings, an order, a SKU's stock and a cart, so that calls naming them reach the services' rules
    instead of a 404; schemathesis uses these ids for about half of its calls (see `config`)."""
    order = example(c.OrderPlaced)
    shop_id, sku = order.shop_id, order.items[0].sku
    cart = example(c.CartUpdated, shop_id=shop_id)
    async with StorefrontProducer(kafka_bootstrap) as producer:
        await producer.send(order)
        await producer.send(example(c.StockAdjusted, shop_id=shop_id, sku=sku, set_to=5, delta=None))
        await producer.send(cart)
    headers = {"Authorization": f"Bearer {workers['orders'].token}"}
    async with httpx.AsyncClient(headers=headers, timeout=10) as client:
        put = await client.put(f"{workers['orders'].url}/shops/{shop_id}",
                               json={"name": "Fuzzed shop", "merchant_email": "shop@example.com"})
        assert put.status_code == 200, put.text
        for url in (f"{workers['orders'].url}/orders/{order.order_id}?shop_id={shop_id}",
                    f"{workers['inventory'].url}/stock/{shop_id}/{sku}",
                    f"{workers['cart'].url}/carts/{cart.cart_id}?shop_id={shop_id}"):
            async def found(url: str = url) -> bool:
                return (await client.get(url)).status_code == 200

            await async_wait_for(found, timeout=60, message=url)
    return {"shop_id": shop_id, "order_id": order.order_id, "sku": sku, "cart_id": cart.cart_id,
            "ref": f"{shop_id}/{order.order_id}"}


def config(known: dict[str, str], folder: Path) -> Path:
    """schemathesis.toml: each known id as a dictionary that path and query parameters of its name draw from half
    the time (the rest is generated)."""
    lines = [f"[dictionaries.{name}]\nvalues = [{json.dumps(value)}]\n" for name, value in known.items()]
    lines.append("[parameters]")
    for name in known:
        for where in ("path", "query"):
            lines.append(f'"{where}.{name}" = {{ dictionary = "{name}", probability = 0.5 }}')
    lines.append('"query.shop" = { dictionary = "shop_id", probability = 0.5 }')
    path = folder / "schemathesis.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def schemathesis(worker: WorkerProcess, settings: Path, report: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(settings), "run",
        f"{worker.url}/openapi.json",
        # one worker: hypothesis describing its lambdas from two threads at once trips a CPython 3.11 ast bug
        "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--seed", "19", "--workers", "1",
        "--phases", "examples,coverage,fuzzing", "--exclude-path-regex", "^/backoffice",
        "--header", f"Authorization: Bearer {worker.token}", "--request-timeout", "10",
        "--suppress-health-check", "all", "--report", "junit", "--report-junit-path", str(report),
    ]
    # cwd and HOME in the test's folder: schemathesis keeps its crash cache in ./.schemathesis
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=report.parent,
                          env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "HOME": str(report.parent)})


@pytest.mark.parametrize("service", SERVICES)
def test_no_server_error_and_every_answer_as_documented(service: str, workers: dict[str, WorkerProcess],
                                                        known_ids: dict[str, str], tmp_path: Path) -> None:
    started = time.monotonic()
    run = schemathesis(workers[service], config(known_ids, tmp_path), tmp_path / "junit.xml")
    took = time.monotonic() - started
    assert run.returncode == 0, (
        f"schemathesis on {service} ({took:.0f} s):\n{run.stdout[-12000:]}\n{run.stderr[-3000:]}")
    assert "operations" in run.stdout.lower() or "passed" in run.stdout.lower(), run.stdout[-3000:]


@pytest.mark.parametrize("service", SERVICES)
def test_a_nul_in_any_parameter_is_a_client_error(service: str, workers: dict[str, WorkerProcess],
                                                  known_ids: dict[str, str]) -> None:
    """schemathesis keeps NUL out of the URLs it makes; PostgreSQL cannot store it, so it is tried here: in each path
    and query parameter of each documented operation, the answer is a 4xx JSON error, never a 500."""
    worker = workers[service]
    with worker.client() as client:
        doc = client.get("/openapi.json").json()
        tried = 0
        for path, operations in doc["paths"].items():
            for method, op in operations.items():
                params = op.get("parameters", [])
                for bad in params:
                    values = {p["name"]: known_ids.get(p["name"], "x") for p in params}
                    values[bad["name"]] = "a\x00b"
                    url = path.format(**{p["name"]: quote(values[p["name"]], safe="") for p in params
                                         if p["in"] == "path"})
                    query = {p["name"]: values[p["name"]] for p in params if p["in"] == "query" and p is bad}
                    answer = client.request(method.upper(), url, params=query, json={} if "requestBody" in op else None)
                    assert 400 <= answer.status_code < 500, f"{method.upper()} {url} {query}: {answer.text[:300]}"
                    assert "error" in answer.json(), f"{method.upper()} {url}: {answer.text[:300]}"
                    tried += 1
        assert tried > 0
        if service == "notify":  # a body's string too: RetryBody's fields were plain str, and a NUL was a 500
            answer = client.post("/mails/retry", json={"ref": "a\x00b", "kind": "confirmation"})
            assert answer.status_code == 400 and "error" in answer.json(), answer.text
