"""`orderflow up --detach` starts a real broker, database and mail sink; `status` sees them; `down` leaves
no process behind."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from helpers import wait_for

import contracts as c
from contracts.producer import StorefrontProducer
from orderflow.infra.ports import pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INHERITED = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SMTP_HOST", "SMTP_PORT", "MAILBOX_URL", "BACKOFFICE_TOKEN")


def orderflow(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orderflow.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def processes_mentioning(*needles: str) -> list[str]:
    """Live processes whose command line names one of our folders (catches children a pid list would miss)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not pid_alive(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{entry.name}: {cmdline}")
    return found


def stock_from_the_stream(exports: dict[str, str]) -> None:
    """A restock reaches the back office's Stock page through inventory and inventory.levels: no setting beyond
    what `orderflow up` gives the services (the page once needed INVENTORY_URL, which `up` never set)."""
    shop, sku = f"shop-up-{uuid.uuid4().hex[:8]}", "MUG-1"

    async def restock() -> None:
        async with StorefrontProducer(exports["KAFKA_BOOTSTRAP_SERVERS"]) as producer:
            await producer.send(c.StockAdjusted(event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop,
                                                sku=sku, set_to=5, reason="stack test"))
    asyncio.run(restock())
    with httpx.Client(base_url=exports["ORDERS_URL"], timeout=10) as browser:
        signed_in = browser.post("/backoffice/login", data={"token": exports["BACKOFFICE_TOKEN"]})
        assert signed_in.status_code == 303, signed_in.text

        def shown() -> bool:
            page = browser.get("/backoffice/stock", params={"shop_id": shop}).text
            return re.search(rf'{sku}</td>\s*<td data-label="Available">5<', page) is not None
        wait_for(shown, timeout=60, message="the restock on the back office's Stock page")


def test_up_status_env_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env["ORDERFLOW_RUN_DIR"] = str(run_dir)

    up = orderflow(env, "up", "--detach")
    try:
        assert up.returncode == 0, f"up failed:\n{up.stdout}\n{up.stderr}"
        state = json.loads((run_dir / "stack.json").read_text())
        pids = [state[c]["process"]["pid"] for c in ("kafka", "postgres", "mailsink")]
        pids += [w["process"]["pid"] for w in state["services"]]
        assert all(pid_alive(p) for p in pids)

        status = orderflow(env, "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for component in ("broker", "database", "mailsink"):
            line = next(ln for ln in status.stdout.splitlines() if ln.startswith(component))
            assert " healthy " in line, status.stdout

        printed = orderflow(env, "env")
        assert printed.returncode == 0, printed.stderr
        exports = dict(ln.removeprefix("export ").split("=", 1) for ln in printed.stdout.splitlines())
        assert exports["KAFKA_BOOTSTRAP_SERVERS"] == state["kafka"]["bootstrap"]
        assert exports["DATABASE_URL"] == state["postgres"]["url"]
        assert exports["SMTP_HOST"] == "127.0.0.1"
        assert exports["SMTP_PORT"] == str(state["mailsink"]["smtp_port"])
        assert exports["MAILBOX_URL"] == state["mailsink"]["url"]
        assert exports["BACKOFFICE_TOKEN"]
        for w in state["services"]:
            assert exports[f"{w['name'].upper()}_URL"].startswith("http://127.0.0.1:")
        # `up` ends with what docs/README tell users to use: the back office and the operator's token
        assert f"back office {exports['ORDERS_URL']}/backoffice/" in up.stdout, up.stdout
        assert f"token     {exports['BACKOFFICE_TOKEN']}" in up.stdout, up.stdout
        stock_from_the_stream(exports)
    finally:
        down = orderflow(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr

    # A zombie (exited, not yet reaped by init) is not a running process: pid_alive treats it as gone.
    assert [p for p in pids if pid_alive(p)] == []
    assert processes_mentioning(str(run_dir), state["postgres"]["base_dir"]) == []
    assert not (run_dir / "stack.json").exists()
    assert not Path(state["postgres"]["base_dir"]).exists()

    after = orderflow(env, "status")
    assert after.returncode == 1 and "not running" in after.stdout


async def test_broker_restart_keeps_address_and_data(tmp_path: Path) -> None:
    """Fault tests restart the broker under running clients: same port, same data, same cluster."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from examples import example

    import contracts
    from contracts.producer import StorefrontProducer
    from orderflow import stack
    from orderflow.infra import kafka

    handle = kafka.start(tmp_path / "kafka")
    try:
        stack.create_topics(handle.bootstrap)
        event = example(contracts.PaymentConfirmed)
        async with StorefrontProducer(handle.bootstrap) as producer:
            written = await (await producer.send_soon(event))
        old_pid, port = handle.proc.pid, handle.port

        handle.restart()
        assert handle.port == port and handle.proc.pid != old_pid and not pid_alive(old_pid)

        consumer = AIOKafkaConsumer(bootstrap_servers=handle.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition("payment.confirmed", written.partition)
            consumer.assign([tp])
            consumer.seek(tp, written.offset)
            record = await consumer.getone()
        finally:
            await consumer.stop()
        assert contracts.decode(contracts.PaymentConfirmed, record.value) == event
    finally:
        handle.stop()
    assert not handle.alive()


def test_postgres_restart_keeps_port_and_data() -> None:
    from orderflow.infra import postgres
    from orderflow.infra.ports import run_coro

    async def query(url: str, sql: str) -> object:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    handle = postgres.start()
    try:
        run_coro(query(handle.url, "CREATE TABLE kept AS SELECT 42 AS answer"))
        old_pid, url = handle.proc.pid, handle.url
        handle.restart()
        assert handle.url == url and not pid_alive(old_pid)
        assert run_coro(query(handle.url, "SELECT answer FROM kept")) == 42
    finally:
        handle.remove()
    assert not handle.alive() and not handle.base_dir.exists()
