"""Which record comes first at or after an offset: asked of the broker itself, not of faust's stream.

A record beyond a partition's position means the records in between either did not come (faust hands out records
fetched before a seek, drops records read again after one, acks records dropped at a rebalance) or are not in the
log (retention deleted them; a transactional producer's commit markers take offsets no consumer is handed). Only
the log can tell the two apart: seen in a rebalance fault run (2026-12-01), the record that had jumped came a
second time after the seek back, from a fetch made before it, and a rule that took "the jump again" for "the
offsets in between are absent" skipped order.status[3] offset 20 (a payment): the customer who paid was mailed to
come back and pay.

`OffsetProbe` reads one record with a consumer of its own (no group, nothing committed) from the wanted offset.
Gaps are rare (around rebalances and seeks), so one lazily started consumer per worker answers them one at a time.
It also answers, as rarely, which offsets of a partition were written before a time (`offsets_before`): a refusal
that depends on another topic waits until that topic is applied up to the refused record's time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

log = logging.getLogger(__name__)

READ_TIMEOUT_MS = 3000


class OffsetProbe:
    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def first_at_or_after(self, topic: str, partition: int, offset: int) -> int | None:
        """The offset of the first record at or after `offset` (the log start when retention deleted `offset`);
        None when the broker did not answer within READ_TIMEOUT_MS or no record is there yet."""
        tp = TopicPartition(topic, partition)
        async with self._lock:
            consumer = await self._started()
            consumer.assign([tp])
            try:
                consumer.seek(tp, offset)
                batch = await consumer.getmany(tp, timeout_ms=READ_TIMEOUT_MS, max_records=1)
            finally:
                consumer.unsubscribe()  # no fetching in the background between gaps
            found = [r.offset for r in batch.get(tp) or [] if r.offset >= offset]
            return found[0] if found else None

    async def offsets_before(self, partitions: Sequence[tuple[str, int]],
                             timestamp_ms: int) -> dict[tuple[str, int], int]:
        """Per partition, the offset below which its records were written before `timestamp_ms` (by their
        timestamps): the first record at or after that time, else the partition's end."""
        tps = [TopicPartition(topic, partition) for topic, partition in partitions]
        async with self._lock:
            consumer = await self._started()
            found = await consumer.offsets_for_times({tp: timestamp_ms for tp in tps})
            missing = [tp for tp in tps if found.get(tp) is None]
            ends = await consumer.end_offsets(missing) if missing else {}
        return {(tp.topic, tp.partition): found[tp].offset if found.get(tp) is not None else ends[tp] for tp in tps}

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                                        max_partition_fetch_bytes=64 * 1024, **self._options)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
