"""Small process, port and polling helpers shared by the local broker, database, mail sink and stack.

Everything here polls with a deadline: readiness is observed, never assumed after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOCALHOST = "127.0.0.1"


class InfraError(RuntimeError):
    """A component could not start or stop; the message says which and where its log is."""


def free_port(host: str = LOCALHOST) -> int:
    """A port nothing listens on right now (the OS picks it, so parallel runs do not collide)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.1,
    abort: Callable[[], str | None] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; `abort` may return a reason to give up early."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - a failing probe just means "not yet"
            last_error = exc
        if abort is not None and (reason := abort()):
            raise InfraError(f"{what}: {reason}")
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise InfraError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def run_coro(coro: Awaitable[T]) -> T:
    """Run a coroutine from sync code, even when the calling thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    box: dict[str, object] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URLs only
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --- processes ---------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return [raw[: raw.index("(")].strip(), "comm", *raw[raw.rindex(")") + 2 :].split()]


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot: with the pid, it names one process uniquely."""
    fields = _stat(pid)
    return int(fields[21]) if fields else None


def pid_alive(pid: int, ticks: int | None = None) -> bool:
    """True while the process runs (a zombie counts as gone); `ticks` guards against pid reuse."""
    fields = _stat(pid)
    if fields is None or fields[2] in ("Z", "X"):
        return False
    return ticks is None or int(fields[21]) == ticks


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by pid (we start every component as a session leader), else the pid."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def group_members(pgid: int) -> list[int]:
    """Every live process in a process group, so a stop can make sure none outlives its leader."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and fields[2] not in ("Z", "X") and int(fields[4]) == pgid:
            found.append(int(entry.name))
    return found


def stop_pid(pid: int, *, ticks: int | None = None, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Send `sig` to the process group, wait for all of it to end, then SIGKILL whatever is left."""
    if not pid_alive(pid, ticks) and not group_members(pid):
        _reap(pid)
        return
    _signal_group(pid, sig)

    def gone() -> bool:
        _reap(pid)
        return not pid_alive(pid, ticks) and not group_members(pid)

    try:
        wait_until(gone, timeout=timeout, what=f"process {pid} to exit", interval=0.05)
    except InfraError:
        _signal_group(pid, signal.SIGKILL)
        wait_until(gone, timeout=10, what=f"process {pid} to die after SIGKILL", interval=0.05)


@dataclass
class ProcRef:
    """A pid plus its start time: enough to find, check and stop a detached process from another command."""

    pid: int
    ticks: int | None

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        return cls(pid, start_ticks(pid))

    def alive(self) -> bool:
        _reap(self.pid)
        return pid_alive(self.pid, self.ticks)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        stop_pid(self.pid, ticks=self.ticks, sig=sig, timeout=timeout)

    def to_state(self) -> dict[str, int | None]:
        return {"pid": self.pid, "ticks": self.ticks}

    @classmethod
    def from_state(cls, state: dict) -> ProcRef:
        return cls(int(state["pid"]), state.get("ticks"))


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log, for error messages that should explain themselves."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])
