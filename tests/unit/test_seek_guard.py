"""The seek guard's rule: after a seek, only the record at the seek position goes through at once."""

from orderflow.runtime.seek_guard import Verdict, after_seek


def test_without_a_pending_seek_every_record_goes_through() -> None:
    assert after_seek(None, 42, None) is Verdict.DELIVER


def test_the_record_at_the_seek_position_goes_through() -> None:
    assert after_seek(8, 8, None) is Verdict.DELIVER


def test_a_record_behind_the_seek_position_leaves_the_seek_pending() -> None:
    assert after_seek(8, 5, None) is Verdict.BEHIND


def test_a_record_beyond_the_seek_position_was_fetched_before_it_so_seek_again() -> None:
    assert after_seek(8, 14, None) is Verdict.SEEK_AGAIN


def test_the_same_jump_after_seeking_again_is_a_hole_in_the_log() -> None:
    assert after_seek(8, 14, (8, 14)) is Verdict.HOLE


def test_a_different_jump_is_not_taken_for_the_earlier_hole() -> None:
    assert after_seek(8, 15, (8, 14)) is Verdict.SEEK_AGAIN
