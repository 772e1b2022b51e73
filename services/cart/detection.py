"""Abandoned-checkout detection by a faust windowed table (DESIGN.md, "Cart rules": a windowed table detects it).

The table `checkouts-due` holds each started checkout, keyed `shop_id/cart_id` and written by a plain agent on
checkout.started, so every write goes to the changelog partition of its source event and the worker that owns a
cart's partition owns its entry. Per-shop delays: the windows have one fixed base size (the deployment's
ABANDON_AFTER_SECONDS), and each entry carries its own due times (started_at plus each of the shop's recovery
reminders, read from PostgreSQL when the checkout is written), so one table serves every shop's delays.

Two ways propose a due checkout, both only reading the table:
- **window close**: faust's `on_window_close`, when a window expires (ABANDON_AFTER_SECONDS after it ends, at least
  15 minutes after it starts: `service.TABLE_KEPT_AT_LEAST`) - the
  table's own mechanism, late by construction for a per-entry due time, and in faust 0.15.3 it skips keys of other
  partitions once one partition closed a later window, and forgets windows across a restart;
- **sweep**: each worker reads its *local* partitions of the table (every FULL_SCAN_SECONDS, so a restart, a
  rebalance or a table recovered from its changelog is seen within that) into a heap of due times, which the agent
  also feeds as it writes; every ABANDON_SCAN_MS the sweep proposes what the heap has due, each due time once. A
  sweep costs what is due, not the table's size.

A proposal is only that: PostgreSQL's checkout row, claimed `WHERE state = 'open' AND due_at <= now()` in the
transaction that stages checkout.abandoned (services/cart/service.py, `abandon_due`), makes each (checkout,
reminder) happen once across workers, restarts and replays, and says nothing happens for a checkout that was
ordered, paid or unsubscribed meanwhile. The PostgreSQL scanner stays as a safety net: it claims only rows due for
longer than SAFETY_NET_GRACE, which the table missed (a gateway order's watch, due from its placement, is not in
the table; neither is a due time moved by a later event). `orderflow_cart_abandon_detections_total{source}` counts
each claim by who proposed it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any

from services.cart.core import CartKey

log = logging.getLogger(__name__)

SAFETY_NET_GRACE = timedelta(seconds=5)
"""How long a due checkout is left to the table before the PostgreSQL scanner claims it itself."""

PROPOSED_MEMORY_SECONDS = 3600.0

FULL_SCAN_SECONDS = 5.0

RETRY_SECONDS = 1.0
RETRIES = 10
"""A proposal PostgreSQL did not take (its row not written yet by the handler that lags the table's agent, or no
longer open) is made again RETRY_SECONDS later, RETRIES times at most."""


def table_key(shop_id: str, cart_id: str) -> str:
    return f"{shop_id}/{cart_id}"  # a shop id has no slash (Identifier)


def entry(shop_id: str, cart_id: str, started_at: float, delays: Iterable[int]) -> dict[str, Any]:
    """A table entry: the checkout and its due times (epoch seconds), one per reminder of the shop."""
    return {"shop_id": shop_id, "cart_id": cart_id, "due": [started_at + d for d in delays]}


def due_entries(items: Iterable[tuple[Any, Any]], now: float, seen: dict[tuple[str, float], float],
                ) -> list[tuple[CartKey, float]]:
    """The (shop, cart) of every entry with a due time passed and not proposed before (`seen`, updated here).

    `items` are the table's raw (key, value) pairs; a windowed table's key is (key, (start, end)).
    """
    found: list[tuple[CartKey, float]] = []
    for _, value in items:
        if not isinstance(value, dict) or "due" not in value:
            continue
        for due in value["due"]:
            mark = (table_key(value["shop_id"], value["cart_id"]), float(due))
            if due <= now and mark not in seen:
                seen[mark] = now
                found.append(((value["shop_id"], value["cart_id"]), float(due)))
    return found


class DueIndex:
    """The due times of the table's local entries, soonest first (a heap of (due, shop_id, cart_id))."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, value: Any) -> None:
        if isinstance(value, dict) and "due" in value:
            for due in value["due"]:
                heapq.heappush(self._heap, (float(due), value["shop_id"], value["cart_id"]))

    def rebuild(self, items: Iterable[tuple[Any, Any]]) -> None:
        """From the table's raw (key, value) pairs: what the worker's local partitions hold now."""
        self._heap = [(float(due), v["shop_id"], v["cart_id"]) for _, v in items
                      if isinstance(v, dict) and "due" in v for due in v["due"]]
        heapq.heapify(self._heap)

    def pop_due(self, now: float, seen: dict[tuple[str, float], float]) -> list[tuple[CartKey, float]]:
        """Every due time up to `now` not proposed before (`seen`, updated here), soonest first."""
        found: list[tuple[CartKey, float]] = []
        while self._heap and self._heap[0][0] <= now:
            due, shop_id, cart_id = heapq.heappop(self._heap)
            mark = (table_key(shop_id, cart_id), due)
            if mark not in seen:
                seen[mark] = now
                found.append(((shop_id, cart_id), due))
        return found


def forget_old(seen: dict[tuple[str, float], float], now: float) -> None:
    for mark in [m for m, at in seen.items() if now - at > PROPOSED_MEMORY_SECONDS]:
        del seen[mark]


class Proposals:
    """Keys proposed by the window close or the sweep, claimed in batches by one task per worker."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[CartKey, str, int]] = asyncio.Queue()

    def propose(self, key: CartKey, source: str, attempt: int = 1) -> None:
        self._queue.put_nowait((key, source, attempt))

    async def run(self, claim: Callable[[dict[CartKey, str]], Awaitable[set[CartKey]]]) -> None:
        """Forever: wait for a proposal, take all that queued up (first source wins per key), claim them; what was
        not taken is proposed again later (RETRIES)."""
        loop = asyncio.get_running_loop()
        while True:
            key, source, attempt = await self._queue.get()
            batch, attempts = {key: source}, {key: attempt}
            while not self._queue.empty() and len(batch) < 500:
                key, source, attempt = self._queue.get_nowait()
                batch.setdefault(key, source)
                attempts[key] = max(attempts.get(key, 0), attempt)
            started = time.monotonic()
            taken = await claim(batch)
            for key in batch.keys() - taken:
                if attempts[key] < RETRIES:
                    loop.call_later(RETRY_SECONDS, self.propose, key, batch[key], attempts[key] + 1)
            log.debug("claimed %d of %d proposal(s) in %.3f s", len(taken), len(batch), time.monotonic() - started)
