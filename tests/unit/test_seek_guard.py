"""The seek guard's rule: after a seek, only the record at the seek position goes through at once."""

from orderflow.runtime.seek_guard import STALL_SECONDS, Verdict, after_seek, stalled


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


def test_a_seek_whose_record_never_came_while_fetching_went_on_is_stalled() -> None:
    assert stalled(23, 59, STALL_SECONDS)


def test_a_seek_not_fetched_past_yet_is_not_stalled_however_long_it_waits() -> None:
    assert not stalled(23, 23, 600.0)


def test_a_fresh_seek_or_an_unknown_position_is_not_stalled() -> None:
    assert not stalled(23, 59, STALL_SECONDS / 2)
    assert not stalled(23, None, 600.0)
