"""`orderflow replay SERVICE|all` and `orderflow rebuild SERVICE`: reprocess a service's input topics.

The storefront topics are the source of truth. A replay stops the service's workers, moves its consumer group's
stored positions (PostgreSQL, where they count) and committed offsets (broker, for tooling) back (to the earliest
offset or to a timestamp), starts the workers again and watches the group until it has caught up. Only the topics
its agents consume move; the changelog topics of its faust tables never do (they are its state, not its input).
Handlers are idempotent by key, so a replay changes nothing that was applied. A rebuild first empties the
service's read model in PostgreSQL, then replays from the earliest offset.

aiokafka 0.14's admin client cannot alter a group's offsets, so the reset commits them with a consumer that uses
the group's id without joining it: the broker accepts that only while the group has no members, which is the
same rule (and the same safety) as Kafka's `kafka-consumer-groups --reset-offsets`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from orderflow.ops.broker import options
from orderflow.ops.topics import UnknownTopic, partitions_of

Control = Callable[[], Awaitable[None] | None]
"""stop_workers / start_workers: sync (run in a thread) or async."""


class ReplayError(Exception):
    """An operator-facing problem, one line."""


@dataclass(frozen=True)
class ReplayTarget:
    """What a replay moves: one consumer group and the input topics of its agents."""

    service: str
    group_id: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class PartitionProgress:
    tp: TopicPartition
    start: int
    """The offset the group was reset to."""
    goal: int
    """The partition's end when the reset happened: reaching it means caught up."""
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)

    @property
    def done(self) -> bool:
        return self.committed >= self.goal


# --- what to replay ----------------------------------------------------------------------------------------


def topics_of_app(app: Any) -> tuple[str, ...]:
    """Input topics of a faust app's agents, without its tables' changelog topics."""
    changelogs = {table.changelog_topic.get_topic_name() for table in app.tables.values()}
    names: set[str] = set()
    for agent in app.agents.values():
        names.update(getattr(agent.channel, "topics", ()) or ())
    return tuple(sorted(names - changelogs))


def target_for(service: str, env: dict[str, str] | None = None) -> ReplayTarget:
    """Build the service's runtime (no connection is opened) to learn its group id and input topics."""
    from orderflow.services import get
    from orderflow.settings import load_settings

    spec = get(service)
    settings = load_settings(spec.name, spec.port_env, spec.default_port, env=os.environ if env is None else env)
    runtime = spec.build(settings)
    return ReplayTarget(spec.name, settings.app_id, topics_of_app(runtime.app))


def parse_timestamp(raw: str) -> int:
    """Epoch milliseconds from an ISO 8601 time (UTC unless it says otherwise) or from a number of milliseconds."""
    if raw.isdigit():
        return int(raw)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"--from {raw!r}: expected an ISO 8601 time (2024-05-01T12:00:00Z) or epoch ms") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# --- the Kafka side ----------------------------------------------------------------------------------------


