"""The inputs' horizon (orderflow/runtime/current.py): decisions on the clock wait until the inputs are applied."""

from orderflow.runtime.current import PROBE_TIMEOUT_SECONDS, InputsClock, Probe, applied_through, behind

ENDS = {("order.placed", 0): 10, ("order.placed", 1): 0, ("checkout.started", 0): 5}


def test_applied_through_needs_every_partition_at_its_end() -> None:
    positions = {("order.placed", 0): 10, ("checkout.started", 0): 5}
    earliest = {("order.placed", 1): 0}
    assert applied_through(ENDS, positions, earliest)
    assert not applied_through(ENDS, {**positions, ("order.placed", 0): 9}, earliest)


def test_a_partition_never_read_is_current_only_when_empty() -> None:
    positions = {("order.placed", 0): 10, ("order.placed", 1): 0}
    assert not applied_through(ENDS, positions, {})  # checkout.started/0: no position, earliest unknown
    assert not applied_through(ENDS, positions, {("checkout.started", 0): 2})  # records 2..4 wait in it
    assert applied_through(ENDS, positions, {("checkout.started", 0): 5})  # retention emptied it


def test_behind_names_each_partition_short_of_its_wanted_offset() -> None:
    wanted = {("stock.adjusted", 0): 4, ("stock.adjusted", 1): 9, ("stock.adjusted", 2): 3}
    positions = {("stock.adjusted", 0): 4, ("stock.adjusted", 1): 7}
    assert behind(wanted, positions, {("stock.adjusted", 2): 3}) == {("stock.adjusted", 1): (7, 9)}
    # no position stored and the group starts before the wanted offset: a record written before it is unread
    assert behind(wanted, positions, {("stock.adjusted", 2): 1}) == {
        ("stock.adjusted", 1): (7, 9), ("stock.adjusted", 2): (1, 3)}
    assert behind(wanted, positions, {})[("stock.adjusted", 2)] == (None, 3)


def test_the_horizon_moves_to_the_probe_once_its_ends_are_applied() -> None:
    clock = InputsClock(settle_seconds=10)
    assert clock.horizon is None and clock.wants_probe(100.0)
    clock.probed(Probe(100.0, ENDS), finished_at=100.1)
    assert not clock.wants_probe(101.0)  # one probe at a time
    behind = {("order.placed", 0): 3, ("checkout.started", 0): 5, ("order.placed", 1): 0}
    assert not clock.check(behind, {}, 101.0)
    assert clock.horizon is None
    assert clock.check({**behind, ("order.placed", 0): 10}, {}, 102.0)
    assert clock.horizon == 100.0 and clock.pending is None
    assert clock.behind(104.0) == 4.0


def test_broker_trouble_holds_the_horizon_until_it_has_settled() -> None:
    clock = InputsClock(settle_seconds=10)
    clock.probed(Probe(100.0, ENDS), finished_at=100.1)
    clock.check(dict(ENDS), {}, 100.5)
    clock.failed(105.0)  # the broker went away: no answer
    clock.failed(170.0)  # ... still away 65 s later
    assert not clock.wants_probe(171.0)
    assert not clock.wants_probe(179.9)  # producers that buffered during the outage are still delivering
    assert clock.wants_probe(180.0)
    assert clock.horizon == 100.0  # it waited where it was, through the outage


def test_a_slow_answer_counts_as_trouble_and_is_not_used() -> None:
    clock = InputsClock(settle_seconds=10)
    clock.probed(Probe(100.0, ENDS), finished_at=100.0 + PROBE_TIMEOUT_SECONDS + 1)
    assert clock.pending is None
    assert not clock.wants_probe(110.0)


def test_the_horizon_never_moves_back() -> None:
    clock = InputsClock()
    clock.horizon = 200.0
    clock.probed(Probe(150.0, {}), finished_at=150.1)
    assert clock.check({}, {}, 150.5)
    assert clock.horizon == 200.0


def test_the_horizon_as_it_was_gives_a_safety_net_its_head_start_after_a_stall() -> None:
    clock = InputsClock()
    for probe_at, seen_at in ((100.0, 101.0), (101.0, 102.0), (130.0, 131.0)):  # stalled 101 -> 130
        clock.probed(Probe(probe_at, {}), finished_at=probe_at)
        clock.check({}, {}, seen_at)
    assert clock.horizon_as_of(99.0) is None
    assert clock.horizon_as_of(102.5) == 101.0
    assert clock.horizon_as_of(131.0) == 130.0
    # a checkout due at 120 became decidable at 131: five seconds later the horizon of 5 s before covers it
    assert clock.horizon_as_of(131.0 - 5) == 101.0 and clock.horizon_as_of(136.0 - 5) == 130.0
