"""The operator's commands against the session's real broker: topic settings from the catalogue (drift reported,
then set with --apply), and one clear line, not a traceback, when the broker or the database is away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from contracts import topics
from orderflow.infra.ports import free_port
from orderflow.ops.topic_config import Drift, apply_drift, effective_configs

pytestmark = pytest.mark.timeout(120)


def orderflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orderflow.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )


def line_of(output: str, topic: str) -> str:
    """The line `orderflow topics` prints for this topic (a broker reused across runs may hold other drift)."""
    return next(line for line in output.splitlines() if line.split(" ", 1)[0] == topic)


async def test_topics_reports_drift_and_apply_sets_the_catalogue_settings(kafka_bootstrap: str) -> None:
    topic = topics.CART_UPDATED
    wanted = topic.configs["retention.ms"]
    week = str(7 * 24 * 3600 * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # as an older setup left it (apply_drift waits until the broker applies it: a new broker may take ~20 s)
        await apply_drift(admin, [Drift(topic.name, "retention.ms", wanted, week)])

        checked = orderflow("topics", "--check", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
        assert checked.returncode == 1, checked.stderr
        line = line_of(checked.stdout, topic.name)
        assert line == f"{topic.name:<32} exists (8 partitions); DRIFT retention.ms={week} (catalogue: {wanted})"
        assert "differ from the catalogue" in checked.stdout

        applied = orderflow("topics", "--apply", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
        assert applied.returncode == 0, applied.stderr
        assert f"set retention.ms={wanted} (was {week})" in applied.stdout
        configs = (await effective_configs(admin, [topic.name]))[topic.name]
        assert (configs["retention.ms"], configs["cleanup.policy"]) == (wanted, "delete")
        assert configs["max.message.bytes"] == str(2 * 1024 * 1024), "its other own settings are kept"
    finally:
        await admin.close()
    again = orderflow("topics", "--check", KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    assert "DRIFT" not in line_of(again.stdout, topic.name), again.stdout


@pytest.mark.parametrize(
    ("command", "away"),
    [
        (("dlq", "list", "order.placed"), "the Kafka broker cannot be reached"),
        (("topics",), "the Kafka broker cannot be reached"),
        (("migrate",), "the database cannot be reached"),
    ],
)
def test_a_command_says_one_line_when_the_broker_or_database_is_away(command: tuple[str, ...], away: str) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = orderflow(*command, KAFKA_BOOTSTRAP_SERVERS=closed, DATABASE_URL=f"postgresql://of@{closed}/of")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"orderflow {command[0]}") and away in done.stderr
