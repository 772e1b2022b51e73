"""Readiness (/health/ready) across rebalances and dependency failures, and what /health shows without the token.

The runtime is built for real (a faust app, no connection opened); its database check is replaced by a stub."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp.test_utils import make_mocked_request

from orderflow.runtime import app as runtime_app
from orderflow.runtime.app import READY_GRACE_SECONDS, Runtime
from orderflow.runtime.failures import LostRace
from orderflow.runtime.http import public_health
from orderflow.settings import load_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Pool:
    def __init__(self) -> None:
        self.error: Exception | None = None

    async def fetchval(self, _sql: str) -> int:
        if self.error is not None:
            raise self.error
        return 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(runtime_app.time, "monotonic", clock)
    return clock


@pytest.fixture
def runtime(tmp_path, clock: Clock) -> tuple[Runtime, Pool]:  # noqa: ANN001
    settings = load_settings(
        "orders",
        "ORDERS_HTTP_PORT",
        0,
        env={"ORDERFLOW_STORE": "memory", "ORDERFLOW_DATA_DIR": str(tmp_path), "BACKOFFICE_TOKEN": "t0ken"},
    )
    rt = Runtime(settings)
    pool = Pool()

    async def fake_pool() -> Pool:
        return pool

    rt.pool = fake_pool  # type: ignore[method-assign]
    return rt, pool


async def test_ready_once_assigned_and_across_a_short_rebalance_not_after_the_grace(runtime, clock) -> None:  # noqa: ANN001
    rt, _pool = runtime
    assert (await rt.health())["ready"] is False, "starting: no partition assigned yet"
    rt.app.rebalancing = True
    await rt._on_assigned(None, set())
    assert (await rt.health())["ready"] is False, "starting: its first rebalance not completed yet"
    rt.app.rebalancing = False
    assert (await rt.health())["ready"] is True

    await rt._on_revoked(None, set())  # a rebalance begins
    rt.app.rebalancing = True
    clock.now += READY_GRACE_SECONDS - 1
    report = await rt.health()
    assert (report["consumer"], report["ready"]) == ("rebalancing", True)
    clock.now += 2
    report = await rt.health()
    assert (report["consumer"], report["ready"]) == ("waiting", False), "stuck longer than the grace"

    rt.app.rebalancing = False
    await rt._on_assigned(None, set())
    assert (await rt.health())["ready"] is True


async def test_not_ready_at_once_while_a_dependency_is_down_a_lock_race_only_after_the_grace(runtime, clock) -> None:  # noqa: ANN001
    rt, pool = runtime
    await rt._on_assigned(None, set())
    pool.error = ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 5432)")
    report = await rt.health()
    assert report["ready"] is False and report["database"].startswith("error: ConnectionRefusedError")
    pool.error = None

    rt._pause("order.placed", LostRace("position moved"), 1)
    assert (await rt.health())["ready"] is True, "a lock race is over in a moment"
    clock.now += READY_GRACE_SECONDS
    assert (await rt.health())["ready"] is False, "a race that lasts is not routine"
    rt._resume("order.placed")
    assert (await rt.health())["ready"] is True

    rt._pause("order.placed", asyncpg.InvalidPasswordError("password authentication failed"), 1)
    assert (await rt.health())["ready"] is False, "the database refusing the password: a dependency down"


def test_without_the_token_health_shows_states_not_error_text() -> None:
    report = {
        "service": "orders",
        "database": "error: ConnectionRefusedError: Connect call failed ('10.0.0.5', 5432)",
        "consumer": "assigned",
        "paused": {"order.placed": "OSError: db.internal:5432 refused"},
        "smtp": "degraded: SMTPAuthenticationError: 535 bad user shop@x",
        "ready": False,
    }
    shown = public_health(report)
    assert shown == {
        "service": "orders",
        "database": "error",
        "consumer": "assigned",
        "paused": ["order.placed"],
        "smtp": "degraded",
        "ready": False,
    }


async def test_the_token_unlocks_the_details(runtime) -> None:  # noqa: ANN001
    rt, pool = runtime
    pool.error = OSError("Connect call failed ('10.0.0.5', 5432)")
    for headers, detailed in (
        ({}, False),
        ({"Authorization": "Bearer wrong"}, False),
        ({"Authorization": "Bearer t0ken"}, True),
    ):
        response = await rt.http._get_health(make_mocked_request("GET", "/health/ready", headers=headers))
        assert response.status == 503
        assert ("10.0.0.5" in response.text) is detailed
    live = await rt.http._get_live(make_mocked_request("GET", "/health/live"))
    assert (live.status, live.text) == (200, '{"live": true}')
