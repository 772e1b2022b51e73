"""CPU seconds by part of the stack, read from /proc/<pid>/stat at the benchmark's phase boundaries.

A part is a process tree: its root pid (checked against its start time, so a reused pid is never measured) and every
descendant that is not itself the root of another part. Its CPU is, summed over the live processes of the tree,
utime + stime + cutime + cstime: when a process of the tree exits and its parent reaps it, its time moves into the
parent's cutime/cstime, so the sum stays continuous (PostgreSQL's backends come and go under the postmaster).

Two parts are the benchmark process itself: the load generator (its own utime + stime only) and its children (cutime +
cstime plus live children that are not stack parts: the replay worker, py-spy). The machine's busy time comes from
/proc/stat (user + nice + system + irq + softirq; guest time is inside user, steal is left out); what is busy but
not in any part is "other processes" (other engineers' tests on a shared machine, the kernel's own threads).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")
SELF = "load generator"
CHILDREN = "bench children"
PHASE_TITLES = {"idle": "idle", "between": "between", "burst": "burst", "mail drain": "mails",
                "baseline": "baseline", "replay": "replay"}
"""Column titles; rate phases `r<rate>` become `<rate>/s`."""


@dataclass(frozen=True)
class Part:
    name: str  # "broker", "postgres", "cart-0", "mail sink", SELF, CHILDREN
    group: str  # what the table sums: "cart" for every cart worker; else the name
    pid: int
    ticks: int | None  # start time in clock ticks since boot (None: not checked)
    kind: str = "tree"  # "tree" | "self" | "children"


def _stat(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name, which may hold spaces and parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def _scan() -> dict[int, tuple[int, int, int, int]]:
    """pid -> (ppid, own ticks utime+stime, reaped children's ticks cutime+cstime, start ticks) of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat(entry.name)
        if f is None:
            continue
        # after the name: [0] state [1] ppid ... [11] utime [12] stime [13] cutime [14] cstime ... [19] starttime
        out[int(entry.name)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), int(f[19]))
    return out


