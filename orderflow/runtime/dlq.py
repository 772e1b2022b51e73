"""Dead letters: the original key and bytes, untouched, with headers that say what was wrong and where from.

DLQ topics accept a little more than their source topics (`orderflow topics`: source + 64 KiB for the headers), so a
letter normally fits. One that still does not (the producer's or the DLQ's size limit) is written as a *stub*: the
first `STUB_PREFIX_BYTES` of its value (and of its key, when that is the large part), with `dlq.stub=true` and headers
giving the original sizes and why. The stream goes on; `orderflow dlq redrive` never re-sends a stub.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from orderflow.runtime.send_errors import classify, is_too_large

log = logging.getLogger(__name__)

SendWithHeaders = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]]], Awaitable[None]]

HEADER_ERROR = "dlq.error"
HEADER_KIND = "dlq.error.kind"
HEADER_SERVICE = "dlq.service"
HEADER_TOPIC = "dlq.source.topic"
HEADER_PARTITION = "dlq.source.partition"
HEADER_OFFSET = "dlq.source.offset"
HEADER_STUB = "dlq.stub"
HEADER_STUB_REASON = "dlq.stub.reason"
HEADER_ORIGINAL_SIZE = "dlq.original.size"
HEADER_ORIGINAL_KEY_SIZE = "dlq.original.key.size"

STUB_PREFIX_BYTES = 1024


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


def stub_of(source: Source, headers: list[tuple[str, bytes]], why: str,
            ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """(key, value, headers) of the stub standing for a letter too large to dead-letter whole."""
    stub_headers = [
        *headers,
        (HEADER_STUB, b"true"),
        (HEADER_STUB_REASON, why[:500].encode()),
        (HEADER_ORIGINAL_SIZE, str(len(source.value) if source.value is not None else 0).encode()),
    ]
    key = source.key
    if key is not None and len(key) > STUB_PREFIX_BYTES:
        stub_headers.append((HEADER_ORIGINAL_KEY_SIZE, str(len(key)).encode()))
        key = key[:STUB_PREFIX_BYTES]
    value = source.value[:STUB_PREFIX_BYTES] if source.value is not None else None
    if key is None and value is None:
        value = b""
    return key, value, stub_headers


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in (headers or []) if k.startswith("dlq.")}


class DeadLetters:
    def __init__(self, service: str, send: SendWithHeaders, on_dead: Callable[[str, str], None]):
        self._service = service
        self._send = send
        self._on_dead = on_dead

    async def send(self, source: Source, reason: str, kind: str = "invalid") -> None:
        """Waits until the broker has the dead letter: only then may the source offset be committed.

        A letter too large for the DLQ (or the producer) is sent as a stub; any other failure is raised."""
        topic = dlq_topic(source.topic)
        headers = headers_for(source, self._service, reason, kind)
        try:
            await self._send(topic, source.key, source.value, headers)
        except Exception as exc:
            if not is_too_large(exc):
                raise
            why = classify(exc).reason
            log.warning("%s[%s]@%s: dead letter too large for %s (%s); sending a stub", source.topic,
                        source.partition, source.offset, topic, why)
            await self._send(topic, *stub_of(source, headers, why))
        self._on_dead(source.topic, kind)
