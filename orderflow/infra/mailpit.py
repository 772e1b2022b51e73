"""Mailpit, the mail server of the ecosystem, as the local SMTP server and mailbox.

Mailpit is a Go program (github.com/axllent/mailpit). No release binary can be downloaded on the development and CI
machines, but the Go module proxy serves its source: `ensure_binary()` builds it once with the machine's Go into a
cache outside the repository (like the Kafka jars; about 1.5 minutes of CPU), and `start()` runs it on loopback with
its own database file. Its HTTP API (`/api/v1/...`) is read by `orderflow.infra.mailbox.MailpitMailbox`, the same
code that reads the Mailpit of docker-compose.yml or of the containerised system.

The hand-written sink (`orderflow.infra.mailsink`) stays for the fault-injection tests: Mailpit cannot hold a reply
inside DATA, count the DATA commands per recipient, nor record whether AUTH came before or after STARTTLS.

    python -m orderflow.infra.mailpit            # builds it if needed, prints the binary's path
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orderflow.infra.ports import LOCALHOST, InfraError, ProcRef, free_port, http_ok, tail, wait_until

MAILPIT_MODULE = "github.com/axllent/mailpit"
MAILPIT_VERSION = "v1.33.1"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "orderflow" / f"mailpit-{MAILPIT_VERSION}"


def binary_path() -> Path:
    return cache_dir() / "mailpit"


def ensure_binary() -> Path:
    """Build Mailpit once with `go install`; the build only counts as done after an atomic rename of its folder."""
    binary = binary_path()
    if binary.exists():
        return binary
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise InfraError("Go is needed to build Mailpit once (apt-get install -y golang-go, Go 1.24 or later)")
    target = binary.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}-partial-", dir=target.parent))
    try:
        env = {**os.environ, "GOBIN": str(staging), "CGO_ENABLED": "0", "GOFLAGS": "-trimpath"}
        subprocess.run(
            [go, "install", f"{MAILPIT_MODULE}@{MAILPIT_VERSION}"], check=True, env=env, cwd=tempfile.gettempdir()
        )
        if not (staging / "mailpit").exists():
            raise InfraError(f"go install finished but {staging}/mailpit is missing")
        if target.exists():  # another run finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return binary


@dataclass
class MailpitHandle:
    """A Mailpit process; its state has the mail sink's keys, so `orderflow up/down/env` treat both alike."""

    smtp_port: int
    http_port: int
    store: Path
    log_file: Path
    proc: ProcRef | None = None
    smtp_host: str = LOCALHOST

    @property
    def http_url(self) -> str:
        return f"http://{LOCALHOST}:{self.http_port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def healthy(self) -> bool:
        return http_ok(f"{self.http_url}/readyz")

    def command(self) -> list[str]:
        return [
            str(ensure_binary()),
            "--smtp",
            f"{self.smtp_host}:{self.smtp_port}",
            "--listen",
            f"{LOCALHOST}:{self.http_port}",
            "--database",
            str(self.store),
            "--disable-version-check",
            "--smtp-disable-rdns",
            "--max",
            "0",  # keep every message: tests and the demo count them
        ]

    def start(self, timeout: float = 30.0) -> MailpitHandle:
        if self.alive():
            return self
        command = self.command()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.proc = ProcRef.of(popen.pid)
        try:
            wait_until(
                self.healthy,
                timeout=timeout,
                what=f"Mailpit at {self.http_url} (log: {self.log_file})",
                abort=lambda: None if popen.poll() is None else f"exited\n{tail(self.log_file)}",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)

    def to_state(self) -> dict:
        return {
            "kind": "mailpit",
            "smtp_host": self.smtp_host,
            "smtp_port": self.smtp_port,
            "http_port": self.http_port,
            "url": self.http_url,
            "store": str(self.store),
            "log": str(self.log_file),
            "process": self.proc.to_state() if self.proc else None,
        }

    @classmethod
    def from_state(cls, state: dict) -> MailpitHandle:
        proc = ProcRef.from_state(state["process"]) if state.get("process") else None
        return cls(int(state["smtp_port"]), int(state["http_port"]), Path(state["store"]), Path(state["log"]), proc)


def start(run_dir: Path | str, *, smtp_port: int | None = None, http_port: int | None = None) -> MailpitHandle:
    """Start Mailpit as a detached process whose database and log live in run_dir."""
    run_dir = Path(run_dir)
    smtp_port = smtp_port or free_port()
    http_port = http_port or free_port()
    if http_port == smtp_port:
        raise InfraError("Mailpit needs two different ports")
    return MailpitHandle(smtp_port, http_port, run_dir / "mailpit.db", run_dir / "logs" / "mailpit.log").start()


if __name__ == "__main__":
    print(ensure_binary())
