"""A project-local PostgreSQL cluster from the Debian package, on a free port, for development and tests.

initdb refuses to run as root, so when we are root the server binaries run as the `postgres` user inside a
postgres-owned temporary folder (which also holds the unix socket, so nothing touches the system cluster).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from orderflow.infra.ports import LOCALHOST, InfraError, ProcRef, free_port, run_coro, tail, wait_until

USER = "orderflow"
DATABASE = "orderflow"
START_TIMEOUT = 60.0
DURABLE_ENV = "ORDERFLOW_PG_DURABLE"
"""Set to 1 to start a cluster with fsync, synchronous_commit and full_page_writes on (the benchmark's
`--durable-db`); unset, the local cluster keeps them off, as tests want."""


def durable_from_env() -> bool:
    return os.environ.get(DURABLE_ENV, "").strip().lower() in ("1", "true", "on", "yes")


def bin_dir() -> Path:
    """Newest /usr/lib/postgresql/<v>/bin (Debian), else wherever initdb is on PATH; PG_BIN overrides."""
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    if initdb := shutil.which("initdb"):
        return Path(initdb).parent
    raise InfraError("PostgreSQL server binaries not found: apt-get install -y postgresql (or `make setup`)")


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresHandle:
    base_dir: Path
    port: int
    proc: ProcRef | None = None
    started_in: float | None = None
    durable: bool = False
    """fsync, synchronous_commit and full_page_writes on (written at initdb; default off: a throwaway cluster)."""

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@{LOCALHOST}:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://{USER}@{LOCALHOST}:{self.port}/postgres"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def _run(self, *cmd: str, timeout: float = 120) -> None:
        result = subprocess.run(_as_server_user(list(cmd)), capture_output=True, text=True, timeout=timeout,
                                cwd=self.base_dir)
        if result.returncode != 0:
            raise InfraError(f"{Path(cmd[0]).name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                             f"\n{tail(self.log_file)}")

    def _init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._run(str(bin_dir() / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", USER,
                  "-E", "UTF8", "--no-locale", "--no-sync")
        crash_safety = "on" if self.durable else "off"  # off: a throwaway dev/test cluster, speed over safety
        settings = {
            "listen_addresses": f"'{LOCALHOST}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base_dir}'",
            "max_connections": "200",
            "fsync": crash_safety,
            "synchronous_commit": crash_safety,
            "full_page_writes": crash_safety,
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
        }
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# orderflow local cluster\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())

    def start(self, timeout: float = START_TIMEOUT) -> PostgresHandle:
        """initdb once, start the server, create the database; ready when a connection answers SELECT 1."""
        if self.alive():
            return self
        begun = time.monotonic()
        self._init()
        self._run(str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                  "-w", "-t", str(int(timeout)), "start", timeout=timeout + 10)
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        self.proc = ProcRef.of(pid)
        try:
            wait_until(lambda: db_ready(self.admin_url), timeout=timeout, interval=0.1,
                       what=f"PostgreSQL on port {self.port} (log: {self.log_file})",
                       abort=lambda: None if self.alive() else f"server exited\n{tail(self.log_file)}")
            run_coro(_create_database(self.admin_url, DATABASE))
            wait_until(lambda: db_ready(self.url), timeout=timeout, what=f"database {DATABASE}")
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - begun
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (disconnects clients) via pg_ctl, then make sure no postgres process remains."""
        if self.proc is None:
            return
        if self.proc.alive() and self.data_dir.exists():
            # if pg_ctl fails, the process-group stop below finishes the job
            with contextlib.suppress(InfraError, subprocess.TimeoutExpired):
                self._run(str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                          "-t", str(int(timeout)), "stop", timeout=timeout + 10)
        self.proc.stop(timeout=timeout)

    def restart(self, timeout: float = START_TIMEOUT) -> PostgresHandle:
        """Same port, same data: for tests of what survives a database restart."""
        self.stop()
        return self.start(timeout=timeout)

    def remove(self) -> None:
        """Stop and delete the cluster's folder."""
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def to_state(self) -> dict:
        return {"url": self.url, "port": self.port, "base_dir": str(self.base_dir), "log": str(self.log_file),
                "process": self.proc.to_state() if self.proc else None, "started_in": self.started_in,
                "durable": self.durable}

    @classmethod
    def from_state(cls, state: dict) -> PostgresHandle:
        proc = ProcRef.from_state(state["process"]) if state.get("process") else None
        return cls(Path(state["base_dir"]), int(state["port"]), proc, state.get("started_in"),
                   bool(state.get("durable", False)))


async def _select_one(url: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=3)
    try:
        return await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def _create_database(admin_url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url, timeout=5)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def db_ready(url: str) -> bool:
    """Ready = a real connection answers SELECT 1 (a listening socket alone is not enough)."""
    return run_coro(_select_one(url))


def start(*, port: int | None = None, timeout: float = START_TIMEOUT, durable: bool | None = None) -> PostgresHandle:
    """A fresh cluster in a new postgres-owned temp folder (outside the repo so its path is always reachable).

    durable: fsync, synchronous_commit and full_page_writes on; None reads $ORDERFLOW_PG_DURABLE (unset: off)."""
    base = Path(tempfile.mkdtemp(prefix="orderflow-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    os.chmod(base, 0o700)
    handle = PostgresHandle(base, port or free_port(), durable=durable_from_env() if durable is None else durable)
    try:
        return handle.start(timeout=timeout)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
