"""`orderflow/runtime/stacks.py`: the task dump names each pending task and where it waits."""

from __future__ import annotations

import asyncio

from orderflow.runtime.stacks import task_stacks


async def _parked_forever(event: asyncio.Event) -> None:
    await event.wait()


async def test_the_dump_shows_where_each_task_waits() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(_parked_forever(event), name="parked-one")
    await asyncio.sleep(0)  # let it reach its await
    try:
        dump = task_stacks(asyncio.get_running_loop())
    finally:
        event.set()
        await task
    assert "--- parked-one" in dump
    assert "_parked_forever" in dump and "await event.wait()" in dump
