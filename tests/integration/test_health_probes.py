"""/health/ready across a routine rebalance: a second worker joining the group moves partitions away from the first,
which stays ready meanwhile (before, /health answered 503 for every rebalance)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from workers import make_worker, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_ready_stays_200_while_a_second_worker_joins(
    kafka_bootstrap: str, database_url: str, tmp_path: Path
) -> None:
    env = worker_env(kafka_bootstrap, database_url)
    first = make_worker("inventory", env, tmp_path, 0).start().wait_ready(timeout=120)
    second = make_worker("inventory", env, tmp_path, 1)
    answers: list[tuple[int, str]] = []
    try:
        second.start()
        async with httpx.AsyncClient(timeout=5) as client:

            async def ready(worker_url: str) -> httpx.Response:
                return await client.get(f"{worker_url}/health/ready")

            for _ in range(900):  # at most ~90-180 s, then the test's timeout speaks
                answer = await ready(first.url)
                answers.append((answer.status_code, answer.json().get("consumer", "")))
                try:
                    if (await ready(second.url)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)  # polling interval while the second worker joins
            else:
                pytest.fail("the second worker never became ready")
            # the first worker was asked again after the join: its share of partitions shrank, still ready
            assert (await ready(first.url)).status_code == 200
    finally:
        second.kill()
        first.kill()
    print(f"first worker's answers while the second joined: {sorted(set(answers))} ({len(answers)} polls)")
    assert {status for status, _ in answers} == {200}, answers
