"""Session fixtures for the real broker, database and mail sink.

Each is lazy: only a test that asks for it starts it, so `pytest tests/unit` starts nothing. Precedence:
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / (SMTP_HOST + MAILBOX_URL) from the environment; else testcontainers
when a Docker engine answers (and ORDERFLOW_TESTCONTAINERS is not 0); else local processes (orderflow.infra).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

# Tests import their helpers both as `helpers` (this folder is on sys.path) and as `tests.helpers`
# (needs the repository root on sys.path, which the `pytest` script does not add by itself).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from orderflow import stack  # noqa: E402
from orderflow.infra import kafka, mailpit, postgres  # noqa: E402
from orderflow.infra import mailsink as sink  # noqa: E402
from orderflow.infra.kafka import KafkaHandle  # noqa: E402


@functools.cache
def docker_available() -> bool:
    if os.environ.get("ORDERFLOW_TESTCONTAINERS", "1") == "0" or not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Broker:
    """The test broker; `handle` is set only for a local one, which fault tests can restart or kill."""

    bootstrap: str
    handle: KafkaHandle | None = None

    def restart(self) -> None:
        if self.handle is None:
            pytest.skip("the broker is external; only a local broker can be restarted")
        self.handle.restart()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        stack.create_topics(bootstrap)
        yield Broker(bootstrap)
    elif docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            bootstrap = container.get_bootstrap_server()
            stack.create_topics(bootstrap)
            yield Broker(bootstrap)
    else:
        handle = kafka.start(tmp_path_factory.mktemp("kafka"))
        print(f"\nlocal Kafka broker at {handle.bootstrap} started in {handle.started_in:.1f} s")
        try:
            stack.create_topics(handle.bootstrap)
            yield Broker(handle.bootstrap, handle)
        finally:
            handle.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresHandle | None]:
    """The local cluster (restartable by fault tests), or None when DATABASE_URL or a container is used."""
    if os.environ.get("DATABASE_URL") or docker_available():
        yield None
        return
    handle = postgres.start()
    try:
        yield handle
    finally:
        handle.remove()


@pytest.fixture(scope="session")
def database_url(postgres_server: postgres.PostgresHandle | None) -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
    elif postgres_server is not None:
        yield postgres_server.url
    else:
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:15", username="orderflow", password="orderflow",
                               dbname="orderflow", driver=None) as container:
            yield container.get_connection_url(driver=None)


@dataclass
class MailSink:
    """Where services send mail (smtp_host/smtp_port) and how tests read it (messages/clear)."""

    smtp_host: str
    smtp_port: int
    http_url: str
    handle: sink.MailSinkHandle | None = None

    def messages(self, **filters: str) -> list[dict]:
        """Every message received, oldest first; filters: to=, subject= (case-insensitive substrings)."""
        response = httpx.get(f"{self.http_url}/messages", params=filters, timeout=10)
        response.raise_for_status()
        return response.json()

    def clear(self) -> None:
        httpx.delete(f"{self.http_url}/messages", timeout=10).raise_for_status()

    @property
    def env(self) -> dict[str, str]:
        return {"SMTP_HOST": self.smtp_host, "SMTP_PORT": str(self.smtp_port), "MAILBOX_URL": self.http_url}


@pytest.fixture(scope="session")
def mailsink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailSink]:
    """Shared by the session: tests filter by their own unique recipient, or call clear() first."""
    if os.environ.get("SMTP_HOST") and os.environ.get("MAILBOX_URL"):
        yield MailSink(os.environ["SMTP_HOST"], int(os.environ.get("SMTP_PORT", "25")), os.environ["MAILBOX_URL"])
        return
    handle = sink.start(tmp_path_factory.mktemp("mailsink"))
    try:
        yield MailSink(handle.smtp_host, handle.smtp_port, handle.http_url, handle)
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def mailpit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mailpit.MailpitHandle]:
    """Mailpit, the real mail server of the ecosystem (built once into the cache by `make setup`), for the tests
    that read mail through its API; the sink (`mailsink`) stays for the fault modes Mailpit lacks."""
    handle = mailpit.start(tmp_path_factory.mktemp("mailpit"))
    try:
        yield handle
    finally:
        handle.stop()
