"""The simulator's driver with a fake producer: sends everything once, setup first, cancels last, stops on count."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from contracts.base import Event
from contracts.events import OrderCancelRequested, ShopSettings, StockAdjusted
from orderflow.sim import Mix, Scenario
from orderflow.sim.driver import Pace, drive


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[Event] = []

    async def send_soon(self, event: Event) -> asyncio.Future:
        self.sent.append(event)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


SCENARIO = Scenario.generate(4, 120, Mix(cancels=0.5), start=datetime(2024, 1, 1, tzinfo=UTC))


async def test_sends_every_event_once_setup_first_cancels_after_their_session() -> None:
    producer = FakeProducer()
    report = await drive(SCENARIO, producer, Pace(cancel_delay=0.01))  # type: ignore[arg-type]
    assert report.sessions_sent == 120
    assert sorted(str(e.event_id) for e in producer.sent) == sorted(
        str(e.event_id) for e in SCENARIO.setup_events + [e for s in SCENARIO.session_events for e in s])
    setup = len(SCENARIO.setup_events)
    assert all(isinstance(e, ShopSettings | StockAdjusted) for e in producer.sent[:setup])
    position = {id(e): i for i, e in enumerate(producer.sent)}
    for session in SCENARIO.session_events:
        for earlier, later in zip(session, session[1:], strict=False):
            if isinstance(later, OrderCancelRequested):
                assert position[id(earlier)] < position[id(later)]


async def test_count_limits_the_sessions_and_the_oracle_follows() -> None:
    producer = FakeProducer()
    report = await drive(SCENARIO, producer, Pace(count=10, cancel_delay=0.0))  # type: ignore[arg-type]
    assert report.sessions_sent == 10
    assert len(producer.sent) == len(SCENARIO.setup_events) + sum(len(s) for s in SCENARIO.session_events[:10])
    assert set(SCENARIO.expected_for(10).orders) <= set(SCENARIO.expected.orders)


async def test_a_rate_paces_the_sessions() -> None:
    producer = FakeProducer()
    report = await drive(SCENARIO, producer, Pace(rate=400, count=40, chunk=5, cancel_delay=0.0))  # type: ignore[arg-type]
    assert report.seconds >= 0.08  # 40 sessions at 400/s: the last chunk may start at 35/400 s
