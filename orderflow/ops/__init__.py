"""Operator tools: dead-letter listing and redrive, parked outbox rows, consumer-group replay and read-model rebuild.

`orderflow.cli` plugs them in with `add_parsers(subparsers, bootstrap, database_url)`; each command is also a plain
async function so tests and scripts call it without the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_parsers(sub: argparse._SubParsersAction, bootstrap: Callable[[], str],
                database_url: Callable[[], str]) -> None:
    """Add `dlq`, `lag`, `kafka-tool`, `outbox`, `replay` and `rebuild`; the callables resolve the broker and database
    when a command runs."""
    from orderflow.ops import dlq, kafka_tool, lag, outbox, replay

    dlq.add_parser(sub, bootstrap)
    lag.add_parser(sub, bootstrap)
    kafka_tool.add_parser(sub, bootstrap)
    outbox.add_parser(sub, database_url)
    replay.add_parsers(sub, bootstrap, database_url)
