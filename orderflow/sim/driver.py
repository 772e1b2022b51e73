"""Produces a Scenario onto the broker as storefronts would: batched, at a set rate or as fast as possible.

Setup events go first and are awaited (the services must know the shops and SKUs before orders arrive). Sessions
then go out in small chunks; a chunk's sends are queued with `send_soon` (batched by the producer's linger) and
awaited together. A cancel is held back `cancel_delay` seconds: topics do not order events across each other, and a
storefront's customer cancels some time after paying, not in the same millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber, UnknownProducerId

from contracts.base import Event
from contracts.events import OrderCancelRequested
from contracts.producer import StorefrontProducer
from orderflow.sim.scenario import Scenario

log = logging.getLogger(__name__)

SEND_RETRY_SECONDS = 300.0
"""How long a storefront keeps re-sending events the broker did not take (retriable errors only: no leader,
timeouts), as docs/storefront.md asks of storefronts: a broker outage delays the load, it does not end it."""

SentHook = Callable[[Event, float], None]
"""Called once the broker has an event, with the monotonic time its batch was queued (latency counts linger)."""


@dataclass
class DriveReport:
    sessions_sent: int = 0
    events_sent: int = 0
    setup_seconds: float = 0.0
    seconds: float = 0.0
    stopped_by: str = "count"

    @property
    def events_per_second(self) -> float:
        return self.events_sent / self.seconds if self.seconds else 0.0

    @property
    def sessions_per_second(self) -> float:
        return self.sessions_sent / self.seconds if self.seconds else 0.0


@dataclass
class Pace:
    """`rate` units per second (None: as fast as possible); unit is "sessions" or "events"."""

    rate: float | None = None
    unit: str = "sessions"
    duration: float | None = None
    count: int | None = None
    """At most this many sessions (the scenario's size when None)."""
    cancel_delay: float = 0.5
    chunk: int = field(default=0)
    """Sessions per chunk; 0 picks one from the rate (about 20 chunks a second) or 200 when unpaced."""

    def __post_init__(self) -> None:
        if self.unit not in {"sessions", "events"}:
            raise ValueError("pace unit must be 'sessions' or 'events'")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")


def _chunk_size(pace: Pace, events_per_session: float) -> int:
    if pace.chunk:
        return pace.chunk
    if pace.rate is None:
        return 200
    per_second = pace.rate if pace.unit == "sessions" else pace.rate / max(events_per_session, 1.0)
    return max(1, int(per_second / 20))


async def drive(scenario: Scenario, producer: StorefrontProducer, pace: Pace | None = None, *,
                on_sent: SentHook | None = None, on_progress: Callable[[DriveReport], None] | None = None,
                send_setup: bool = True) -> DriveReport:
    """Send the scenario; returns what was sent. Use `scenario.expected_for(report.sessions_sent)` as the oracle."""
    pace = pace or Pace()
    report = DriveReport()
    t0 = time.monotonic()
    if send_setup:
        await _send_all(producer, scenario.setup_events, on_sent)
    report.setup_seconds = time.monotonic() - t0

    sessions = scenario.session_events[: pace.count] if pace.count is not None else scenario.session_events
    per_session = (sum(len(s) for s in sessions) / len(sessions)) if sessions else 1.0
    size = _chunk_size(pace, per_session)
    held: list[tuple[float, Event]] = []
    start = time.monotonic()
    units = 0.0
    for i in range(0, len(sessions), size):
        now = time.monotonic()
        if pace.duration is not None and now - start >= pace.duration:
            report.stopped_by = "duration"
            break
        if pace.rate is not None:
            ahead = start + units / pace.rate - now
            if ahead > 0:
                await asyncio.sleep(ahead)  # pacing: the rate is the point of this wait
        batch: list[Event] = []
        for session in sessions[i:i + size]:
            for event in session:
                if isinstance(event, OrderCancelRequested):
                    held.append((time.monotonic() + pace.cancel_delay, event))
                else:
                    batch.append(event)
            units += 1 if pace.unit == "sessions" else len(session)
        now = time.monotonic()  # one instant for both lists: a cancel falling due between two reads was dropped
        due = [e for at, e in held if at <= now]
        held = [(at, e) for at, e in held if at > now]
        await _send_all(producer, batch + due, on_sent)
        report.sessions_sent = min(i + size, len(sessions))
        report.events_sent += len(batch) + len(due)
        report.seconds = time.monotonic() - start
        if on_progress:
            on_progress(report)
    if held:
        wait = max(at for at, _ in held) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # the held cancels' delay, by design
        await _send_all(producer, [e for _, e in held], on_sent)
        report.events_sent += len(held)
    report.seconds = time.monotonic() - start
    if on_progress:
        on_progress(report)
    return report


async def _send_all(producer: StorefrontProducer, events: list[Event], on_sent: SentHook | None) -> None:
    """Send and wait until the broker has every event; what a retriable error refused is sent again (same event
    ids: consumers drop a repeat) with a capped backoff, for SEND_RETRY_SECONDS at most, through a new producer
    when the old one's idempotence sequence broke."""
    if not events:
        return
    queued = time.monotonic()
    pending, backoff = events, 0.2
    while pending:
        futures, refused = [], []
        for event in pending:
            try:
                futures.append((event, await producer.send_soon(event)))
            except KafkaError as exc:  # no metadata for the topic while the broker is away
                refused.append((event, exc))
        results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
        refused += [(e, r) for (e, _), r in zip(futures, results, strict=True) if isinstance(r, BaseException)]
        if not refused:
            break
        broken = [r for _, r in refused if isinstance(r, OutOfOrderSequenceNumber | UnknownProducerId)]
        fatal = [r for _, r in refused if not (isinstance(r, KafkaError) and r.retriable) and r not in broken]
        if fatal or time.monotonic() - queued > SEND_RETRY_SECONDS:
            raise (fatal or [r for _, r in refused])[0]
        log.info("%d event(s) not taken by the broker (%s); sending them again", len(refused), refused[0][1])
        if broken:  # the idempotent producer's sequence broke in the outage: only a new producer id sends again
            await producer.renew()
        await asyncio.sleep(backoff)  # a retry's backoff, not a synchronisation
        backoff = min(backoff * 2, 5.0)
        pending = [e for e, _ in refused]
    if on_sent is not None:
        for event in events:
            on_sent(event, queued)
