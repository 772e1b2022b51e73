"""The partition gate: what a worker applies, drops or reads again, from the stored position alone."""

from __future__ import annotations

from orderflow.runtime.positions import RESEEK_SECONDS, PartitionGate, Verdict, only_forward


def test_records_from_the_position_on_are_applied_in_order() -> None:
    gate = PartitionGate(10)
    assert [gate.admit(o, 0.0) for o in (10, 11, 12)] == [Verdict.APPLY] * 3
    gate.committed(13)
    assert gate.position == 13 and gate.admit(13, 0.0) is Verdict.APPLY


def test_records_below_the_position_are_dropped_as_applied_already() -> None:
    gate = PartitionGate(10)
    assert [gate.admit(o, 0.0) for o in (7, 8, 9)] == [Verdict.DROP] * 3
    assert gate.admit(10, 0.0) is Verdict.APPLY


def test_no_stored_position_and_no_known_start_takes_the_first_record() -> None:
    gate = PartitionGate(None)
    assert gate.admit(42, 0.0) is Verdict.APPLY
    assert gate.admit(44, 0.0) is Verdict.ASK  # but the next must follow it


def test_no_stored_position_starts_where_the_group_starts_not_at_the_first_record() -> None:
    """Seen in a rebalance loop run: order.flagged[7] had nothing stored, faust dropped offset 0 at the
    rebalance, offset 1 came first and was taken; the merchant's refund alert of offset 0 was never sent."""
    gate = PartitionGate(None, start=0)
    assert gate.reached() == 0
    assert gate.admit(1, 0.0) is Verdict.ASK
    assert gate.resolve(1, 0, 0.0) is Verdict.SEEK and gate.seek_to == 0
    assert gate.admit(0, 0.1) is Verdict.APPLY
    gate.committed(1)
    assert gate.position == 1 and gate.admit(1, 0.2) is Verdict.APPLY


def test_a_start_from_a_committed_offset_drops_what_lies_before_it() -> None:
    gate = PartitionGate(None, start=5)
    assert gate.admit(3, 0.0) is Verdict.DROP
    assert gate.admit(5, 0.0) is Verdict.APPLY
    gate.rolled_back()
    assert gate.next_wanted() == 5  # nothing stored yet: back to the start


def test_a_jump_asks_the_log_and_seeks_back_when_the_records_are_there() -> None:
    gate = PartitionGate(10)
    assert gate.admit(15, 0.0) is Verdict.ASK
    assert gate.resolve(15, 10, 0.0) is Verdict.SEEK  # the log has 10: faust lost 10..14 on the way
    assert gate.seek_to == 10
    assert gate.admit(16, 0.1) is Verdict.STALE  # fetched before the seek
    assert gate.admit(10, 0.2) is Verdict.APPLY  # the re-read
    assert gate.seek_to is None


def test_the_jump_coming_again_after_the_seek_is_not_taken_for_a_hole() -> None:
    """Seen in a rebalance run: the record that jumped came a second time, from a fetch made before the seek;
    taking it for "the offsets before it are absent" skipped offset 20, which was in the log."""
    gate = PartitionGate(20)
    assert gate.admit(21, 0.0) is Verdict.ASK
    assert gate.resolve(21, 20, 0.0) is Verdict.SEEK
    assert gate.admit(21, 0.1) is Verdict.STALE  # the same record again, fetched before the seek
    assert gate.admit(20, 0.2) is Verdict.APPLY
    assert gate.admit(21, 0.2) is Verdict.APPLY


def test_offsets_the_log_does_not_have_are_passed_over() -> None:
    gate = PartitionGate(10)
    assert gate.admit(15, 0.0) is Verdict.ASK
    assert gate.resolve(15, 15, 0.0) is Verdict.APPLY  # 10..14: retention or transaction markers
    assert gate.admit(16, 0.0) is Verdict.APPLY
    gate.committed(17)
    assert gate.position == 17 and gate.expected is None


def test_a_hole_then_records_faust_lost_seeks_to_the_first_one_there() -> None:
    gate = PartitionGate(10)
    assert gate.admit(15, 0.0) is Verdict.ASK
    assert gate.resolve(15, 12, 0.0) is Verdict.SEEK  # 10, 11 absent; 12..14 there but not handed over
    assert gate.seek_to == 12
    assert gate.admit(12, 0.1) is Verdict.APPLY


def test_no_answer_from_the_log_passes_nothing_over() -> None:
    gate = PartitionGate(10)
    assert gate.admit(15, 0.0) is Verdict.ASK
    assert gate.resolve(15, None, 0.0) is Verdict.SEEK
    assert gate.seek_to == 10 and gate.next_wanted() == 10


def test_a_seek_whose_record_never_comes_is_made_again() -> None:
    gate = PartitionGate(10)
    gate.admit(15, 0.0)
    gate.resolve(15, 10, 0.0)
    assert gate.overdue(RESEEK_SECONDS / 2) is None
    assert gate.overdue(RESEEK_SECONDS) == 10
    assert gate.overdue(RESEEK_SECONDS + 0.1) is None  # the clock restarts at each seek
    assert gate.admit(20, RESEEK_SECONDS * 2 + 0.1) is Verdict.ASK  # stale records long after: ask again


def test_a_rolled_back_batch_is_admitted_again() -> None:
    gate = PartitionGate(10)
    assert gate.admit(10, 0.0) is Verdict.APPLY
    gate.rolled_back()
    assert gate.admit(10, 0.0) is Verdict.APPLY


def test_broker_commits_only_move_forward() -> None:
    """Seen in rebalance loop runs: order.flagged[5] committed at 2, then at 1 from a position read earlier."""
    last = {"a": 2, "b": 5}
    assert only_forward({"a": 1, "b": 6, "c": 0}, last) == {"b": 6, "c": 0}
    assert only_forward({"a": 2}, last) == {}
