"""Service workers as real subprocesses for integration tests: start, wait until healthy, SIGKILL, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from orderflow.services import get


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class WorkerProcess:
    service: str
    env: dict[str, str]
    data_dir: Path
    log_path: Path
    port: int
    proc: subprocess.Popen | None = None
    token: str = field(default="test-token")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> WorkerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orderflow.worker", self.service, "--data-dir", str(self.data_dir),
             "--http-port", str(self.port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} worker exited ({self.proc.returncode}); see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                r = httpx.get(f"{self.url}/health", timeout=2)
                if r.status_code == 200:
                    return self
                last = r.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)  # polling interval of a wait-for-condition loop, not synchronisation
        raise TimeoutError(f"{self.service} worker not healthy after {timeout}s ({last}); see {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def dump_stacks(self, timeout: float = 5.0) -> None:
        """Ask a running worker where it is (orderflow/runtime/stacks.py): its asyncio tasks' stacks and its
        threads' stacks land in its log; returns once both are there, or after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        before = self.log_path.read_bytes().count(b"asyncio task(s)")
        os.kill(self.proc.pid, signal.SIGUSR1)
        os.kill(self.proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.log_path.read_bytes().count(b"asyncio task(s)") <= before:
            time.sleep(0.1)  # polling interval of a wait-for-condition loop, not synchronisation

    def restart(self) -> WorkerProcess:
        self.kill(signal.SIGKILL)
        return self.start().wait_ready()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)


def worker_env(kafka_bootstrap: str, database_url: str, *, app_prefix: str | None = None,
               **extra: str) -> dict[str, str]:
    """Environment for a test worker. A fresh app id prefix gives a fresh consumer group."""
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        DATABASE_URL=database_url,
        BACKOFFICE_TOKEN="test-token",
        ORDERFLOW_APP_ID_PREFIX=app_prefix or f"test-{uuid.uuid4().hex[:8]}",
        LOG_LEVEL="info",
    )
    env.update(extra)
    return env


def make_worker(service: str, env: dict[str, str], tmp_path: Path, index: int = 0) -> WorkerProcess:
    get(service)  # fail early on a typo
    return WorkerProcess(
        service=service,
        env=env,
        data_dir=tmp_path / f"{service}-{index}-data",
        log_path=tmp_path / f"{service}-{index}.log",
        port=free_port(),
        token=env.get("BACKOFFICE_TOKEN", "test-token"),
    )
