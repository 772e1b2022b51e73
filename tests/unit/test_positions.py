"""The partition gate: what a worker applies, drops or reads again, from the stored position alone."""

from __future__ import annotations

from orderflow.runtime.positions import RESEEK_SECONDS, PartitionGate, Verdict


def test_records_from_the_position_on_are_applied_in_order() -> None:
    gate = PartitionGate(10)
    assert [gate.admit(o, 0.0) for o in (10, 11, 12)] == [Verdict.APPLY] * 3
    gate.committed(13)
    assert gate.position == 13 and gate.admit(13, 0.0) is Verdict.APPLY


def test_records_below_the_position_are_dropped_as_applied_already() -> None:
    gate = PartitionGate(10)
    assert [gate.admit(o, 0.0) for o in (7, 8, 9)] == [Verdict.DROP] * 3
    assert gate.admit(10, 0.0) is Verdict.APPLY


def test_no_stored_position_takes_the_first_record() -> None:
    gate = PartitionGate(None)
    assert gate.admit(42, 0.0) is Verdict.APPLY
    assert gate.admit(44, 0.0) is Verdict.SEEK  # but the next must follow it


def test_a_jump_seeks_back_and_records_fetched_before_the_seek_are_held() -> None:
    gate = PartitionGate(10)
    assert gate.admit(15, 0.0) is Verdict.SEEK
    assert gate.seek_to == 10
    assert gate.admit(16, 0.1) is Verdict.STALE  # fetched before the seek
    assert gate.admit(10, 0.2) is Verdict.APPLY  # the re-read
    assert gate.seek_to is None


def test_the_same_jump_after_the_seek_is_a_hole_in_the_log() -> None:
    gate = PartitionGate(10)
    assert gate.admit(15, 0.0) is Verdict.SEEK
    assert gate.admit(15, 0.1) is Verdict.APPLY  # first record after the seek again: 10..14 are not in the log
    assert gate.admit(16, 0.1) is Verdict.APPLY


def test_a_seek_whose_record_never_comes_is_made_again() -> None:
    gate = PartitionGate(10)
    gate.admit(15, 0.0)
    assert gate.overdue(RESEEK_SECONDS / 2) is None
    assert gate.overdue(RESEEK_SECONDS) == 10
    assert gate.overdue(RESEEK_SECONDS + 0.1) is None  # the clock restarts at each seek
    assert gate.admit(20, RESEEK_SECONDS * 2 + 0.1) is Verdict.SEEK  # stale records long after: seek again too


def test_a_rolled_back_batch_is_admitted_again() -> None:
    gate = PartitionGate(10)
    assert gate.admit(10, 0.0) is Verdict.APPLY
    gate.rolled_back()
    assert gate.admit(10, 0.0) is Verdict.APPLY