class GroupOffsets:
    """Admin client and a plain consumer on one broker: partitions, offsets, group states and commits."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self.admin = AIOKafkaAdminClient(**options(bootstrap, request_timeout_ms=30000))
        self.consumer = AIOKafkaConsumer(**options(bootstrap, enable_auto_commit=False))

    async def __aenter__(self) -> GroupOffsets:
        try:
            await self.admin.start()
            await self.consumer.start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        try:
            return await partitions_of(self.admin, topics)
        except UnknownTopic as exc:
            raise ReplayError(str(exc)) from None

    async def members(self, group_id: str) -> int:
        (response,) = await self.admin.describe_consumer_groups([group_id])
        group = response.groups[0]
        state, members = group[2], group[5]
        return 0 if state in {"Empty", "Dead", ""} else len(members)

    async def wait_empty(self, group_id: str, timeout: float) -> None:
        """The broker refuses offset changes for a group with members; wait until the stopped workers have left."""
        deadline = time.monotonic() + timeout
        while (count := await self.members(group_id)) > 0:
            if time.monotonic() >= deadline:
                raise ReplayError(f"consumer group {group_id} still has {count} member(s) after {timeout:.0f}s: "
                                  "stop its workers first")
            await asyncio.sleep(0.5)  # polling interval while the group's members leave

    async def reset_points(self, tps: list[TopicPartition], from_ms: int | None) -> dict[TopicPartition, int]:
        """Earliest offsets, or the first offset at/after `from_ms` (the end where nothing is that recent)."""
        if from_ms is None:
            return await self.consumer.beginning_offsets(tps)
        found = await self.consumer.offsets_for_times({tp: from_ms for tp in tps})
        ends = await self.consumer.end_offsets(tps)
        return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}

    async def commit(self, group_id: str, offsets: dict[TopicPartition, int]) -> None:
        committer = AIOKafkaConsumer(**options(self._bootstrap, group_id=group_id, enable_auto_commit=False))
        await committer.start()
        try:
            committer.assign(list(offsets))
            await committer.commit(offsets)
        finally:
            await committer.stop()

    async def committed(self, group_id: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        offsets = await self.admin.list_consumer_group_offsets(group_id, partitions=tps)
        return {tp: max(0, offsets[tp].offset) if tp in offsets else 0 for tp in tps}

    async def ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return await self.consumer.end_offsets(tps)


# --- replay and rebuild ------------------------------------------------------------------------------------


async def _call(control: Control | None) -> None:
    if control is None:
        return
    if asyncio.iscoroutinefunction(control):
        await control()
    else:
        result = await asyncio.to_thread(control)
        if asyncio.iscoroutine(result):
            await result


@dataclass(frozen=True)
class PlanLine:
    """What a replay will do to one partition, for `--dry-run` and the record."""

    service: str
    tp: TopicPartition
    stored: int | None  # the position in PostgreSQL now (None: no row)
    committed: int  # the broker's committed offset now
    target: int  # where the replay starts it
    end: int


async def stored_positions(database_url: str, target: ReplayTarget) -> dict[tuple[str, int], int]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{target.service}".consumer_positions'):
            return {}
        rows = await conn.fetch(f'SELECT topic, partition, next_offset FROM "{target.service}".consumer_positions '
                                "WHERE consumer = $1", target.group_id)
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    finally:
        await conn.close()


async def plan_replay(bootstrap: str, database_url: str | None, targets: Sequence[ReplayTarget],
                      from_ms: int | None = None) -> list[PlanLine]:
    """Read-only: where each partition is now (PostgreSQL and broker) and where the replay would put it."""
    lines: list[PlanLine] = []
    async with GroupOffsets(bootstrap) as kafka:
        for target in targets:
            tps = await kafka.partitions(target.topics)
            points = await kafka.reset_points(tps, from_ms)
            ends = await kafka.ends(tps)
            committed = await kafka.committed(target.group_id, tps)
            stored = await stored_positions(database_url, target) if database_url else {}
            lines += [PlanLine(target.service, tp, stored.get((tp.topic, tp.partition)), committed[tp], points[tp],
                               ends[tp]) for tp in tps]
    return lines


async def write_positions(database_url: str, target: ReplayTarget, points: dict[TopicPartition, int],
                          ends: dict[TopicPartition, int]) -> None:
    """The replay's reset in PostgreSQL, where it counts: positions, and the goals the scanners wait for."""
    import asyncpg

    from orderflow.runtime.unit import set_goals, set_positions

    conn = await asyncpg.connect(database_url, server_settings={"search_path": target.service})
    try:
        if not await conn.fetchval("SELECT to_regclass('catch_up_goals') IS NOT NULL"):
            return  # never started (or not migrated yet): it starts from the broker's offsets, reset below
        async with conn.transaction():
            await set_positions(conn, target.group_id, {(tp.topic, tp.partition): o for tp, o in points.items()})
            await set_goals(conn, target.group_id, {(tp.topic, tp.partition): o for tp, o in ends.items()})
    finally:
        await conn.close()


async def replay(bootstrap: str, targets: Sequence[ReplayTarget], *, from_ms: int | None = None,
                 database_url: str | None = None,
                 stop_workers: Control | None = None, start_workers: Control | None = None,
                 before_reset: Control | None = None,
                 on_progress: Callable[[list[PartitionProgress]], None] | None = None,
                 group_empty_timeout: float = 90.0, catch_up_timeout: float | None = None,
                 poll: float = 0.5) -> list[PartitionProgress]:
    """Stop, reset every target group, run `before_reset`'s cleanup first if given, start, watch until caught up.

    The reset is written where it counts, the stored positions in PostgreSQL (with the goals that hold the
    abandon scanner and inventory's orders until the replay caught up), and on the broker for tooling. Without
    `database_url` only the broker moves, and the workers drop what their stored positions say is applied.
    The workers are started again even when the reset fails, so a failed replay never leaves a service down.
    """
    async with GroupOffsets(bootstrap) as kafka:
        plan = {t.group_id: await kafka.partitions(t.topics) for t in targets}
        by_group = {t.group_id: t for t in targets}
        await _call(stop_workers)
        try:
            for group_id in plan:
                await kafka.wait_empty(group_id, group_empty_timeout)
            await _call(before_reset)
            starts: dict[tuple[str, TopicPartition], int] = {}
            goals: dict[tuple[str, TopicPartition], int] = {}
            for group_id, tps in plan.items():
                points = await kafka.reset_points(tps, from_ms)
                ends = await kafka.ends(tps)
                if database_url is not None:
                    await write_positions(database_url, by_group[group_id], points, ends)
                await kafka.commit(group_id, points)
                for tp in tps:
                    starts[group_id, tp] = points[tp]
                    goals[group_id, tp] = ends[tp]
        finally:
            await _call(start_workers)
        return await watch(kafka, plan, starts, goals, on_progress, catch_up_timeout, poll)


