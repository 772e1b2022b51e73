"""A guard on faust 0.15.3's offset commits: never commit past a record that was neither processed nor proven absent.

Why: faust's `Consumer._new_offset` lets the record *at* the committed offset go uncommitted-yet-skipped: it commits
the first run of acknowledged offsets as soon as that run starts at most one past the committed offset
(`min(acked) - committed > 1` is its only check, and none at all when the committed offset is 0). After a seek to
offset C, a first record at C+1 therefore commits past C whether or not C was ever handed to a stream. Seen in cart
workers restarted after SIGKILL (`order.status[1]: offset 17 not processed although later ones were (18..34)`),
where C was an ack refused by `Runtime._guard_acks` or a record faust's fetch loop dropped around its recovery seek.

The rule here: the offset to commit is the end of the run of *accounted* offsets that starts exactly at the floor
(the last commit, or the position the partition was sought to). Accounted means acknowledged by the streams, proven
absent by the seek guard (the same jump seen after two seeks), or in one of faust's gaps (a jump between two records
delivered one after the other) on a compacted topic. A topic that is not compacted has nothing missing from the
middle of its log (no transactional producer writes to these topics), so a jump there means records lost on the way
from the fetch: they are read again (`suspect_jump`) instead of being counted as processed.

A floor that stays unaccounted while later offsets are acknowledged is an anomaly too: the seek guard then reads the
partition again from the floor (harmless: handlers are idempotent) rather than skip it or stall.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

HELD_SECONDS = 3.0
"""How long the record at the floor may stay unaccounted while later ones are acknowledged before it is read again."""


def next_commit(floor: int | None, acked: Iterable[int], absent: Sequence[tuple[int, int]] = ()) -> int | None:
    """The offset to commit: one past the run of accounted offsets that starts at `floor`; None when `floor` itself
    is not accounted. `absent` holds [start, end) ranges known not to be in the log. Without a floor (a partition
    never committed nor sought) the run starts at the lowest acknowledged offset, as faust does."""
    done = set(acked)
    if floor is None:
        if not done:
            return None
        floor = min(done)
    end = floor
    while True:
        if end in done:
            end += 1
            continue
        covering = [stop for start, stop in absent if start <= end < stop]
        if not covering:
            break
        end = max(covering)
    return end if end > floor else None


def effective_floor(sought: int | None, committed: int | None) -> int | None:
    """Where the run to commit must start: the later of the position sought to and what this consumer committed
    since (a commit already on its way when the partition was sought lands after the seek; faust then refuses acks
    below it, so waiting for them would wait forever)."""
    if sought is None or committed is None:
        return committed if sought is None else sought
    return max(sought, committed)


def held_too_long(since: float | None, now: float) -> bool:
    return since is not None and now - since >= HELD_SECONDS


# --- the patch ------------------------------------------------------------------------------------------------


def _state(consumer: Any) -> Any:
    if not hasattr(consumer, "_orderflow_floor"):
        consumer._orderflow_floor = {}  # tp -> the first offset not yet committed (or sought to)
        consumer._orderflow_absent = {}  # tp -> [(start, end)] ranges proven absent from the log
        consumer._orderflow_held = {}  # tp -> (floor, since): later offsets acknowledged, the floor not
        consumer._orderflow_suspects = {}  # tp -> the first offset of a jump to read again
    return consumer


def set_floor(consumer: Any, tp: Any, offset: int | None, *, committed: bool) -> None:
    """The partition was sought to `offset`.

    To its committed offset (`committed`; None: the group has none, the position came from auto.offset.reset):
    what lies before is no longer this consumer's business, and commits may start. Elsewhere (reading again): the
    floor never moves up, records before the seek position may still be on their way through the streams; and
    before the first seek to the committed offset nothing is committed at all.
    """
    c = _state(consumer)
    if not committed:
        if tp not in c._orderflow_floor or offset is None:
            return
        floor = c._orderflow_floor[tp]
        offset = offset if floor is None else min(floor, offset)
    c._orderflow_floor[tp] = offset
    if offset is not None:
        c._orderflow_absent[tp] = [r for r in c._orderflow_absent.get(tp, []) if r[1] > offset]
    c._orderflow_held.pop(tp, None)


def mark_absent(consumer: Any, tp: Any, start: int, end: int) -> None:
    """Offsets [start, end) are not in the log (the seek guard saw the same jump over them twice)."""
    _state(consumer)._orderflow_absent.setdefault(tp, []).append((start, end))


def is_absent(consumer: Any, tp: Any, start: int, end: int) -> bool:
    """Whether [start, end) lies within one range already proven absent."""
    return any(a <= start and end <= b for a, b in _state(consumer)._orderflow_absent.get(tp, ()))


def suspect_jump(consumer: Any, tp: Any, start: int) -> None:
    """Records from `start` on were skipped between two deliveries on a topic that has no holes: read them again."""
    suspects = _state(consumer)._orderflow_suspects
    suspects[tp] = min(start, suspects.get(tp, start))


def take_suspects(consumer: Any) -> dict[Any, int]:
    c = _state(consumer)
    taken, c._orderflow_suspects = c._orderflow_suspects, {}
    return taken


def forget(consumer: Any, tps: Iterable[Any]) -> None:
    c = _state(consumer)
    for tp in tps:
        c._orderflow_floor.pop(tp, None)
        c._orderflow_absent.pop(tp, None)
        c._orderflow_held.pop(tp, None)
        c._orderflow_suspects.pop(tp, None)


def has_repairs(consumer: Any) -> bool:
    """Whether some partition waits to be read again (a held floor or a suspect jump)."""
    c = _state(consumer)
    return bool(c._orderflow_held or c._orderflow_suspects)


def held_partitions(consumer: Any, now: float) -> list[tuple[Any, int]]:
    """Partitions whose floor has been unaccounted too long while later offsets were acknowledged."""
    c = _state(consumer)
    return [(tp, floor) for tp, (floor, since) in list(c._orderflow_held.items()) if held_too_long(since, now)]


def _merge_gaps(consumer: Any, tp: Any, acked: list[int]) -> None:
    """faust's own gap bookkeeping (jumps between consecutively delivered records), folded into `acked` as it does."""
    gaps = consumer._gap[tp]
    if not gaps or not acked:
        return
    highest = max(acked)
    found = sorted(gaps.overlap(0, highest), key=lambda interval: interval.begin)
    if found:
        filled = [o for interval in found for o in range(interval.begin, interval.end)]
        acked.extend(filled)
        gaps.chop(0, max(filled[-1], highest + 1))


