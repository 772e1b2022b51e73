"""A guard on faust 0.15.3's consumer: no record fetched before a seek is delivered after it.

Why: faust seeks its source partitions back to their committed offsets after a table recovery and whenever it
fetched while its flow was stopped. The fetch loop may still hold records fetched from the old position and hands
them out after the seek. Its bookkeeping then goes wrong twice over: the jump from the committed offset to the stale
record is taken for a gap in the log (offsets "acked" without ever being processed), and the records read again from
the committed offset are dropped as already read. Seen here as a cart worker, restarted after SIGKILL, committing
past checkout.started events it never handled.

The fetch loop also sets its read offset from the record it just handed out once the stream took it; a record
handed out just before the seek thereby overwrites the seek's reset and the records from the seek position up to it
are dropped as already read. The guard resets the read offset when it lets the record at the seek position through.

The guard: after a seek of an acknowledged (source) partition, the next record handed out must be the one at the
seek position. A record further on is held back and the partition sought again; only when the very same jump comes
back after that second seek is it a real hole in the log (compaction, retention) and the record goes through.
Changelog partitions (faust's own recovery reads them with acks off) are left alone.

And a watchdog: records fetched around the seek can also vanish without ever reaching the guard, the fetch position
left past them (seen once: a restarted cart worker read nothing on six partitions for minutes while they lagged,
until new events arrived). Checked before each fetch, when every record fetched so far has been handed out: a seek
whose record never came, although the fetch position has moved past it, is made again; so is a seek to an offset
that the commit guard (commit_guard.py) has held too long, unprocessed while later ones were.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from faust.transport import consumer as faust_consumer

from contracts import topics
from orderflow.runtime import commit_guard

log = logging.getLogger(__name__)

_INSTALLED = False


class Verdict(enum.Enum):
    DELIVER = "deliver"  # no seek pending, or the record at the seek position
    BEHIND = "behind"  # before the seek position: faust drops it as already read; the seek stays pending
    SEEK_AGAIN = "seek again"  # beyond the seek position, first time: most likely fetched before the seek
    HOLE = "hole"  # the same jump after a second seek: the offsets in between are not in the log


def after_seek(expected: int | None, offset: int, last_jump: tuple[int, int] | None) -> Verdict:
    """What to do with the record at `offset` of a partition sought to `expected` (None: no seek pending)."""
    if expected is None or offset == expected:
        return Verdict.DELIVER
    if offset < expected:
        return Verdict.BEHIND
    return Verdict.HOLE if last_jump == (expected, offset) else Verdict.SEEK_AGAIN


STALL_SECONDS = 1.0


def stalled(expected: int, position: int | None, waited: float) -> bool:
    """A seek to `expected` whose record never came although the fetch position moved on to `position`."""
    return position is not None and position > expected and waited >= STALL_SECONDS


def _fetch_position(consumer: Any, tp: Any) -> int | None:
    """aiokafka's fetch position of `tp` (read across faust's consumer thread: a plain attribute read)."""
    state = consumer._thread._ensure_consumer()._subscription.subscription.assignment.state_value(tp)
    return state.position if state is not None and state.has_valid_position else None


def install() -> None:
    """Patch faust's Consumer class once per process (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    cls = faust_consumer.Consumer
    original_getmany = cls.getmany
    original_seek = cls.seek
    original_perform_seek = cls.perform_seek
    original_revoked = cls.on_partitions_revoked
    original_add_gap = cls._add_gap

    def state(consumer: Any) -> tuple[dict, dict]:
        if not hasattr(consumer, "_orderflow_sought"):
            consumer._orderflow_sought = {}  # tp -> the offset the next record must have
            consumer._orderflow_jumps = {}  # tp -> (expected, offset) of the jump held back last
            consumer._orderflow_sought_at = {}  # tp -> when that seek was made (monotonic)
        return consumer._orderflow_sought, consumer._orderflow_jumps

    def note_seek(consumer: Any, tp: Any, offset: int, *, committed: bool = False) -> None:
        sought, _ = state(consumer)
        sought[tp] = offset
        consumer._orderflow_sought_at[tp] = time.monotonic()
        commit_guard.set_floor(consumer, tp, offset, committed=committed)

    async def seek_again(consumer: Any, tp: Any, offset: int) -> bool:
        try:
            await seek(consumer, tp, offset)
            return True
        except Exception as exc:  # noqa: BLE001 - e.g. revoked meanwhile: its next owner seeks anyway
            log.warning("%s[%s]: seeking again to %s failed (%r)", tp.topic, tp.partition, offset, exc)
            return False

    async def unstall(consumer: Any) -> None:
        sought, _ = state(consumer)
        now = time.monotonic()
        for tp, expected in list(sought.items()):
            try:
                position = _fetch_position(consumer, tp)
            except Exception:  # noqa: BLE001 - no longer assigned: its next owner seeks anyway
                sought.pop(tp, None)
                continue
            if stalled(expected, position, now - consumer._orderflow_sought_at.get(tp, now)):
                log.info("%s[%s]: the record at %s never came although fetching went on to %s; seeking again",
                         tp.topic, tp.partition, expected, position)
                if not await seek_again(consumer, tp, expected):
                    sought.pop(tp, None)
        for tp, start in commit_guard.take_suspects(consumer).items():
            log.info("%s[%s]: records from %s were skipped on the way (the topic has no holes); reading them again",
                     tp.topic, tp.partition, start)
            await seek_again(consumer, tp, start)
        for tp, floor in commit_guard.held_partitions(consumer, now):
            if tp in sought:
                continue
            log.warning("%s[%s]: offset %s was never processed although later ones were; reading again from %s",
                        tp.topic, tp.partition, floor, floor)
            if not await seek_again(consumer, tp, floor):
                commit_guard.forget(consumer, [tp])

    async def seek(self: Any, partition: Any, offset: int) -> None:
        await original_seek(self, partition, offset)
        if offset is not None and offset >= 0 and self.app.topics.acks_enabled_for(partition.topic):
            note_seek(self, partition, offset)

    async def perform_seek(self: Any) -> None:
        sought, _ = state(self)
        await original_perform_seek(self)
        sought.clear()
        for tp in self.assignment():
            if not self.app.topics.acks_enabled_for(tp.topic):
                continue
            offset = self._read_offset.get(tp)
            if offset is None:
                commit_guard.set_floor(self, tp, None, committed=True)  # no committed offset: nothing to check
            else:
                note_seek(self, tp, offset, committed=True)

    async def on_partitions_revoked(self: Any, revoked: set) -> None:
        sought, jumps = state(self)
        for tp in revoked:
            sought.pop(tp, None)
            jumps.pop(tp, None)
        await original_revoked(self, revoked)
        commit_guard.forget(self, revoked)

    async def add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        spec = topics.BY_NAME.get(tp.topic)
        if spec is None or spec.compacted:
            await original_add_gap(self, tp, offset_from, offset_to)
        elif not commit_guard.is_absent(self, tp, offset_from, offset_to):  # else: a hole the guard verified
            commit_guard.suspect_jump(self, tp, offset_from)

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        sought, jumps = state(self)
        if self.flow_active and (sought or commit_guard.has_repairs(self)):
            await unstall(self)
        sought_again: set = set()  # partitions re-sought during this batch: the rest of it is stale for them
        async for tp, message in original_getmany(self, timeout):
            if tp in sought_again:
                continue
            expected = sought.get(tp)
            verdict = after_seek(expected, message.offset, jumps.get(tp))
            if verdict is Verdict.SEEK_AGAIN:
                jumps[tp] = (expected, message.offset)
                sought_again.add(tp)
                log.info("%s[%s]: record %s was fetched before the seek to %s; reading again from %s",
                         tp.topic, tp.partition, message.offset, expected, expected)
                await seek_again(self, tp, expected)
                continue
            if verdict is Verdict.HOLE:
                log.info("%s[%s]: offsets %s..%s are not in the log; going on from %s",
                         tp.topic, tp.partition, expected, message.offset - 1, message.offset)
                commit_guard.mark_absent(self, tp, expected, message.offset)
            if verdict is not Verdict.BEHIND:
                sought.pop(tp, None)
                jumps.pop(tp, None)
            if expected is not None and verdict is not Verdict.BEHIND:
                read = self._read_offset.get(tp)
                if read is not None and read > expected:
                    # the fetch loop set its read offset from a record handed out before the seek, after the seek
                    # had reset it: it would drop the records from the seek position up to there as already read
                    log.info("%s[%s]: read offset %s predates the seek to %s; reset so the records are not dropped",
                             tp.topic, tp.partition, read, expected)
                self._read_offset[tp] = expected
            yield tp, message

    cls.getmany = getmany
    cls.seek = seek
    cls.perform_seek = perform_seek
    cls.on_partitions_revoked = on_partitions_revoked
    cls._new_offset = commit_guard.new_offset
    cls._add_gap = add_gap