async def watch(kafka: GroupOffsets, plan: dict[str, list[TopicPartition]],
                starts: dict[tuple[str, TopicPartition], int], goals: dict[tuple[str, TopicPartition], int],
                on_progress: Callable[[list[PartitionProgress]], None] | None, timeout: float | None,
                poll: float) -> list[PartitionProgress]:
    """Poll committed offsets against the ends until every partition reached its end as of the reset."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        progress = []
        for group_id, tps in plan.items():
            committed = await kafka.committed(group_id, tps)
            ends = await kafka.ends(tps)
            progress += [PartitionProgress(tp, starts[group_id, tp], goals[group_id, tp], committed[tp], ends[tp])
                         for tp in tps]
        if on_progress:
            on_progress(progress)
        if all(p.done for p in progress):
            return progress
        if deadline is not None and time.monotonic() >= deadline:
            behind = sum(max(0, p.goal - p.committed) for p in progress)
            raise ReplayError(f"not caught up after {timeout:.0f}s ({behind} events behind)")
        await asyncio.sleep(poll)  # polling interval of the progress display


async def truncate_read_model(database_url: str, schema: str) -> list[str]:
    """Empty every table of the service's schema except `schema_migrations`; returns the tables emptied."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        tables = [r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE' "
            "AND table_name <> 'schema_migrations' ORDER BY table_name", schema)]
        if tables:
            quoted = ", ".join(f'"{schema}"."{t}"' for t in tables)
            await conn.execute(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE")
        return tables
    finally:
        await conn.close()


async def history_deleted(bootstrap: str, target: ReplayTarget) -> list[str]:
    """Partitions whose earliest offset is no longer 0: retention (or DeleteRecords) removed history there."""
    async with GroupOffsets(bootstrap) as kafka:
        tps = await kafka.partitions(target.topics)
        earliest = await kafka.reset_points(tps, None)
    return [f"{tp.topic}[{tp.partition}] starts at {offset}" for tp, offset in sorted(earliest.items()) if offset > 0]


async def rebuild(bootstrap: str, database_url: str, target: ReplayTarget, *, schema: str | None = None,
                  allow_lost_history: bool = False, **replay_options: Any) -> list[PartitionProgress]:
    """Empty the read model (while the workers are stopped) and replay from the earliest offset.

    Refused when a topic's history is no longer complete (earliest offset above 0): the rebuilt state would miss
    what retention deleted, silently. `allow_lost_history` rebuilds anyway.
    """
    if not allow_lost_history and (gone := await history_deleted(bootstrap, target)):
        raise ReplayError(f"{target.service}: history was deleted from its input topics ({'; '.join(gone[:4])}"
                          f"{'; ...' if len(gone) > 4 else ''}); a rebuild would lose it. Add --allow-lost-history "
                          "to rebuild anyway")

    async def empty() -> None:
        await truncate_read_model(database_url, schema or target.service)

    return await replay(bootstrap, [target], from_ms=None, database_url=database_url, before_reset=empty,
                        **replay_options)


# --- workers of the local stack ----------------------------------------------------------------------------


def stack_controls(services: Sequence[str]) -> tuple[Control, Control, bool]:
    """stop/start for the workers `orderflow up` recorded in stack.json; (no-op, no-op, False) without a stack."""
    from pathlib import Path

    from orderflow import stack

    state = stack.load_state()
    chosen = [w for w in (state or {}).get("services", []) if w["name"] in services]
    if state is None or not chosen:
        return (lambda: None), (lambda: None), False
    rd = Path(state.get("run_dir") or stack.run_dir())

    def stop() -> None:
        for w in chosen:
            stack.WorkerHandle.from_state(w).stop()

    def start() -> None:
        env = stack.service_env(state)
        handles = [stack.start_worker(w["name"], int(w["index"]), env, rd=rd, port=int(w["port"]), wait=False)
                   for w in chosen]
        fresh = stack.load_state(rd) or state
        restarted = {(h.name, h.index): h.to_state() for h in handles}
        fresh["services"] = [restarted.get((w["name"], int(w["index"])), w) for w in fresh.get("services", [])]
        stack._save_state(rd, fresh)  # noqa: SLF001 - the stack's own state writer, so pids stay right for `down`
        for handle in handles:
            handle.wait_healthy()

    return stop, start, True


REBUILD_LOSES = {
    "notify": "its mails table is the record of what was sent: a rebuild sends every mail again "
              "(with the same Message-IDs)",
    "orders": "back-office changes (status, payment, messages) live only in its database and in order.status, "
              "which it does not consume: a rebuild loses them",
}
"""Services whose read model is more than a function of their input topics: `rebuild` needs --force."""


# --- command line ------------------------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction, bootstrap: Callable[[], str],
                database_url: Callable[[], str]) -> None:
    from orderflow.services import names

    p = sub.add_parser("replay", help="reprocess a service's input topics from the earliest offset or a time")
    p.add_argument("service", choices=[*names(), "all"], help="%(choices)s")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--from-earliest", action="store_true", help="from offset 0 (the default)")
    when.add_argument("--from", dest="from_time", metavar="TIMESTAMP",
                      help="from this time: ISO 8601 (UTC unless it says) or epoch ms")
    p.add_argument("--timeout", type=float, default=None, help="give up watching after S seconds")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (stored position, broker offset, new start per partition) and change nothing")
    p.set_defaults(func=lambda args: cmd_replay(args, bootstrap(), database_url()))

    p = sub.add_parser("rebuild", help="empty a service's read model in PostgreSQL and rebuild it from the topics")
    p.add_argument("service", choices=names(), help="%(choices)s")
    p.add_argument("--timeout", type=float, default=None, help="give up watching after S seconds")
    p.add_argument("--force", action="store_true", help="rebuild notify or orders despite what it loses")
    p.add_argument("--allow-lost-history", action="store_true",
                   help="rebuild although retention deleted the start of an input topic")
    p.set_defaults(func=lambda args: cmd_rebuild(args, bootstrap(), database_url()))


