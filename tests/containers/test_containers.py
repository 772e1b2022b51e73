"""The whole system in containers (issue 20): `orderflow containers up --scale inventory=3` on podman, the seeds'
story through Mailpit, and a kill scenario checked by the fault suite's invariant checker.

Not part of `make test` (it builds images and runs a dozen containers): `make test-containers` runs it with
ORDERFLOW_CONTAINER_TESTS=1, after which `orderflow containers down --volumes` leaves no pod, container or volume.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orderflow import containers
from orderflow.infra.mailbox import MailpitMailbox
from orderflow.ops.replay import target_for
from tests.faults import harness
from tests.faults.harness import SERVICES, FaultStack, hold, play

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("ORDERFLOW_CONTAINER_TESTS") != "1",
        reason="containers: run by `make test-containers` (ORDERFLOW_CONTAINER_TESTS=1)",
    ),
]

BROKER_DOWN_SECONDS = 20.0
BROKER_RECOVERY_TIMEOUT = 300.0
ABANDON_AFTER_SECONDS = 180
"""Longer than the whole broker outage (20 s down, then its log recovery: 65-130 s here), or checkouts whose order
was held back by the outage would rightly be abandoned; the settle budget grows by as much."""
SETTLE_TIMEOUT = 420.0


@pytest.fixture(scope="module")
def system() -> Iterator[containers.Layout]:
    containers.down(volumes=True, say=lambda _m: None)  # a previous run's leftovers
    try:
        yield containers.up({"inventory": 3}, build=False)
    finally:
        containers.down(volumes=True)


def running(name: str) -> bool:
    return containers.podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip() == "running"


def test_every_container_is_healthy_with_three_inventory_workers(system: containers.Layout) -> None:
    rows = containers.status()
    assert [name for name, _state, _health in rows if "inventory" in name] == [
        "orderflow-inventory",
        "orderflow-inventory-2",
        "orderflow-inventory-3",
    ]
    assert all(health == "healthy" for _name, _state, health in rows), rows


def test_the_demo_holds_every_rule_reading_mail_through_mailpit(system: containers.Layout) -> None:
    env = {**os.environ, **system.env()}
    done = subprocess.run(
        [sys.executable, "-m", "orderflow.sim.demo"], env=env, capture_output=True, text=True, timeout=180
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "ALL RULES HELD" in done.stdout


class MailpitMessages:
    """The fault checker reads mail with a blocking `messages()`; here from the pod's Mailpit."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def _read(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as http:
            return await MailpitMailbox(self.url, http).messages()

    def messages(self, **_filters: str) -> list[dict[str, Any]]:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from inside the checker's event loop
            return pool.submit(asyncio.run, self._read()).result()


class ContainerStack(FaultStack):
    """The fault harness's stack over containers: no worker processes of its own; dead = not running."""

    def dead(self) -> list[str]:
        return [name for name, _service, _port in self.layout.workers() if not running(name)]


async def test_killing_an_inventory_replica_and_the_broker_loses_and_doubles_nothing(
    system: containers.Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "settle", functools.partial(harness.settle, timeout=SETTLE_TIMEOUT))
    env = {**os.environ, **system.worker_env(), "ORDERFLOW_APP_ID_PREFIX": "orderflow"}
    stack = ContainerStack(
        system.env()["KAFKA_BOOTSTRAP_SERVERS"],
        system.database_url,
        MailpitMessages(system.env()["MAILBOX_URL"]),
        tmp_path,
        env,
        {s: target_for(s, env) for s in SERVICES},
    )
    stack.layout = system  # type: ignore[attr-defined]
    replica, broker = "orderflow-inventory-2", "orderflow-kafka"

    async def fault() -> None:
        containers.podman("kill", replica)
        containers.podman("kill", broker)
        await hold(stack, BROKER_DOWN_SECONDS)  # the broker's downtime is the fault
        containers.podman("start", broker)
        restarted = time.monotonic()
        # A SIGKILLed broker recovers every partition's log before it listens again (minutes on a busy machine):
        # that recovery is part of the fault, so the checker's settle time starts once the broker answers.
        await asyncio.to_thread(containers.wait_healthy, [broker], BROKER_RECOVERY_TIMEOUT, print)
        print(f"\nbroker listening again {time.monotonic() - restarted:.1f} s after its restart")
        if not running(replica):  # podman's on-failure policy may have restarted it already
            containers.podman("start", replica)

    run = await play(stack, "containers-kill", seed=20, fault=fault, abandon_after=ABANDON_AFTER_SECONDS)
    print("\ncontainers kill scenario: " + ", ".join(f"{k} {v:.1f}s" for k, v in run.seconds.items()))
    assert not stack.dead()
