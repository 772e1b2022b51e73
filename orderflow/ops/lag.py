"""`orderflow lag`: how far each service's consumer group is behind, per topic and partition, from the broker.

Lag is the partition's end offset minus the group's committed offset. The workers commit to the broker, every
second, the positions they stored in PostgreSQL with their effects (`orderflow/runtime/app.py`), so this is what
each worker's `orderflow_consumer_lag` gauge says, up to a second behind. A partition of a topic the group reads but
never committed (no record there yet when it last ran) counts from the partition's earliest offset, where the
workers start (`-` in COMMITTED): a backlog there shows too, unlike in `kafka-consumer-groups --describe`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from orderflow.ops.broker import options
from orderflow.ops.topics import partitions_of


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None
    """None: never committed; the group starts at `start`, the partition's earliest offset."""
    start: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed if self.committed is not None else self.start))


def group_prefix() -> str:
    """The services' groups are `<ORDERFLOW_APP_ID_PREFIX>-<service>` (settings.Settings.app_id)."""
    return os.environ.get("ORDERFLOW_APP_ID_PREFIX", "orderflow") + "-"


async def measure(bootstrap: str, groups: list[str] | None = None) -> list[PartitionLag]:
    """Every committed partition of these groups (default: the services' groups), by group, topic, partition."""
    admin = AIOKafkaAdminClient(**options(bootstrap, request_timeout_ms=15000))
    consumer = AIOKafkaConsumer(**options(bootstrap, enable_auto_commit=False))
    try:
        await admin.start()
        await consumer.start()
        if not groups:
            prefix = group_prefix()
            groups = sorted(g for g, *_ in await admin.list_consumer_groups() if g.startswith(prefix))
        committed = {
            group: {
                tp: meta.offset
                for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
                if meta.offset >= 0
            }
            for group in groups
        }
        topics = sorted({tp.topic for offsets in committed.values() for tp in offsets})
        every = await partitions_of(admin, topics) if topics else []
        starts = await consumer.beginning_offsets(every) if every else {}
        ends = await consumer.end_offsets(every) if every else {}
    finally:
        await consumer.stop()
        await admin.close()
    rows = [
        PartitionLag(group, tp.topic, tp.partition, offsets.get(tp), starts[tp], ends[tp])
        for group, offsets in committed.items()
        for tp in every
        if tp.topic in {t.topic for t in offsets}
    ]
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


def table(rows: list[PartitionLag], *, nonzero: bool = False) -> list[str]:
    """The table `orderflow lag` prints: one line per partition, then each group's total."""
    lines = [f"{'GROUP':<28} {'TOPIC':<28} {'PARTITION':>9} {'COMMITTED':>10} {'END':>10} {'LAG':>8}"]
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.group] = totals.get(row.group, 0) + row.lag
        if nonzero and not row.lag:
            continue
        committed = "-" if row.committed is None else row.committed
        lines.append(f"{row.group:<28} {row.topic:<28} {row.partition:>9} {committed:>10} {row.end:>10} {row.lag:>8}")
    lines += [f"{group:<28} {'(total)':<28} {'':>9} {'':>10} {'':>10} {total:>8}" for group, total in totals.items()]
    if not rows:
        lines.append("no committed offsets of the services' consumer groups yet")
    return lines


def add_parser(sub: argparse._SubParsersAction, bootstrap: Callable[[], str]) -> None:
    p = sub.add_parser(
        "lag",
        help="consumer lag of each service's group, per topic and partition",
        description="End offset minus the group's committed offset, per partition (what each "
        "worker's orderflow_consumer_lag gauge shows, up to a second behind).",
    )
    p.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="GROUP",
        help="only this consumer group (repeatable); default: every <ORDERFLOW_APP_ID_PREFIX>-* group",
    )
    p.add_argument("--nonzero", action="store_true", help="only partitions that are behind (totals still shown)")
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    p.set_defaults(func=lambda args: cmd_lag(args, bootstrap()))


def cmd_lag(args: argparse.Namespace, bootstrap: str) -> int:
    if args.watch is None:
        print("\n".join(table(asyncio.run(measure(bootstrap, args.group)), nonzero=args.nonzero)))
        return 0
    while True:
        lines = table(asyncio.run(measure(bootstrap, args.group)), nonzero=args.nonzero)
        if sys.stdout.isatty():
            print("\033[H\033[J", end="")  # clear the screen: a live table
        print(time.strftime("%H:%M:%S"), f"(every {args.watch:g} s; Ctrl-C stops)")
        print("\n".join(lines), flush=True)
        time.sleep(args.watch)