def _env(bootstrap: str, database_url: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": database_url}


def _targets(name: str, env: dict[str, str]) -> list[ReplayTarget]:
    from orderflow.services import discover

    names = [s.name for s in discover()] if name == "all" else [name]
    try:
        return [target_for(n, env) for n in names]
    except KeyError as exc:
        raise ReplayError(exc.args[0]) from None


def _run(targets: list[ReplayTarget], timeout: float | None,
         job: Callable[..., Awaitable[list[PartitionProgress]]]) -> int:
    from orderflow.ops.progress import ProgressView

    stop, start, managed = stack_controls([t.service for t in targets])
    if not managed:
        print("no workers of these services are recorded in the local stack: stop them yourself first "
              "(the reset waits for their consumer groups to be empty) and start them after")
    view = ProgressView()
    with view:
        progress = asyncio.run(job(stop_workers=stop, start_workers=start, on_progress=view.update,
                                   group_empty_timeout=90.0 if managed else 15.0, catch_up_timeout=timeout))
    replayed = sum(p.goal - p.start for p in progress)
    lag = sum(p.lag for p in progress)
    print(f"caught up: {replayed} event(s) replayed on {len(progress)} partition(s); lag now {lag}")
    return 0


def print_plan(lines: list[PlanLine]) -> int:
    print(f"{'service':<10} {'partition':<28} {'stored':>8} {'broker':>8} {'replay from':>11} {'end':>8}")
    for line in lines:
        stored = "-" if line.stored is None else str(line.stored)
        print(f"{line.service:<10} {f'{line.tp.topic}[{line.tp.partition}]':<28} {stored:>8} {line.committed:>8} "
              f"{line.target:>11} {line.end:>8}")
    print(f"dry run: {sum(max(0, ln.end - ln.target) for ln in lines)} event(s) would be replayed on {len(lines)} "
          "partition(s); nothing was changed")
    return 0


def cmd_replay(args: argparse.Namespace, bootstrap: str, database_url: str) -> int:
    try:
        from_ms = parse_timestamp(args.from_time) if args.from_time else None
        targets = _targets(args.service, _env(bootstrap, database_url))
        if args.dry_run:
            return print_plan(asyncio.run(plan_replay(bootstrap, database_url, targets, from_ms)))

        async def job(**options: Any) -> list[PartitionProgress]:
            return await replay(bootstrap, targets, from_ms=from_ms, database_url=database_url, **options)

        return _run(targets, args.timeout, job)
    except ReplayError as exc:
        print(f"orderflow replay: error: {exc}", file=sys.stderr)
        return 1


def cmd_rebuild(args: argparse.Namespace, bootstrap: str, database_url: str) -> int:
    try:
        if args.service == "all":
            raise ReplayError("rebuild takes one service at a time")
        if args.service in REBUILD_LOSES and not args.force:
            raise ReplayError(f"{args.service}: {REBUILD_LOSES[args.service]}; add --force to rebuild anyway")
        (target,) = _targets(args.service, _env(bootstrap, database_url))

        async def job(**options: Any) -> list[PartitionProgress]:
            return await rebuild(bootstrap, database_url, target, allow_lost_history=args.allow_lost_history,
                                 **options)

        return _run([target], args.timeout, job)
    except ReplayError as exc:
        print(f"orderflow rebuild: error: {exc}", file=sys.stderr)
        return 1
