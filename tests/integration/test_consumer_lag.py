"""Consumer lag, as an operator sees it: `orderflow lag` shows the backlog of a stopped worker's group and zero once
it has caught up again, and the worker's `orderflow_consumer_lag` gauge says the same per partition; the worker's
/health/live and /health/ready answer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from helpers import async_wait_for
from workers import make_worker, worker_env

import contracts as c
from contracts.producer import StorefrontProducer
from orderflow.ops.lag import PartitionLag, measure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BURST = 40


def lag_command(bootstrap: str, group: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "orderflow.cli", "lag", "--group", group],
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def table_rows(output: str, topic: str) -> dict[int, int]:
    """partition -> LAG of `topic` in `orderflow lag`'s table."""
    rows = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[1] == topic:
            rows[int(fields[2])] = int(fields[5])
    return rows


def gauge(metrics: str, group: str, topic: str) -> dict[int, int]:
    pattern = re.compile(
        rf'^orderflow_consumer_lag\{{group="{re.escape(group)}",partition="(\d+)",'
        rf'topic="{re.escape(topic)}"\}} ([0-9.e+]+)$',
        re.M,
    )
    return {int(p): int(float(v)) for p, v in pattern.findall(metrics)}


async def test_lag_shows_the_backlog_then_zero_and_the_gauge_agrees(
    kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    env = worker_env(kafka_bootstrap, database_url)
    group = f"{env['ORDERFLOW_APP_ID_PREFIX']}-inventory"
    topic = c.topics.STOCK_ADJUSTED.name
    shop = f"shop-lag-{env['ORDERFLOW_APP_ID_PREFIX']}"

    def adjustment(i: int) -> c.StockAdjusted:
        return c.StockAdjusted(
            event_id=c.new_event_id(), occurred_at=c.now(), shop_id=shop, sku=f"SKU-{i % 8}", delta=1, reason="lag test"
        )

    async def behind() -> list[PartitionLag]:
        return [row for row in await measure(kafka_bootstrap, [group]) if row.topic == topic]

    worker = make_worker("inventory", env, tmp_path).start().wait_ready(timeout=120)
    try:
        async with StorefrontProducer(kafka_bootstrap) as producer:
            await producer.send(adjustment(0))

            async def caught_up() -> bool:
                rows = await behind()
                return bool(rows) and sum(r.lag for r in rows) == 0

            await async_wait_for(caught_up, timeout=60, message="the group committed its position")

            worker.kill()  # the group's positions stay committed; nothing reads the burst
            for i in range(BURST):
                await producer.send_soon(adjustment(i))
            await producer.flush()
        backlog = table_rows(lag_command(kafka_bootstrap, group), topic)
        assert sum(backlog.values()) == BURST, backlog

        worker.start().wait_ready(timeout=120)
        await async_wait_for(caught_up, timeout=60, message="the burst applied and committed")
        table = table_rows(lag_command(kafka_bootstrap, group), topic)
        assert table and set(table.values()) == {0}, table

        async def gauge_at_zero() -> dict[int, int] | None:
            metrics = httpx.get(f"{worker.url}/metrics", timeout=5).text
            seen = gauge(metrics, group, topic)
            return seen if len(seen) == 8 and set(seen.values()) == {0} else None

        seen = await async_wait_for(gauge_at_zero, timeout=30, message="the lag gauge of every partition at 0")
        assert {p: seen[p] for p in table} == table, "the gauge says what orderflow lag says"
        assert "process_resident_memory_bytes" in httpx.get(f"{worker.url}/metrics", timeout=5).text

        # Kafka's own tool from the Maven-fetched jars sees the same group and topic
        described = subprocess.run(
            [sys.executable, "-m", "orderflow.cli", "kafka-tool", "consumer-groups", "--describe", "--group", group],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert described.returncode == 0, described.stderr
        assert any(line.split()[:2] == [group, topic] for line in described.stdout.splitlines() if line.strip())

        # the same worker's probes: live, ready, and the details only with the operator's token
        assert httpx.get(f"{worker.url}/health/live", timeout=5).json() == {"live": True}
        ready = httpx.get(f"{worker.url}/health/ready", timeout=5)
        assert ready.status_code == 200 and ready.json()["consumer"] == "assigned", ready.text
        detailed = httpx.get(
            f"{worker.url}/health/ready", headers={"Authorization": f"Bearer {worker.token}"}, timeout=5
        ).json()
        assert (detailed["database"], detailed["ready"]) == ("ok", True)
    finally:
        worker.kill()
