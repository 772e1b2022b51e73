"""Waiting for conditions in tests: poll with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, message: str = "condition",
             interval: float = 0.05) -> T:
    """Call `predicate` until it returns something truthy and return that; fail naming `message` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except AssertionError as exc:  # an assert inside the predicate means "not yet"
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"; last assertion: {last_error}" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        time.sleep(interval)  # the polling interval of a deadline loop, not synchronisation


async def async_wait_for(predicate: Callable[[], Awaitable[T] | T], timeout: float = 10.0,
                         message: str = "condition", interval: float = 0.05) -> T:
    """`wait_for` for coroutines: `predicate` may be sync or async."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result: Any = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except AssertionError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f"; last assertion: {last_error}" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{detail}")
        await asyncio.sleep(interval)  # the polling interval of a deadline loop, not synchronisation
