"""Topic settings against the catalogue (`contracts/topics.py`): `orderflow topics` creates what is missing with the
declared settings, reports the settings of existing topics that drifted from them and, with `--apply`, sets them.

Drift is read from each topic's effective settings (its own, else the broker's default): a topic created before the
catalogue declared its retention shows the broker's 7 days as drift. `max.message.bytes` drifts only when lower than
wanted (a larger limit harms nothing). Changing `cleanup.policy` of a live topic is the operator's call: `--apply`
does it, plain `orderflow topics` only says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from orderflow.infra.ports import InfraError

APPLY_CHECK_SECONDS = 0.5
UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION
AT_LEAST = frozenset({"max.message.bytes"})
"""Settings that drift only when below the wanted value."""


@dataclass(frozen=True)
class Drift:
    topic: str
    key: str
    current: str | None
    wanted: str

    def __str__(self) -> str:
        return f"{self.key}={self.current} (catalogue: {self.wanted})"


def differs(key: str, current: str | None, wanted: str) -> bool:
    if key in AT_LEAST:
        return int(current or 0) < int(wanted)
    return current != wanted


def _check(resources: list, what: str) -> None:
    for resource in resources:
        error_code, error_message, _type, name = resource[:4]
        if error_code:
            raise InfraError(f"{what} topic {name} failed: error {error_code} {error_message or ''}".strip())


async def effective_configs(
    admin: AIOKafkaAdminClient, names: list[str], *, timeout: float = 30.0
) -> dict[str, dict[str, str | None]]:
    """Each topic's settings as the broker applies them (the topic's own, else the broker's defaults).

    A topic created moments ago can be unknown to the broker that answers (UNKNOWN_TOPIC_OR_PARTITION: seen on a
    Kafka 4.3 broker in its first seconds): asked again for up to `timeout` seconds."""
    if not names:
        return {}
    deadline = time.monotonic() + timeout
    while True:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
        resources = [resource for response in responses for resource in response.resources]
        if time.monotonic() < deadline and any(r[0] == UNKNOWN_TOPIC for r in resources):
            await asyncio.sleep(APPLY_CHECK_SECONDS)
            continue
        _check(resources, "describing")
        return {name: {entry[0]: entry[1] for entry in entries} for _code, _message, _type, name, entries in resources}


async def find_drift(admin: AIOKafkaAdminClient, wanted: dict[str, dict[str, str]]) -> list[Drift]:
    """Every declared setting of these existing topics that the broker applies differently, topic by topic."""
    current = await effective_configs(admin, list(wanted))
    return [
        Drift(name, key, current.get(name, {}).get(key), value)
        for name, configs in wanted.items()
        for key, value in sorted(configs.items())
        if differs(key, current.get(name, {}).get(key), value)
    ]


async def apply_drift(admin: AIOKafkaAdminClient, drift: list[Drift], *, timeout: float = 60.0) -> None:
    """Set the drifted settings, and check that the broker applies them.

    aiokafka has only the non-incremental AlterConfigs, which replaces all of a topic's own settings: the topic's
    current own ones are sent along, changed only where they drifted. A broker that started moments ago answers it
    without error but may not apply it (seen on Kafka 4.3 for its first ~20 s): it is sent again until the settings
    read back as wanted, or InfraError after `timeout` seconds."""
    from orderflow.stack import _topic_overrides

    wanted: dict[str, dict[str, str]] = {}
    for d in drift:
        wanted.setdefault(d.topic, {})[d.key] = d.wanted
    deadline = time.monotonic() + timeout
    while wanted:
        await effective_configs(admin, list(wanted))  # waits until the broker knows each topic
        own = await _topic_overrides(admin, list(wanted))
        responses = await admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, name, {**own.get(name, {}), **changed})
                for name, changed in wanted.items()
            ]
        )
        for response in responses:
            _check(response.resources, "altering")
        await asyncio.sleep(APPLY_CHECK_SECONDS)
        left = await find_drift(admin, wanted)
        if not left:
            return
        if time.monotonic() >= deadline:
            raise InfraError(
                f"the broker did not apply {', '.join(f'{d.topic} {d.key}={d.wanted}' for d in left)} "
                f"within {timeout:.0f} s"
            )
        wanted = {}
        for d in left:
            wanted.setdefault(d.topic, {})[d.key] = d.wanted


async def reconcile(bootstrap: str, partitions: int | None, *, apply: bool) -> tuple[dict[str, str], list[Drift]]:
    """Create the missing topics with the catalogue's settings; find (and with `apply`, set) the drift of the
    existing ones. Returns each topic's outcome and the drift found."""
    from orderflow import stack
    from orderflow.ops.broker import options

    outcome = await stack._create_topics(bootstrap, partitions)
    existing = {name for name, said in outcome.items() if said.startswith("exists")}
    admin = AIOKafkaAdminClient(**options(bootstrap, request_timeout_ms=30000))
    await admin.start()
    try:
        wanted = {name: configs for name, _, configs in stack.wanted_topics(partitions) if name in existing}
        drift = await find_drift(admin, wanted)
        if apply:
            await apply_drift(admin, drift)
    finally:
        await admin.close()
    return outcome, drift
