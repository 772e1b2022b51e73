"""The windowed table's part in abandoned-checkout detection: what a sweep proposes, and proposals made again."""

from __future__ import annotations

import asyncio

from services.cart import detection


def test_an_entry_carries_one_due_time_per_reminder() -> None:
    assert detection.entry("s", "c", 100.0, (60, 3600)) == {"shop_id": "s", "cart_id": "c", "due": [160.0, 3700.0]}


def test_a_sweep_proposes_each_due_time_once_and_not_before_it() -> None:
    items = [((f"s/c{i}", [0, 60]), detection.entry("s", f"c{i}", 100.0, (10, 50))) for i in range(2)]
    items.append((("junk", [0, 60]), 7))  # not an entry: ignored
    seen: dict = {}
    assert detection.due_entries(items, 105.0, seen) == []
    assert detection.due_entries(items, 111.0, seen) == [(("s", "c0"), 110.0), (("s", "c1"), 110.0)]
    assert detection.due_entries(items, 112.0, seen) == [], "proposed once"
    assert detection.due_entries(items, 150.0, seen) == [(("s", "c0"), 150.0), (("s", "c1"), 150.0)]
    detection.forget_old(seen, 150.0 + detection.PROPOSED_MEMORY_SECONDS + 1)
    assert seen == {}


async def test_a_proposal_not_taken_is_made_again_until_taken(monkeypatch) -> None:
    monkeypatch.setattr(detection, "RETRY_SECONDS", 0.01)
    proposals = detection.Proposals()
    calls: list[dict] = []
    done = asyncio.Event()

    async def claim(batch: dict) -> set:
        calls.append(dict(batch))
        if len(calls) == 3:
            done.set()
            return set(batch)
        return set()

    task = asyncio.create_task(proposals.run(claim))
    proposals.propose(("s", "c"), "sweep")
    proposals.propose(("s", "c"), "window")
    await asyncio.wait_for(done.wait(), timeout=5)
    task.cancel()
    assert calls[0] == {("s", "c"): "sweep"}, "one claim per key, the first source named"
    assert len(calls) == 3


def test_the_due_index_pops_what_is_due_once_soonest_first_and_a_rebuild_reads_the_table() -> None:
    index = detection.DueIndex()
    index.add(detection.entry("s", "late", 100.0, (50,)))
    index.add(detection.entry("s", "soon", 100.0, (10, 40)))
    seen: dict = {}
    assert index.pop_due(105.0, seen) == []
    assert index.pop_due(145.0, seen) == [(("s", "soon"), 110.0), (("s", "soon"), 140.0)]
    table = [(("s/late", [0, 60]), detection.entry("s", "late", 100.0, (50,))),
             (("s/soon", [0, 60]), detection.entry("s", "soon", 100.0, (10, 40))), (("x", [0, 1]), None)]
    index.rebuild(table)
    assert len(index) == 3
    assert index.pop_due(151.0, seen) == [(("s", "late"), 150.0)], "what was proposed before is not proposed again"