def new_offset(consumer: Any, tp: Any) -> int | None:
    """Replacement for faust's `Consumer._new_offset` (same contract: consumes the acknowledged offsets it commits)."""
    c = _state(consumer)
    acked: list[int] = consumer._acked[tp]
    if not acked:
        return None
    if tp not in c._orderflow_floor:
        # not yet sought to its committed offset since it was assigned: faust hands out records before that seek,
        # and what it fetched then is not to be trusted (see seek_guard); commit nothing until the seek
        return None
    _merge_gaps(consumer, tp, acked)
    floor = effective_floor(c._orderflow_floor[tp], consumer._committed_offset[tp])
    offset = next_commit(floor, acked, c._orderflow_absent.get(tp, ()))
    if offset is None:
        if floor is not None and max(acked) > floor and tp not in c._orderflow_held:
            c._orderflow_held[tp] = (floor, time.monotonic())
            log.warning("%s[%s]: offset %s not processed although later ones were (%s..%s); not committing past it",
                        tp.topic, tp.partition, floor, min(acked), max(acked))
        return None
    if tp in c._orderflow_held:
        log.info("%s[%s]: offset %s accounted for; committing up to %s", tp.topic, tp.partition,
                 c._orderflow_held.pop(tp)[0], offset)
    keep = [o for o in acked if o >= offset]
    acked[:] = sorted(set(keep))
    consumer._acked_index[tp].intersection_update(keep)
    c._orderflow_floor[tp] = offset
    c._orderflow_absent[tp] = [r for r in c._orderflow_absent.get(tp, []) if r[1] > offset]
    return offset
