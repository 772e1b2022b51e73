"""`natural_batches`: what faust has buffered comes as one batch, in order, capped, and stale records are dropped.

Driven through faust's own agent test context (memory store, no broker): the events are put on the agent's channel
before its task runs, as a fetch of several records would be.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
import pytest
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from orderflow.runtime.app import natural_batches, take_buffered
from tests.helpers import async_wait_for


def _app_and_agent(most: int) -> tuple[faust.App, Any, list[list[bytes]]]:
    app = faust.App(f"batches-test-{most}", broker="kafka://127.0.0.1:1", store="memory://")
    topic = app.topic("t", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                      acks=False)
    batches: list[list[bytes]] = []

    @app.agent(topic)
    async def agent(stream: faust.StreamT) -> None:
        async for batch in natural_batches(stream, most, linger=0.0):
            batches.append([event.value for event in batch])

    return app, agent, batches


async def _put(context: Any, values: list[bytes]) -> list[faust.EventT]:
    return [await context.put(value, key=b"k", wait=False) for value in values]


@pytest.mark.parametrize(("most", "sizes"), [(100, [10]), (4, [4, 4, 2])], ids=["one batch", "capped at most"])
async def test_what_is_buffered_comes_in_offset_order_in_batches_of_at_most_most(most: int, sizes: list[int]) -> None:
    _, agent, batches = _app_and_agent(most=most)
    values = [str(i).encode() for i in range(10)]
    async with agent.test_context() as context:
        await _put(context, values)
        await async_wait_for(lambda: sum(map(len, batches)) >= len(values), timeout=5, message="all handed over")
    assert [len(batch) for batch in batches] == sizes
    assert [value for batch in batches for value in batch] == values


async def test_records_fetched_before_a_rebalance_are_dropped_from_the_bulk_take() -> None:
    app, agent, batches = _app_and_agent(most=100)
    async with agent.test_context() as context:
        events = await _put(context, [b"a", b"stale", b"c"])
        events[1].message.generation_id = app.consumer_generation_id - 1  # fetched in an earlier generation
        await async_wait_for(lambda: sum(map(len, batches)) >= 2, timeout=5, message="the current ones handed over")
    assert batches == [[b"a", b"c"]]


async def test_events_arriving_one_at_a_time_come_one_at_a_time() -> None:
    """A quiet stream's lone event is handed over at once, not held for company."""
    _, agent, batches = _app_and_agent(most=100)
    async with agent.test_context() as context:
        for value in (b"x", b"y"):
            await _put(context, [value])
            await async_wait_for(lambda v=value: batches and batches[-1] == [v], timeout=5, message="handed over")
    assert batches == [[b"x"], [b"y"]]


async def test_a_channel_closed_while_taking_ends_the_take_instead_of_raising() -> None:
    """faust closes a channel by throwing StopAsyncIteration into its queue when the worker stops; raised out of
    `natural_batches` (an async generator) it became a RuntimeError that crashed the agent and held the stop."""
    queue: ThrowableQueue = ThrowableQueue(flow_control=FlowControlEvent())
    events = [SimpleNamespace(message=SimpleNamespace(generation_id=3)) for _ in range(2)]
    for event in events:
        queue.put_nowait(event)
    await queue.throw(StopAsyncIteration())
    stream = SimpleNamespace(channel=SimpleNamespace(queue=queue),
                             app=SimpleNamespace(consumer_generation_id=3,
                                                 flow_control=SimpleNamespace(is_active=lambda: True)))
    batch: list = []
    assert take_buffered(stream, batch, 10) is False  # type: ignore[arg-type]
    assert batch == []  # the close comes first (as in faust's stream): what was queued is read again by its next owner
