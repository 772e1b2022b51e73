"""Partition lists from the broker's metadata (a consumer only knows the topics it already follows)."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class UnknownTopic(LookupError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic} does not exist")
        self.topic = topic


async def partitions_of(admin: AIOKafkaAdminClient, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of each topic, in topic order then partition order; UnknownTopic for a missing one."""
    wanted = list(dict.fromkeys(topics))
    described = {t["topic"]: t for t in await admin.describe_topics(wanted)}
    tps: list[TopicPartition] = []
    for topic in wanted:
        info = described.get(topic)
        if info is None or info.get("error_code") or not info.get("partitions"):
            raise UnknownTopic(topic)
        tps += [TopicPartition(topic, p["partition"]) for p in sorted(info["partitions"], key=lambda p: p["partition"])]
    return tps
