"""`orderflow dlq list|redrive TOPIC`: read dead letters, and send them back to their source topic after a fix.

A redrive tracks its progress in a consumer group of its own on `<topic>.dlq` and commits a DLQ offset only after
the broker acknowledged the re-sent message: a crash mid-redrive re-sends (consumers dedupe by event_id), never
loses. Nothing is deleted from the DLQ; a message that fails again is dead-lettered again at a new offset and the
next redrive picks it up. A stub (`dlq.stub=true`: a letter too large for the DLQ, kept as a prefix of its bytes) is
never re-sent: its original bytes are gone; the redrive counts it and moves past it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from orderflow.ops.broker import options
from orderflow.ops.topics import UnknownTopic, partitions_of
from orderflow.runtime.dlq import (
    HEADER_ERROR,
    HEADER_KIND,
    HEADER_OFFSET,
    HEADER_ORIGINAL_SIZE,
    HEADER_PARTITION,
    HEADER_SERVICE,
    HEADER_STUB,
    HEADER_STUB_REASON,
    HEADER_TOPIC,
    dlq_topic,
    read_headers,
)

HEADER_REDRIVEN_FROM = "orderflow.redriven.from"
"""Set on a re-sent message: `<dlq topic>/<partition>/<offset>`, so an operator can trace where it came from."""

VALUE_PREVIEW = 300


class DlqError(Exception):
    """An operator-facing problem (unknown topic, broker away), one line."""


@dataclass(frozen=True)
class DeadLetter:
    dlq_partition: int
    dlq_offset: int
    timestamp_ms: int
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    service: str
    kind: str
    reason: str
    key: bytes | None
    value: bytes | None
    stub: bool = False
    """Only a prefix of the value is kept (the letter did not fit the DLQ); never re-sent."""
    original_size: int | None = None
    stub_reason: str = ""

    @classmethod
    def from_record(cls, record: ConsumerRecord, dlq_name: str) -> DeadLetter:
        headers = read_headers(list(record.headers or []))
        default_source = dlq_name.removesuffix(".dlq")
        return cls(
            dlq_partition=record.partition,
            dlq_offset=record.offset,
            timestamp_ms=record.timestamp,
            source_topic=headers.get(HEADER_TOPIC) or default_source,
            source_partition=_int_or_none(headers.get(HEADER_PARTITION)),
            source_offset=_int_or_none(headers.get(HEADER_OFFSET)),
            service=headers.get(HEADER_SERVICE, "?"),
            kind=headers.get(HEADER_KIND, "?"),
            reason=headers.get(HEADER_ERROR, "(no reason header)"),
            key=record.key,
            value=record.value,
            stub=headers.get(HEADER_STUB) == "true",
            original_size=_int_or_none(headers.get(HEADER_ORIGINAL_SIZE)),
            stub_reason=headers.get(HEADER_STUB_REASON, ""),
        )


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.lstrip("-").isdigit() else None


def show_bytes(data: bytes | None, limit: int = VALUE_PREVIEW) -> str:
    """Text when the bytes are UTF-8, else hex; cut at `limit` characters with the full size said."""
    if data is None:
        return "(null)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "hex:" + data[: limit // 2].hex()
        return text + (f"… ({len(data)} bytes)" if len(data) > limit // 2 else "")
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text[:limit] + (f"… ({len(data)} bytes)" if len(text) > limit else "")


def describe(letter: DeadLetter) -> str:
    """The few lines an operator reads for one dead letter."""
    where = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
    lines = [
        f"dlq[{letter.dlq_partition}]@{letter.dlq_offset}  from {where}  service={letter.service}  "
        f"kind={letter.kind}",
        f"  reason: {letter.reason}",
        f"  key:    {show_bytes(letter.key, 120)}",
        f"  value:  {show_bytes(letter.value)}",
    ]
    if letter.stub:
        lines.insert(2, f"  STUB:   only the first {len(letter.value or b'')} of {letter.original_size} bytes kept "
                        f"({letter.stub_reason}); not redriven")
    return "\n".join(lines)


# --- reading -----------------------------------------------------------------------------------------------


@asynccontextmanager
async def _consumer(bootstrap: str, group_id: str | None = None) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(**options(bootstrap, group_id=group_id, enable_auto_commit=False,
                                          auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
                                          fetch_max_bytes=8 * 1024 * 1024))
    try:
        await consumer.start()
        yield consumer
    finally:
        await consumer.stop()


async def _assign_all(consumer: AIOKafkaConsumer, bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(**options(bootstrap))
    try:
        await admin.start()
        tps = await partitions_of(admin, [topic])
    except UnknownTopic as exc:
        raise DlqError(str(exc)) from None
    finally:
        await admin.close()
    consumer.assign(tps)
    return tps


async def _records_until(consumer: AIOKafkaConsumer, stop_at: dict[TopicPartition, int],
                         ) -> AsyncIterator[list[ConsumerRecord]]:
    """Batches of records from the current positions up to `stop_at` (exclusive) on every partition."""
    remaining = {tp: end for tp, end in stop_at.items() if await consumer.position(tp) < end}
    while remaining:
        fetched = await consumer.getmany(*remaining, timeout_ms=1000)
        for tp, records in fetched.items():
            batch = [r for r in records if r.offset < stop_at[tp]]
            if batch:
                yield batch
        for tp in list(remaining):
            if await consumer.position(tp) >= remaining[tp]:
                del remaining[tp]


async def list_dead_letters(bootstrap: str, topic: str, limit: int | None = None) -> list[DeadLetter]:
    """Every dead letter of `topic` (the source topic name or its `.dlq`), oldest first per partition; no commit."""
    name = topic if topic.endswith(".dlq") else dlq_topic(topic)
    found: list[DeadLetter] = []
    async with _consumer(bootstrap) as consumer:
        tps = await _assign_all(consumer, bootstrap, name)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        async for batch in _records_until(consumer, ends):
            found.extend(DeadLetter.from_record(r, name) for r in batch)
            if limit is not None and len(found) >= limit:
                break
    found.sort(key=lambda d: (d.dlq_partition, d.dlq_offset))
    return found[:limit] if limit is not None else found


# --- redrive -----------------------------------------------------------------------------------------------


def redrive_group(topic: str) -> str:
    return f"orderflow-dlq-redrive-{topic.removesuffix('.dlq')}"


@dataclass
class RedriveReport:
    resent: int = 0
    stubs: int = 0
    """Stubs moved past without re-sending (their original bytes are gone)."""
    by_source: Counter[str] = field(default_factory=Counter)
    letters: list[DeadLetter] = field(default_factory=list)
    dry_run: bool = False


async def redrive(bootstrap: str, topic: str, *, dry_run: bool = False, group_id: str | None = None,
                  on_letter: Callable[[DeadLetter], None] | None = None) -> RedriveReport:
    """Re-send the dead letters not yet redriven to their source topic, with their original key and bytes.

    Reads up to the DLQ's end as it was at the start, so letters that fail again during this run wait for the next.
    """
    name = topic if topic.endswith(".dlq") else dlq_topic(topic)
    report = RedriveReport(dry_run=dry_run)
    async with _consumer(bootstrap, group_id or redrive_group(name)) as consumer:
        tps = await _assign_all(consumer, bootstrap, name)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        producer = AIOKafkaProducer(**options(bootstrap, acks="all", enable_idempotence=True,
                                              max_request_size=4 * 1024 * 1024))
        try:
            if not dry_run:
                await producer.start()
            async for batch in _records_until(consumer, ends):
                letters = [DeadLetter.from_record(r, name) for r in batch]
                report.stubs += sum(letter.stub for letter in letters)
                letters = [letter for letter in letters if not letter.stub]
                if not dry_run:
                    await _resend(producer, name, letters)
                    tp = TopicPartition(name, batch[-1].partition)
                    await consumer.commit({tp: batch[-1].offset + 1})
                for letter in letters:
                    report.resent += 1
                    report.by_source[letter.source_topic] += 1
                    report.letters.append(letter)
                    if on_letter:
                        on_letter(letter)
        finally:
            await producer.stop()  # also when never started (a dry run, a broker gone meanwhile)
    return report


async def _resend(producer: AIOKafkaProducer, dlq_name: str, letters: list[DeadLetter]) -> None:
    """Queue the batch in order and wait until the broker acknowledged every message of it."""
    acks = []
    for letter in letters:
        trace = f"{dlq_name}/{letter.dlq_partition}/{letter.dlq_offset}".encode()
        partition = letter.source_partition if letter.key is None else None
        acks.append(await producer.send(letter.source_topic, letter.value, key=letter.key, partition=partition,
                                        headers=[(HEADER_REDRIVEN_FROM, trace)]))
    await asyncio.gather(*acks)


# --- command line ------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction, bootstrap: Callable[[], str]) -> None:
    p = sub.add_parser("dlq", help="list or redrive the dead letters of a topic")
    actions = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    s = actions.add_parser("list", help="show the dead letters of TOPIC (reads <TOPIC>.dlq; commits nothing)")
    s.add_argument("topic")
    s.add_argument("--limit", type=int, default=None, help="show at most N")
    s.set_defaults(func=lambda args: cmd_list(args, bootstrap()))
    s = actions.add_parser("redrive", help="send the dead letters of TOPIC back to it (after a fix)")
    s.add_argument("topic")
    s.add_argument("--dry-run", action="store_true", help="show what would be re-sent; send and commit nothing")
    s.set_defaults(func=lambda args: cmd_redrive(args, bootstrap()))


def cmd_list(args: argparse.Namespace, bootstrap: str) -> int:
    try:
        letters = asyncio.run(list_dead_letters(bootstrap, args.topic, args.limit))
    except DlqError as exc:
        print(f"orderflow dlq list: error: {exc}", file=sys.stderr)
        return 1
    for letter in letters:
        print(describe(letter))
    print(f"{len(letters)} dead letter(s) in {args.topic.removesuffix('.dlq')}.dlq"
          + (f" (limit {args.limit})" if args.limit is not None else ""))
    return 0


def cmd_redrive(args: argparse.Namespace, bootstrap: str) -> int:
    try:
        report = asyncio.run(redrive(bootstrap, args.topic, dry_run=args.dry_run,
                                     on_letter=(lambda d: print(describe(d))) if args.dry_run else None))
    except DlqError as exc:
        print(f"orderflow dlq redrive: error: {exc}", file=sys.stderr)
        return 1
    verb = "would re-send" if report.dry_run else "re-sent"
    sources = ", ".join(f"{n} to {t}" for t, n in sorted(report.by_source.items())) or "nothing new"
    print(f"{verb} {report.resent} dead letter(s): {sources}"
          + (f"; {report.stubs} stub(s) skipped (too large to keep; their original bytes are gone)"
             if report.stubs else ""))
    return 0
