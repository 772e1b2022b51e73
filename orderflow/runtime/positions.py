"""Consumer positions: which records of a partition a handler may apply, decided from the stored position alone.

A handler's transaction writes, per (consumer group, topic, partition), the next offset to read
(`consumer_positions`), in the same transaction as the effects of the records before it. That position, not the
broker's committed offset nor faust's ack bookkeeping, says what was applied. This module is the pure rule that
sits between faust's stream and the handler (no I/O; the runtime does the seeks it asks for):

- a record below the position was applied already: it is dropped (redelivery after a rebalance, a crash, a seek);
- the record at the position is applied, and the position moves past it once the transaction committed;
- a record beyond the position means records in between either did not come (faust hands out records fetched
  before a seek, drops records read again after one, acks records dropped at a rebalance) or are not in the log
  (retention; a transactional producer's commit markers). The gate cannot tell which from the stream: it asks
  (ASK) and the runtime reads the log (`probe.py`) for the first record at or after the position. Offsets before
  that record are truly absent and are passed over; the record itself must then come, so the partition is sought
  back to it unless it is the one in hand. Records beyond a pending seek were fetched before it: they are dropped
  and read again.
- a seek whose first record never came is made again after `RESEEK_SECONDS` (faust's fetch loop can overwrite the
  read offset a seek reset and then silently drop the records read again).

A partition whose consumer has no stored position yet starts where faust starts: the broker's committed offset, else
the earliest one in the log (`start`, looked up by the runtime). The first record applied stores the position. The
start is not taken from the first record that comes: faust can drop the records fetched around a rebalance, and a
first record at offset 1 would then pass over offset 0 unseen (a rebalance loop run lost an order.flagged record
that way, 2026-12-02).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

RESEEK_SECONDS = 2.0


class Verdict(enum.Enum):
    APPLY = "apply"
    DROP = "drop"  # below the position: applied already
    STALE = "stale"  # beyond a pending seek's offset: fetched before the seek, read again later
    SEEK = "seek"  # records before this one must come first: drop it and seek back to them
    ASK = "ask"  # beyond the position: which offset comes next in the log? (`resolve` with the answer)


@dataclass
class PartitionGate:
    """The state of one partition: its position and the seek in flight, if any."""

    position: int | None  # next offset to apply, as stored; None: nothing stored yet
    start: int | None = None  # with nothing stored: where the group starts (None: not known, the first record sets it)
    seek_to: int | None = None  # a seek made to this offset whose first record has not come yet
    jump: int | None = None  # the record beyond the position that made the seek
    sought_at: float = 0.0
    expected: int | None = field(default=None, init=False)  # next offset after records admitted, not yet committed

    def next_wanted(self) -> int | None:
        return self.expected if self.expected is not None else self.reached()

    def reached(self) -> int | None:
        """The next offset to apply as committed: the stored position, else where the group starts."""
        return self.position if self.position is not None else self.start

    def admit(self, offset: int, now: float) -> Verdict:
        """Decide for the record at `offset`; APPLY moves the expected offset past it."""
        wanted = self.next_wanted()
        if wanted is None or offset == wanted:
            return self._take(offset)
        if offset < wanted:
            return Verdict.DROP
        if self.seek_to is not None and now - self.sought_at < RESEEK_SECONDS:
            return Verdict.STALE
        self.jump = offset
        return Verdict.ASK

    def resolve(self, offset: int, first: int | None, now: float) -> Verdict:
        """The log's answer to ASK for the record at `offset`: its first record at or after the offset wanted
        (None: not known, so nothing is passed over). Absent offsets before it are passed over; the record in hand
        is applied if it is that one, else the partition is read again from that one."""
        wanted = self.next_wanted()
        if wanted is not None and first is not None and first > wanted:
            self.expected = first  # offsets wanted..first-1 are not in the log
            wanted = first
        if wanted is None or offset == wanted:
            return self._take(offset)
        if offset < wanted:
            return Verdict.DROP
        self.seek_to, self.sought_at = wanted, now
        return Verdict.SEEK

    def _take(self, offset: int) -> Verdict:
        self.expected = offset + 1
        self.seek_to = self.jump = None
        return Verdict.APPLY

    def overdue(self, now: float) -> int | None:
        """The offset to seek to again when a seek's first record has not come for RESEEK_SECONDS."""
        if self.seek_to is not None and now - self.sought_at >= RESEEK_SECONDS:
            self.sought_at = now
            return self.seek_to
        return None

    def committed(self, next_offset: int) -> None:
        """The transaction that applied records up to `next_offset - 1` committed."""
        self.position = next_offset
        if self.expected is not None and self.expected <= next_offset:
            self.expected = None

    def rolled_back(self) -> None:
        """The transaction failed: records admitted since the position will come again (or be re-admitted)."""
        self.expected = None


def only_forward(offsets: dict[Any, int], last_committed: dict[Any, int]) -> dict[Any, int]:
    """The broker commits worth making: those beyond what this worker last committed for each partition. A
    position read before an await can be older than one committed meanwhile; committing it would move the
    broker's offset back and lag tools would show applied records as left (seen in rebalance loop runs)."""
    return {tp: offset for tp, offset in offsets.items() if offset > last_committed.get(tp, -1)}
