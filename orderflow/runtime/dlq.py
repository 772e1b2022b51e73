"""Dead letters: the original key and bytes, untouched, with headers that say what was wrong and where from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

SendWithHeaders = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[None]]

HEADER_ERROR = "dlq.error"
HEADER_KIND = "dlq.error.kind"
HEADER_SERVICE = "dlq.service"
HEADER_TOPIC = "dlq.source.topic"
HEADER_PARTITION = "dlq.source.partition"
HEADER_OFFSET = "dlq.source.offset"


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


def headers_for(source: Source, service: str, reason: str, kind: str) -> list[tuple[str, bytes]]:
    return [
        (HEADER_ERROR, reason[:2000].encode()),
        (HEADER_KIND, kind.encode()),
        (HEADER_SERVICE, service.encode()),
        (HEADER_TOPIC, source.topic.encode()),
        (HEADER_PARTITION, str(source.partition).encode()),
        (HEADER_OFFSET, str(source.offset).encode()),
    ]


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in (headers or []) if k.startswith("dlq.")}


class DeadLetters:
    def __init__(self, service: str, send: SendWithHeaders, on_dead: Callable[[str, str], None]):
        self._service = service
        self._send = send
        self._on_dead = on_dead

    async def send(self, source: Source, reason: str, kind: str = "invalid") -> None:
        """Waits until the broker has the dead letter: only then may the source offset be committed."""
        await self._send(dlq_topic(source.topic), source.key, source.value, headers_for(source, self._service,
                                                                                          reason, kind))
        self._on_dead(source.topic, kind)
