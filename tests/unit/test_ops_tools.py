"""Pure parts of the operator tools: how dead letters read, timestamps, progress, which topics a replay moves."""

from __future__ import annotations

import argparse
import io

import faust
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from rich.console import Console

from orderflow.ops import add_parsers
from orderflow.ops.dlq import DeadLetter, describe, redrive_group, show_bytes
from orderflow.ops.progress import ProgressView
from orderflow.ops.replay import PartitionProgress, ReplayError, parse_timestamp, topics_of_app
from orderflow.runtime.dlq import Source, headers_for


def _record(headers: list[tuple[str, bytes]], key: bytes | None, value: bytes | None) -> ConsumerRecord:
    return ConsumerRecord("order.placed.dlq", 3, 17, 1_700_000_000_000, 0, key, value, None, 0, 0, headers)


def test_dead_letter_reads_the_runtime_headers() -> None:
    headers = headers_for(Source("order.placed", 5, 99, b"o-1", b"{"), "orders", "not JSON", "invalid")
    letter = DeadLetter.from_record(_record(headers, b"o-1", b"{"), "order.placed.dlq")
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("order.placed", 5, 99)
    assert (letter.service, letter.kind, letter.reason, letter.dlq_partition, letter.dlq_offset) == (
        "orders", "invalid", "not JSON", 3, 17)
    assert "from order.placed[5]@99" in describe(letter)


def test_dead_letter_without_headers_falls_back_to_the_dlq_name() -> None:
    letter = DeadLetter.from_record(_record([], None, None), "order.placed.dlq")
    assert (letter.source_topic, letter.source_offset, letter.reason) == ("order.placed", None, "(no reason header)")
    assert "(null)" in describe(letter)


def test_values_show_as_text_or_hex_and_are_cut() -> None:
    assert show_bytes(b'{"a": 1}') == '{"a": 1}'
    assert show_bytes(b"\xff\x00") == "hex:ff00"
    assert show_bytes(b"line\nbreak") == "line\\nbreak"
    long = show_bytes(b"x" * 1_000_000, limit=10)
    assert long.startswith("x" * 10) and long.endswith("(1000000 bytes)")


def test_redrive_group_is_per_source_topic() -> None:
    assert redrive_group("order.placed.dlq") == redrive_group("order.placed") == "orderflow-dlq-redrive-order.placed"


@pytest.mark.parametrize(("raw", "expected"), [
    ("1700000000000", 1_700_000_000_000),
    ("2023-11-14T22:13:20Z", 1_700_000_000_000),
    ("2023-11-14T22:13:20", 1_700_000_000_000),
    ("2023-11-15T00:13:20+02:00", 1_700_000_000_000),
])
def test_parse_timestamp(raw: str, expected: int) -> None:
    assert parse_timestamp(raw) == expected


def test_parse_timestamp_rejects_nonsense() -> None:
    with pytest.raises(ReplayError, match="ISO 8601"):
        parse_timestamp("yesterday")


def test_replay_moves_agent_topics_and_never_a_changelog() -> None:
    app = faust.App("ops-unit", broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    app.Table("counts", default=int)

    @app.agent(app.topic("order.status", value_serializer="raw"))
    async def first(stream: faust.StreamT) -> None:
        async for _ in stream:
            pass

    @app.agent(app.topic("cart.updated", "ops-unit-counts-changelog", value_serializer="raw"))
    async def second(stream: faust.StreamT) -> None:
        async for _ in stream:
            pass

    assert topics_of_app(app) == ("cart.updated", "order.status")


def test_progress_lag_and_done() -> None:
    tp = TopicPartition("t", 0)
    assert PartitionProgress(tp, 0, 10, 4, 12).lag == 8
    assert not PartitionProgress(tp, 0, 10, 9, 12).done
    assert PartitionProgress(tp, 0, 10, 10, 12).done


def test_progress_view_draws_a_bar_only_for_partitions_with_work() -> None:
    out = io.StringIO()
    view = ProgressView(Console(file=out, width=140, force_terminal=False))
    with view:
        view.update([PartitionProgress(TopicPartition("t", 0), 0, 10, 10, 10),
                     PartitionProgress(TopicPartition("t", 1), 5, 5, 5, 5)])
    text = out.getvalue()
    assert "t[0]" in text and "10/10" in text and "t[1]" not in text


def test_commands_parse() -> None:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"), lambda: "b:1", lambda: "postgresql://x/y")
    args = parser.parse_args(["replay", "all", "--from", "2024-01-01T00:00:00Z"])
    assert (args.service, args.from_time) == ("all", "2024-01-01T00:00:00Z")
    assert parser.parse_args(["dlq", "redrive", "order.placed", "--dry-run"]).dry_run
    assert parser.parse_args(["dlq", "list", "order.placed", "--limit", "5"]).limit == 5
    assert parser.parse_args(["rebuild", "inventory"]).service == "inventory"
    with pytest.raises(SystemExit):
        parser.parse_args(["replay", "cart", "--from-earliest", "--from", "1"])
