"""The commit guard's rule: commit only a run of accounted offsets that starts at the floor."""

from orderflow.runtime.commit_guard import HELD_SECONDS, held_too_long, next_commit


def test_a_run_from_the_floor_is_committed_to_its_end() -> None:
    assert next_commit(10, [10, 11, 12, 14]) == 13


def test_the_record_at_the_floor_unprocessed_holds_the_commit_although_the_next_ones_were() -> None:
    """faust commits 13 here (its check only refuses a first acked offset two or more past the committed one)."""
    assert next_commit(10, [11, 12]) is None


def test_floor_zero_is_a_floor_too() -> None:
    """faust skips its check altogether when the committed offset is 0."""
    assert next_commit(0, [3, 4, 5]) is None
    assert next_commit(0, [0, 1]) == 2


def test_offsets_proven_absent_count_as_accounted() -> None:
    assert next_commit(10, [14, 15], absent=[(10, 14)]) == 16


def test_an_absent_range_elsewhere_does_not_fill_the_floor() -> None:
    assert next_commit(10, [12, 13], absent=[(11, 12)]) is None


def test_acknowledged_offsets_below_the_floor_are_ignored() -> None:
    assert next_commit(10, [7, 8, 10]) == 11
    assert next_commit(10, [7, 8]) is None


def test_without_a_floor_the_run_starts_at_the_lowest_acknowledged_offset() -> None:
    assert next_commit(None, [5, 6, 8]) == 7
    assert next_commit(None, []) is None


def test_a_floor_held_a_while_is_read_again() -> None:
    assert not held_too_long(None, 100.0)
    assert not held_too_long(100.0, 100.0 + HELD_SECONDS / 2)
    assert held_too_long(100.0, 100.0 + HELD_SECONDS)


def test_a_jump_proven_absent_is_not_taken_for_records_lost_on_the_way() -> None:
    from orderflow.runtime import commit_guard

    class Consumer:
        pass

    consumer = Consumer()
    commit_guard.mark_absent(consumer, "tp", 10, 14)
    assert commit_guard.is_absent(consumer, "tp", 11, 14)
    assert not commit_guard.is_absent(consumer, "tp", 11, 15)
    commit_guard.suspect_jump(consumer, "tp", 20)
    commit_guard.suspect_jump(consumer, "tp", 17)
    assert commit_guard.take_suspects(consumer) == {"tp": 17}
    assert commit_guard.take_suspects(consumer) == {}


def test_the_floor_is_the_later_of_the_seek_position_and_what_was_committed_since() -> None:
    from orderflow.runtime.commit_guard import effective_floor

    assert effective_floor(17, 26) == 26  # a commit on its way during the seek landed after it
    assert effective_floor(17, 12) == 17
    assert effective_floor(None, 12) == 12
    assert effective_floor(17, None) == 17
    assert effective_floor(None, None) is None
