"""How current a service's inputs are: the wall-clock time up to which everything on its input topics is applied.

A decision made on the clock alone ("no order came for this checkout within an hour, so it is abandoned") is only
right if every event that happened before that hour has been read. During a broker outage, or with a backlog, it has
not: the order is held back in a producer's buffer or in the log, and the clock decides wrongly. `InputsClock` gives
such decisions a horizon instead of the clock:

- a **probe** asks the broker, at wall time T, for the end offset of *every* partition of the service's input topics
  (not only the worker's own: the order that settles a checkout may sit on a partition another worker reads);
- once the positions stored in PostgreSQL (written in the same transaction as the effects, by whichever worker)
  have reached those ends, every record the broker held at T is applied, and the horizon moves to T;
- a probe that fails or takes longer than PROBE_TIMEOUT_SECONDS marks the broker as in trouble, and no probe is
  taken until SETTLE_SECONDS after the last trouble: producers that buffered events during an outage deliver them
  in the first seconds after it, and a probe taken in those seconds would not see them.

The horizon never moves back, and it stays where it was while the broker is away, so decisions wait. What it
cannot see: an event a producer delivers later than SETTLE_SECONDS after the broker came back (its own outage, a
stopped storefront); that event is late, and handled as late (docs/guarantees.md, "Not guaranteed").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

PROBE_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 5.0
SETTLE_SECONDS = 10.0

Partition = tuple[str, int]


@dataclass(frozen=True)
class Probe:
    at: float  # wall time (epoch seconds) just before the end offsets were asked for
    ends: Mapping[Partition, int]


def applied_through(ends: Mapping[Partition, int], positions: Mapping[Partition, int],
                    earliest: Mapping[Partition, int]) -> bool:
    """True when every partition's stored position has reached its probed end offset."""
    return not behind(ends, positions, earliest)


def behind(wanted: Mapping[Partition, int], positions: Mapping[Partition, int],
           earliest: Mapping[Partition, int]) -> dict[Partition, tuple[int | None, int]]:
    """The partitions whose stored position has not reached the wanted offset: (position, wanted).

    A partition with no stored position has never had a record applied: it is there only if it holds nothing
    before the wanted offset (its earliest offset, or where the group starts, is at or past it).
    """
    late: dict[Partition, tuple[int | None, int]] = {}
    for tp, offset in wanted.items():
        position = positions.get(tp, earliest.get(tp))
        if position is None or position < offset:
            late[tp] = (position, offset)
    return late


class InputsClock:
    """The horizon of one worker's decisions; `probed`, `failed` and `check` are fed by the runtime's probe loop."""

    def __init__(self, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.settle_seconds = settle_seconds
        self.horizon: float | None = None  # None: no probe has been seen applied yet; nothing may be decided
        self.pending: Probe | None = None
        self.trouble_at: float | None = None
        self._moves: deque[tuple[float, float]] = deque(maxlen=600)  # (when, horizon): for `horizon_as_of`

    def wants_probe(self, at: float) -> bool:
        settled = self.trouble_at is None or at - self.trouble_at >= self.settle_seconds
        return self.pending is None and settled

    def probed(self, probe: Probe, finished_at: float) -> None:
        if finished_at - probe.at > PROBE_TIMEOUT_SECONDS:
            self.failed(finished_at)  # a broker that answers this slowly is in trouble: its answer is not used
        else:
            self.pending = probe

    def failed(self, at: float) -> None:
        self.trouble_at = at

    def check(self, positions: Mapping[Partition, int], earliest: Mapping[Partition, int], at: float) -> bool:
        """Move the horizon to the pending probe's time if the stored positions have reached its ends."""
        if self.pending is None or not applied_through(self.pending.ends, positions, earliest):
            return False
        self.horizon = max(self.horizon or self.pending.at, self.pending.at)
        self.pending = None
        self._moves.append((at, self.horizon))
        return True

    def horizon_as_of(self, at: float) -> float | None:
        """The horizon as it was at `at`: a second decider that must leave the first a head start (a safety net)
        measures it from when the horizon passed a due time, not from the due time (which a stalled horizon may
        have passed long ago)."""
        found = None
        for when, horizon in self._moves:
            if when > at:
                break
            found = horizon
        return found

    def behind(self, now: float) -> float | None:
        """Seconds between now and the horizon (None before the first)."""
        return None if self.horizon is None else max(0.0, now - self.horizon)