def machine_ticks() -> dict[str, int]:
    """The machine's busy and steal ticks (all CPUs) from the first line of /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return {"busy": user + nice + system + irq + softirq, "steal": steal}


@dataclass
class Sample:
    at: float  # time.monotonic()
    ticks: dict[str, int | None]  # part name -> cumulative ticks (None: the process is gone or was replaced)
    machine: dict[str, int]
    processes: dict[str, int] = field(default_factory=dict)  # part name -> live processes in its tree


def parts_of(state: dict[str, Any]) -> tuple[list[Part], list[str]]:
    """The parts of a stack from its stack.json state, plus notes on what cannot be measured (external parts)."""
    parts: list[Part] = []
    notes: list[str] = []

    def add(name: str, group: str, section: dict | None, what: str) -> None:
        proc = (section or {}).get("process")
        if not proc:
            notes.append(f"{what}: no pid in the stack state (external?), not measured")
            return
        parts.append(Part(name, group, int(proc["pid"]), proc.get("ticks")))

    add("broker", "broker", state.get("kafka"), "broker")
    add("postgres", "postgres", state.get("postgres"), "PostgreSQL")
    for w in sorted(state.get("services", []), key=lambda w: (w["name"], int(w["index"]))):
        add(f"{w['name']}-{w['index']}", w["name"], w, f"worker {w['name']}-{w['index']}")
    add("mail sink", "mail sink", state.get("mailsink"), "mail sink")
    me = os.getpid()
    parts.append(Part(SELF, SELF, me, None, "self"))
    parts.append(Part(CHILDREN, CHILDREN, me, None, "children"))
    return parts, notes


@dataclass
class CpuMeter:
    """Samples every part at each phase switch and adds the interval's CPU to the phase that just ended."""

    parts: list[Part]
    notes: list[str] = field(default_factory=list)
    current: str | None = None
    last: Sample | None = None
    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, dict[str, float | None]] = field(default_factory=dict)  # phase -> part -> seconds
    machine: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> busy/steal seconds
    order: list[str] = field(default_factory=list)
    processes: dict[str, int] = field(default_factory=dict)  # at the last sample

    def sample(self) -> Sample:
        procs = _scan()
        machine = machine_ticks()
        at = time.monotonic()
        kids: dict[int, list[int]] = defaultdict(list)
        for pid, (ppid, *_rest) in procs.items():
            kids[ppid].append(pid)
        roots = {p.pid for p in self.parts if p.kind == "tree"}

        counted: dict[str, int] = {}

        def tree(root: int, name: str) -> int:
            total, stack = 0, [root]
            while stack:
                pid = stack.pop()
                _ppid, own, reaped, _start = procs[pid]
                total += own + reaped
                counted[name] = counted.get(name, 0) + 1
                stack.extend(k for k in kids.get(pid, ()) if k not in roots)
            return total

        ticks: dict[str, int | None] = {}
        for part in self.parts:
            info = procs.get(part.pid)
            if info is None or (part.ticks is not None and info[3] != part.ticks):
                ticks[part.name] = None
            elif part.kind == "self":
                ticks[part.name] = info[1]
            elif part.kind == "children":
                counted[part.name] = 0
                ticks[part.name] = info[2] + sum(tree(k, part.name) for k in kids.get(part.pid, ()) if k not in roots)
            else:
                ticks[part.name] = tree(part.pid, part.name)
        return Sample(at, ticks, machine, counted)

    def start(self, phase: str) -> None:
        self.current, self.last = phase, self.sample()

    def switch(self, phase: str | None) -> None:
        """End the current phase (its CPU since the last switch is added to it) and begin `phase` (None: stop)."""
        if self.last is None or self.current is None:
            if phase is not None:
                self.start(phase)
            return
        now = self.sample()
        name = self.current
        if name not in self.order:
            self.order.append(name)
        self.wall[name] = self.wall.get(name, 0.0) + (now.at - self.last.at)
        per = self.cpu.setdefault(name, {})
        for part in self.parts:
            a, b = self.last.ticks.get(part.name), now.ticks.get(part.name)
            delta = None if a is None or b is None else (b - a) / CLK_TCK
            had = per.get(part.name, 0.0)
            per[part.name] = None if delta is None or had is None else had + delta
        m = self.machine.setdefault(name, {"busy": 0.0, "steal": 0.0})
        for key in m:
            m[key] += (now.machine[key] - self.last.machine[key]) / CLK_TCK
        self.processes = now.processes
        self.current, self.last = phase, now if phase is not None else None

    def stop(self) -> None:
        self.switch(None)

    # --- the figures --------------------------------------------------------------------------------------------

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for part in self.parts:
            out.setdefault(part.group, []).append(part.name)
        return out

    def report(self) -> dict[str, Any]:
        """JSON: per phase the wall seconds, CPU seconds and % of one core of every part and service, the totals."""
        phases: dict[str, Any] = {}
        columns = [*self.order, "whole run"] if self.order else []
        for phase in columns:
            names = self.order if phase == "whole run" else [phase]
            wall = sum(self.wall[n] for n in names)
            secs: dict[str, float | None] = {}
            for part in self.parts:
                values = [self.cpu[n].get(part.name) for n in names]
                secs[part.name] = None if any(v is None for v in values) else sum(v for v in values if v)
            busy = sum(self.machine[n]["busy"] for n in names)
            steal = sum(self.machine[n]["steal"] for n in names)
            by_group = {g: _sum([secs[n] for n in members]) for g, members in self.groups().items()}
            stack_total = _sum(list(secs.values()))

            def pct(v: float | None, wall: float = wall) -> float | None:
                return None if v is None or not wall else round(100 * v / wall, 1)

            phases[phase] = {
                "wall_s": round(wall, 2),
                "cpu_s": {k: _round(v, 3) for k, v in secs.items()},
                "percent_of_core": {k: pct(v) for k, v in secs.items()},
                "percent_of_core_by_service": {k: pct(v) for k, v in by_group.items()},
                "stack_and_bench_percent": pct(stack_total),
                "machine_busy_percent": pct(busy),
                "other_processes_percent": pct(None if stack_total is None else busy - stack_total),
                "steal_percent": pct(steal),
            }
        return {
            "method": "utime+stime+cutime+cstime of each part's process tree from /proc/<pid>/stat at phase "
                      "boundaries; machine busy from /proc/stat; percent of one core = CPU s / wall s * 100",
            "cores": os.cpu_count(),
            "machine_percent": 100 * (os.cpu_count() or 1),
            "parts": {p.name: {"pid": p.pid, "service": p.group, "processes_at_end": self.processes.get(p.name)}
                      for p in self.parts},
            "not_measured": self.notes,
            "phases": phases,
        }

    def table(self, report: dict[str, Any] | None = None) -> str:
        """The report as text: one row per part (services summed, their workers listed when several)."""
        report = report or self.report()
        phases = report["phases"]
        if not phases:
            return "(no phase measured)"
        cols = list(phases)
        titles = [phase_title(c) for c in cols]
        width = max(8, *(len(t) + 1 for t in titles))
        rows: list[tuple[str, list[str]]] = [("wall s", [f"{phases[c]['wall_s']:.1f}" for c in cols])]

        def cells(get: Any) -> list[str]:
            return [_fmt(get(phases[c])) for c in cols]

        for group, members in self.groups().items():
            label = group if len(members) == 1 else f"{group} ({len(members)} workers)"
            rows.append((label, cells(lambda p, g=group: p["percent_of_core_by_service"][g])))
            if len(members) > 1:
                for m in members:
                    rows.append((f"  {m}", cells(lambda p, m=m: p["percent_of_core"][m])))
        rows.append(("stack + bench", cells(lambda p: p["stack_and_bench_percent"])))
        rows.append(("other processes", cells(lambda p: p["other_processes_percent"])))
        rows.append((f"machine busy /{report['machine_percent']}", cells(lambda p: p["machine_busy_percent"])))
        label_width = max(len(r[0]) for r in rows) + 2
        lines = [f"{'% of one core':<{label_width}}" + "".join(f"{t:>{width}}" for t in titles)]
        for label, values in rows:
            if label == "stack + bench":
                lines.append("-" * (label_width + width * len(cols)))
            lines.append(f"{label:<{label_width}}" + "".join(f"{v:>{width}}" for v in values))
        return "\n".join(lines)


def phase_title(phase: str) -> str:
    if phase.startswith("r") and phase[1:].replace(".", "", 1).isdigit():
        return f"{phase[1:]}/s"
    return PHASE_TITLES.get(phase, phase)


def _sum(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v)


def _round(v: float | None, n: int) -> float | None:
    return None if v is None else round(v, n)


def _fmt(v: float | None) -> str:
    return "gone" if v is None else f"{v:.1f}"
