"""The benchmark: the full local stack driven by the storefront simulator, next to a raw aiokafka baseline.

    .venv/bin/pip install -e '.[bench]'      # matplotlib, for the PNG (the JSON is written without it)
    .venv/bin/python bench/run.py            # uses the running stack (`orderflow up --detach`), else starts one

Measures, in one bounded run (< 10 minutes; every wait has a deadline and reports what it got):
(a) committed orders/s end to end: placed + paid -> `pending` in the orders schema and stock deducted in the
    inventory schema, every order of an as-fast-as-possible burst;
(b) latency p50/p95/p99 from payment.confirmed queued to the stock deduction's row (inventory.stock_moves.created_at)
    at 100 and 500 orders/s;
(c) mails delivered per second to the mail sink (two per committed order of the burst);
(d) peak RSS (VmHWM) of each service worker;
(e) replay speed: a fresh consumer group of the orders service reads its input topics from offset 0 (it changes
    nothing: every event is already recorded as processed);
plus the baseline: raw aiokafka consume + produce of the burst's events on the same broker, and the ratio;
(f) CPU seconds by part (broker, PostgreSQL, each worker, mail sink, this load generator) for each phase: idle, each
    fixed rate, the burst, mail drain, baseline, replay (bench/cpu.py; a table, and `cpu` in the JSON);
--profile: a py-spy flame graph of each worker during the burst (bench/results/profile-<worker>.svg);
--durable-db: once more on a fresh stack whose PostgreSQL has fsync and synchronous_commit on, both columns side by
side (`--durable-db only`: just that one).
Writes bench/results/latest.json and bench/results/latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from bench.cpu import CpuMeter, parts_of, phase_title  # noqa: E402
from contracts import PaymentConfirmed  # noqa: E402
from contracts.producer import StorefrontProducer  # noqa: E402
from orderflow import stack  # noqa: E402
from orderflow.infra import postgres  # noqa: E402
from orderflow.sim.driver import Pace, drive  # noqa: E402
from orderflow.sim.scenario import Mix, Scenario  # noqa: E402

RESULTS = REPO / "bench" / "results"
INPUT_TOPICS = ("shop.settings", "stock.adjusted", "cart.updated", "checkout.started", "order.placed",
                "payment.confirmed", "order.cancel_requested")
ORDERS_INPUTS = ("shop.settings", "order.placed", "payment.confirmed", "order.cancel_requested", "inventory.deductions")
PASSTHROUGH_TOPIC = "bench.passthrough"
ORDERS_ONLY = Mix(abandoned_carts=0, gateway_unpaid=0, manual_payments=0, duplicated_confirmations=0,
                  early_confirmations=0, cancels=0, restocks=0, shops=4, skus_per_shop=20)
"""Every session places a PayPal order and pays it: one committed order per session."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def poll(fn: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float,
               interval: float = 0.2) -> tuple[Any, bool]:
    """Call fn until done(value) or the deadline; returns (last value, reached)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if done(value):
            return value, True
        if time.monotonic() >= deadline:
            return value, False
        await asyncio.sleep(interval)  # polling interval of a deadline loop


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Bench:
    def __init__(self, state: dict, args: argparse.Namespace, *, label: str = "") -> None:
        self.state = state
        self.args = args
        self.label = label  # "" for the first pass, "durable" for the --durable-db one (file names, log lines)
        parts, notes = parts_of(state)
        self.meter = CpuMeter(parts, notes)
        self.profiles: list[Profile] = []
        self.bootstrap = state["kafka"]["bootstrap"]
        self.db_url = state["postgres"]["url"]
        self.mailbox = state["smtp"].get("mailbox_url")
        self.run = uuid.uuid4().hex[:6]
        self.pg: asyncpg.Pool | None = None
        self.offsets: AIOKafkaConsumer | None = None
        self.results: dict[str, Any] = {}

    # --- database probes ---------------------------------------------------------------------------------------

    async def committed(self, shops: list[str]) -> int:
        assert self.pg is not None
        row = await self.pg.fetchrow(
            """SELECT (SELECT count(*) FROM orders.orders WHERE shop_id = ANY($1) AND status = 'pending') AS placed,
                      (SELECT count(*) FROM inventory.order_stock WHERE shop_id = ANY($1) AND state = 'deducted')
                      AS deducted""", shops)
        return min(row["placed"], row["deducted"])

    async def stock_known(self, shops: list[str]) -> int:
        assert self.pg is not None
        return await self.pg.fetchval("SELECT count(*) FROM inventory.stock WHERE shop_id = ANY($1)", shops)

    async def deducted_at(self, shops: list[str]) -> dict[str, float]:
        assert self.pg is not None
        rows = await self.pg.fetch(
            """SELECT order_id, extract(epoch FROM min(created_at))::float8 AS at FROM inventory.stock_moves
               WHERE shop_id = ANY($1) AND kind = 'deducted' GROUP BY order_id""", shops)
        return {r["order_id"]: r["at"] for r in rows}

    # --- one load phase ---------------------------------------------------------------------------------------

    async def warm_up(self, rate: float, seconds: float) -> dict[str, Any]:
        """Load at `rate` for `seconds`, then wait for its mails: the broker's JVM compiles its hot paths (C2) in
        the first minutes under load, which a fresh stack's first phases otherwise pay for. Measured as its own
        phase ("warm-up"), apart from the figures."""
        self.meter.start("between")
        base = await self.mailbox_size()
        out = await self.phase("warm-up", int(rate * seconds), rate, self.args.phase_timeout)
        self.meter.switch("warm-up drain")
        await self.mails(2 * out["committed"], base)
        self.meter.switch("between")
        return _public(out)

    async def phase(self, name: str, sessions: int, rate: float | None, timeout: float, *,
                    on_load: Callable[[], None] | None = None,
                    after_load: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Produce `sessions` paid orders at `rate` orders/s (None: as fast as possible); wait until committed.

        The CPU meter counts from the first order sent to the last one committed as this phase; the setup before
        (shops, SKUs) and the checks after go to "between". on_load runs as the load starts, after_load when it is
        committed (the profiler's start and stop)."""
        scenario = Scenario.generate(hash((self.run, name)) & 0xFFFF, sessions, ORDERS_ONLY,
                                     namespace=f"bench{self.run}{name}")
        shops = [s.shop_id for s in scenario.shops]
        skus = sum(1 for e in scenario.setup_events if type(e).__name__ == "StockAdjusted")
        paid_at: dict[str, float] = {}

        def on_sent(event: Any, _mono: float) -> None:
            if isinstance(event, PaymentConfirmed):
                paid_at.setdefault(event.order_id, time.time() - (time.monotonic() - _mono))

        async with StorefrontProducer(self.bootstrap, linger_ms=2) as producer:
            await drive(scenario, producer, Pace(count=0))  # setup only: shops and SKUs
            _, ok = await poll(lambda: self.stock_known(shops), lambda n: n >= skus, 60)
            if not ok:
                raise RuntimeError(f"{name}: the inventory never knew the {skus} SKUs (is it running?)")
            before = await self.end_offsets(INPUT_TOPICS)
            self.meter.switch(name)
            if on_load is not None:
                on_load()
            started = time.monotonic()
            report = await drive(scenario, producer, Pace(rate=rate), on_sent=on_sent, send_setup=False)
            sent_in = time.monotonic() - started
            after = await self.end_offsets(INPUT_TOPICS)
        log(f"{name}: {report.sessions_sent} orders ({report.events_sent} events) produced in {sent_in:.1f} s")
        count, ok = await poll(lambda: self.committed(shops), lambda n: n >= sessions, timeout, interval=0.25)
        elapsed = time.monotonic() - started
        self.meter.switch("between")
        if after_load is not None:
            await after_load()
        if not ok:
            log(f"{name}: only {count} of {sessions} committed after {elapsed:.0f} s")
        deducted = await self.deducted_at(shops)
        latencies = [(deducted[o] - t) * 1000 for o, t in paid_at.items() if o in deducted]
        out = {
            "orders": sessions, "committed": count, "complete": ok, "events": report.events_sent,
            "target_rate": rate, "produce_seconds": round(sent_in, 2), "end_to_end_seconds": round(elapsed, 2),
            "committed_orders_per_s": round(count / elapsed, 1) if elapsed else None,
            "events_per_s": round(report.events_sent / elapsed, 1) if elapsed else None,
            "latency_ms": {f"p{q}": _r(percentile(latencies, q)) for q in (50, 95, 99)}
            | {"max": _r(max(latencies, default=None)), "mean": _r(statistics.fmean(latencies) if latencies else None)},
        }
        log(f"{name}: {out['committed_orders_per_s']} committed orders/s; latency {out['latency_ms']}")
        return out | {"_latencies": latencies, "_offsets": (before, after), "_shops": shops}

    # --- kafka helpers ----------------------------------------------------------------------------------------

    async def end_offsets(self, topics: tuple[str, ...], *, beginning: bool = False) -> dict[TopicPartition, int]:
        if self.offsets is None:  # one group-less consumer for every offset lookup of the run
            self.offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
            await self.offsets.start()
        partitions = int(self.state.get("topic_partitions") or 8)  # every catalogue topic has this many
        parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return await (self.offsets.beginning_offsets(parts) if beginning else self.offsets.end_offsets(parts))

    async def baseline(self, offsets: tuple[dict, dict]) -> dict[str, Any]:
        """Raw aiokafka: read exactly the burst's input events and produce each to one topic, acks=all."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        before, after = offsets
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(PASSTHROUGH_TOPIC, 8, 1)])
        except Exception:  # noqa: BLE001 - it exists from an earlier run
            pass
        finally:
            await admin.close()
        wanted = {tp: end for tp, end in after.items() if end > before.get(tp, 0)}
        total = sum(end - before.get(tp, 0) for tp, end in wanted.items())
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    max_partition_fetch_bytes=4 * 1024 * 1024)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
                                    linger_ms=2)
        await consumer.start()
        await producer.start()
        moved = 0
        started = time.monotonic()
        try:
            consumer.assign(list(wanted))
            for tp in wanted:
                consumer.seek(tp, before.get(tp, 0))
            remaining = dict(wanted)
            deadline = time.monotonic() + self.args.phase_timeout
            while remaining and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                futures = []
                for tp, records in batches.items():
                    for rec in records:
                        if tp in remaining and rec.offset < remaining[tp]:
                            futures.append(await producer.send(PASSTHROUGH_TOPIC, key=rec.key, value=rec.value))
                    if tp in remaining and await consumer.position(tp) >= remaining[tp]:
                        del remaining[tp]
                        consumer.pause(tp)
                await asyncio.gather(*futures)
                moved += len(futures)
        finally:
            elapsed = time.monotonic() - started
            await _stop(consumer)
            await producer.stop()
        out = {"events": moved, "expected": total, "seconds": round(elapsed, 2),
               "events_per_s": round(moved / elapsed, 1) if elapsed else None}
        log(f"baseline: {out}")
        return out

    async def replay(self) -> dict[str, Any]:
        """A fresh consumer group of the orders service from offset 0; events/s until caught up or the deadline."""
        end = await self.end_offsets(ORDERS_INPUTS)
        begin = await self.end_offsets(ORDERS_INPUTS, beginning=True)
        total = sum(end[tp] - begin.get(tp, 0) for tp in end)
        prefix = f"bench-replay-{self.run}"
        group = f"{prefix}-orders"
        env = {**os.environ, **stack.service_env(self.state), "ORDERFLOW_APP_ID_PREFIX": prefix,
               "ORDERS_HTTP_PORT": "0"}
        data = Path(tempfile.mkdtemp(prefix="bench-replay-"))
        log_path = data / "replay-worker.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "orderflow.worker", "orders", "--data-dir", str(data),
                                     "--http-port", "0"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=REPO, start_new_session=True)
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        started = time.monotonic()
        first_at: float | None = None

        async def done_so_far() -> int:
            nonlocal first_at
            offsets = await admin.list_consumer_group_offsets(group)
            n = sum(meta.offset - begin.get(tp, 0) for tp, meta in offsets.items() if tp in end and meta.offset > 0)
            if n and first_at is None:
                first_at = time.monotonic()
            return n

        finished: float | None = None
        try:
            done, ok = await poll(done_so_far, lambda n: n >= total or proc.poll() is not None,
                                  self.args.phase_timeout, interval=0.5)
            finished = time.monotonic()  # not after the worker's stop below: that is no part of the replay
        finally:
            await admin.close()
            exited = proc.poll()  # before our own terminate: did the worker stop by itself?
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        elapsed = (finished or time.monotonic()) - (first_at or started)
        out = {"events": done, "topic_events": total, "caught_up": done >= total, "seconds": round(elapsed, 2),
               "events_per_s": round(done / elapsed, 1) if elapsed and done else None,
               "startup_seconds": round((first_at or started) - started, 2), "log": str(log_path)}
        if exited is not None:
            out["worker_exit_code"] = exited  # it stopped before being told to: its log says why
        log(f"replay: {out}")
        return out

    # --- mails and memory -------------------------------------------------------------------------------------

    async def mails(self, expected_new: int, base: int) -> dict[str, Any]:
        if not self.mailbox:
            return {"skipped": "no mail sink URL (MAILBOX_URL) in the stack state"}
        samples: list[tuple[float, int]] = []

        async def count() -> int:
            async with httpx.AsyncClient(timeout=10) as http:
                n = (await http.get(f"{self.mailbox}/health")).json()["messages"] - base
            if not samples or samples[-1][1] != n:
                samples.append((time.monotonic(), n))
            return n

        n, ok = await poll(count, lambda v: v >= expected_new, self.args.phase_timeout, interval=0.25)
        moving = [s for s in samples if s[1] > 0]
        span = moving[-1][0] - moving[0][0] if len(moving) > 1 else 0.0
        delivered = moving[-1][1] - moving[0][1] if len(moving) > 1 else 0
        out = {"delivered": n, "expected": expected_new, "complete": ok,
               "mails_per_s": round(delivered / span, 1) if span else None}
        log(f"mails: {out}")
        return out

    async def mailbox_size(self) -> int:
        if not self.mailbox:
            return 0
        async with httpx.AsyncClient(timeout=10) as http:
            return (await http.get(f"{self.mailbox}/health")).json()["messages"]

    def peak_rss(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for w in self.state.get("services", []):
            pid = (w.get("process") or {}).get("pid")
            key = f"{w['name']}-{w['index']}"
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                              if ":" in line)
                out[key] = {"peak_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
                            "now_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1)}
            except (OSError, KeyError, ValueError):
                out[key] = {"error": f"no /proc/{pid}/status"}
        log(f"peak RSS: {out}")
        return out

    # --- the whole run ----------------------------------------------------------------------------------------

    async def main(self) -> dict[str, Any]:
        a = self.args
        self.pg = await asyncpg.create_pool(self.db_url, min_size=1, max_size=2)
        try:
            database = await self.database_settings()
            log(f"database: {database}")
            warmup = None
            if a.warmup_seconds > 0:
                warmup = await self.warm_up(a.rates[0] if a.rates else 100.0, a.warmup_seconds)
            if a.idle_seconds > 0:
                self.meter.switch("idle")
                log(f"idle: measuring the untouched stack for {a.idle_seconds:g} s")
                await asyncio.sleep(a.idle_seconds)
            self.meter.switch("between")
            # Fixed rates first, on an idle stack: behind a burst's backlog they would measure the backlog.
            rates = {}
            for rate in a.rates:
                rates[str(rate)] = await self.phase(f"r{rate:g}", int(rate * a.rate_seconds), rate, a.phase_timeout)
            mail_base = await self.mailbox_size()
            burst = await self.phase("burst", a.orders, None, a.phase_timeout,
                                     on_load=self.start_profiles if a.profile else None,
                                     after_load=self.stop_profiles if a.profile else None)
            self.meter.switch("mail drain")
            mails = await self.mails(2 * burst["committed"], mail_base)
            self.meter.switch("baseline")
            baseline = await self.baseline(burst["_offsets"])
            shared = self.state["kafka"].get("external") and not a.replay
            if a.skip_replay or shared:
                replay = {"skipped": "external broker: a replay group would apply other users' events; --replay "
                                     "forces" if shared else "--skip-replay"}
            else:
                self.meter.switch("replay")
                replay = await self.replay()
            self.meter.switch("between")
            rss = self.peak_rss()
        finally:
            self.meter.stop()
            await self.stop_profiles()
            await self.pg.close()
            if self.offsets is not None:
                await _stop(self.offsets)
        cpu = self.meter.report()
        print(f"\nCPU by part{' (' + self.label + ' database)' if self.label else ''}, percent of one core "
              f"({cpu['cores']} cores = {cpu['machine_percent']} %), from /proc/<pid>/stat at phase boundaries:")
        print(self.meter.table(cpu), flush=True)
        for note in cpu["not_measured"]:
            print(f"  not measured: {note}")
        orderflow_eps = burst["events_per_s"] or 0
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "settings": {"burst_orders": a.orders, "rates": a.rates, "rate_seconds": a.rate_seconds,
                         "idle_seconds": a.idle_seconds, "warmup_seconds": a.warmup_seconds, "profile": a.profile,
                         "workers": sorted(f"{w['name']}-{w['index']}" for w in self.state.get("services", []))},
            "database": database,
            "committed_orders_per_s": burst["committed_orders_per_s"],
            "warmup": warmup,
            "burst": _public(burst),
            "latency_by_rate": {r: _public(v) for r, v in rates.items()},
            "mails": mails,
            "peak_rss": rss,
            "replay": replay,
            "baseline_passthrough": baseline,
            "ratio_baseline_to_orderflow_events_per_s":
                round(baseline["events_per_s"] / orderflow_eps, 1) if baseline["events_per_s"] and orderflow_eps
                else None,
            "cpu": cpu,
            "profile": [p.result() for p in self.profiles] if a.profile else None,
            "_latencies": {r: v["_latencies"] for r, v in rates.items()},
        }

    async def database_settings(self) -> dict[str, Any]:
        """What the cluster really runs with (a --durable-db column is only honest if these say on)."""
        assert self.pg is not None
        out: dict[str, Any] = {}
        for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_level"):
            out[name] = await self.pg.fetchval(f"SHOW {name}")
        out["durable"] = out["fsync"] == "on" and out["synchronous_commit"] == "on"
        return out

    # --- profiles ---------------------------------------------------------------------------------------------

    def start_profiles(self) -> None:
        """py-spy record of every worker from the burst's first order; stopped (SIGINT) when it is committed."""
        exe = _py_spy()
        suffix = f"-{self.label}" if self.label else ""
        for w in self.state.get("services", []):
            pid = (w.get("process") or {}).get("pid")
            if pid:
                self.profiles.append(Profile.start(exe, f"{w['name']}-{w['index']}", int(pid), suffix,
                                                   max_seconds=self.args.phase_timeout + 30))
        log(f"profile: py-spy recording {len(self.profiles)} workers")

    async def stop_profiles(self) -> None:
        running = [p for p in self.profiles if p.proc is not None and p.proc.returncode is None]
        for p in running:
            p.interrupt()
        for p in running:
            await asyncio.to_thread(p.finish)
        for p in running:
            log(f"profile {p.worker}: {p.result()}")


def _py_spy() -> str | None:
    """The venv's py-spy (requirements.lock pins it), else one on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Profile:
    """One `py-spy record` of one worker, stopped with SIGINT (py-spy then writes the flame graph it has).

    If it cannot attach or record, its exact output is kept, and `py-spy dump` (one stack snapshot per thread, a text
    file next to where the SVG would be) is tried instead, so there is at least something to read."""

    def __init__(self, exe: str | None, worker: str, pid: int, suffix: str) -> None:
        self.exe, self.worker, self.pid = exe, worker, pid
        self.svg = RESULTS / f"profile-{worker}{suffix}.svg"
        self.dump = RESULTS / f"profile-{worker}{suffix}.txt"
        self.log = Path(tempfile.mkstemp(prefix=f"bench-py-spy-{worker}-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None
        self.started = self.ended = 0.0
        self.error: str | None = None
        self.fallback: str | None = None

    @classmethod
    def start(cls, exe: str | None, worker: str, pid: int, suffix: str, *, max_seconds: float) -> Profile:
        prof = cls(exe, worker, pid, suffix)
        if exe is None:
            prof.error = "py-spy not found (pip install -r requirements.lock)"
            return prof
        RESULTS.mkdir(parents=True, exist_ok=True)
        prof.svg.unlink(missing_ok=True)
        prof.dump.unlink(missing_ok=True)
        with open(prof.log, "wb") as out:
            prof.proc = subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--duration", str(int(max_seconds)), "--format", "flamegraph",
                 "-o", str(prof.svg)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        prof.started = time.monotonic()
        return prof

    def interrupt(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def finish(self) -> None:
        """Wait for py-spy to write its file (blocking: run in a thread); on failure, keep why and try a dump."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.ended = time.monotonic()
        if self.proc.returncode != 0 or not self.svg.exists():
            self.error = f"py-spy record exited with {self.proc.returncode}: {self.output()}"
            self.try_dump()

    def output(self) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())[:2000]

    def try_dump(self) -> None:
        assert self.exe is not None
        try:
            done = subprocess.run([self.exe, "dump", "--pid", str(self.pid)], capture_output=True, text=True,
                                  timeout=60)
        except subprocess.TimeoutExpired:
            self.fallback = "py-spy dump timed out after 60 s"
            return
        if done.returncode == 0:
            self.dump.write_text(done.stdout)
            self.fallback = f"py-spy dump written to {self.dump.relative_to(REPO)}"
        else:
            self.fallback = f"py-spy dump exited with {done.returncode}: {(done.stdout + done.stderr).strip()[:1000]}"

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"worker": self.worker, "pid": self.pid}
        if self.proc is not None and self.ended:
            out["seconds"] = round(self.ended - self.started, 1)
        if self.error is None and self.svg.exists():
            out["svg"] = str(self.svg.relative_to(REPO))
            samples = [line for line in self.output().split(" | ") if "Samples:" in line]
            if samples:
                out["py_spy"] = samples[-1].removeprefix("py-spy> ")
        else:
            out["error"] = self.error or "still running"
            if self.fallback:
                out["fallback"] = self.fallback
        return out


async def _stop(consumer: AIOKafkaConsumer) -> None:
    """aiokafka 0.14 may raise CancelledError from a group-less consumer's stop (its committed-offsets task)."""
    with contextlib.suppress(asyncio.CancelledError):
        await consumer.stop()


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _public(phase: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in phase.items() if not k.startswith("_")}


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def plot(latencies: dict[str, list[float]], path: Path, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no PNG"
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for rate, values in latencies.items():
        if not values:
            continue
        ordered = sorted(values)
        ax.plot([100 * i / max(1, len(ordered) - 1) for i in range(len(ordered))], ordered,
                label=f"{rate} (p99 {percentile(values, 99):.0f} ms)")
    ax.axhline(100, color="grey", linestyle="--", linewidth=0.8, label="p99 target 100 ms")
    ax.set_xlabel("percentile of orders")
    ax.set_ylabel("payment.confirmed -> stock deducted (ms)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def _workers(pairs: list[str]) -> dict[str, int]:
    counts = {}
    for pair in pairs:
        name, sep, count = pair.partition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise SystemExit(f"--workers expects SERVICE=N with N >= 1, got {pair!r}")
        counts[name] = int(count)
    return counts


@contextlib.contextmanager
def _pg_durable(durable: bool):
    """The stack's own cluster starts durable or not whatever the caller's environment says; restored after."""
    before = os.environ.get(postgres.DURABLE_ENV)
    os.environ[postgres.DURABLE_ENV] = "1" if durable else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(postgres.DURABLE_ENV, None)
        else:
            os.environ[postgres.DURABLE_ENV] = before


def run_pass(args: argparse.Namespace, *, durable: bool) -> dict[str, Any]:
    """One whole benchmark. durable=False: the running stack, else a fresh one (stopped after unless --keep);
    durable=True: always a fresh stack in <run dir>/bench-durable whose PostgreSQL has fsync, synchronous_commit
    and full_page_writes on."""
    workers = _workers(args.workers)
    rd = stack.run_dir() / "bench-durable" if durable else stack.run_dir()
    state = None if durable else stack.load_state(rd)
    started_here = False
    if state is None or not all(stack.WorkerHandle.from_state(w).alive() for w in state.get("services", [])):
        log(f"starting a stack in {rd}" + (" with a durable PostgreSQL (fsync, synchronous_commit on)"
                                           if durable else " (orderflow up --detach)"))
        with _pg_durable(durable):
            state = stack.up(detach=True, workers=workers, rd=rd)
        started_here = True
        if args.settle_seconds > 0:
            log(f"letting the new stack settle for {args.settle_seconds:g} s (not measured)")
            time.sleep(args.settle_seconds)
    elif workers:
        log(f"--workers {' '.join(args.workers)} ignored: using the running stack in {rd} as it is")
    t0 = time.monotonic()
    try:
        results = asyncio.run(Bench(state, args, label="durable" if durable else "").main())
    finally:
        if started_here and not args.keep:
            stack.down(rd=rd, say=lambda _msg: None)
        elif started_here:
            log(f"kept running: ORDERFLOW_RUN_DIR={rd} orderflow down stops it")
    results["bench_seconds"] = round(time.monotonic() - t0, 1)
    results["stack"] = {"run_dir": str(rd), "started_by_bench": started_here}
    return results


def comparison(fast: dict[str, Any], durable: dict[str, Any]) -> str:
    """Both passes side by side: the figures, then the CPU of PostgreSQL and of everything, per phase."""
    rows: list[tuple[str, Any, Any]] = [
        ("database fsync / synchronous_commit",
         *(f"{r['database']['fsync']} / {r['database']['synchronous_commit']}" for r in (fast, durable))),
        ("committed orders/s, burst", fast["committed_orders_per_s"], durable["committed_orders_per_s"]),
    ]
    for key in fast["latency_by_rate"]:
        f, d = fast["latency_by_rate"][key], durable["latency_by_rate"].get(key, {})
        rate = f"{float(key):g}"
        rows.append((f"committed orders/s at {rate}/s", f.get("committed_orders_per_s"),
                     d.get("committed_orders_per_s")))
        rows.append((f"p50 / p99 ms at {rate}/s",
                     *(f"{x.get('latency_ms', {}).get('p50')} / {x.get('latency_ms', {}).get('p99')}" for x in (f, d))))
    rows.append(("mails/s", fast["mails"].get("mails_per_s"), durable["mails"].get("mails_per_s")))
    rows.append(("replay events/s", fast["replay"].get("events_per_s"), durable["replay"].get("events_per_s")))
    rows.append(("raw passthrough / orderflow", fast["ratio_baseline_to_orderflow_events_per_s"],
                 durable["ratio_baseline_to_orderflow_events_per_s"]))
    fp, dp = fast["cpu"]["phases"], durable["cpu"]["phases"]
    for phase in fp:
        if phase == "between":
            continue
        f, d = fp[phase], dp.get(phase, {})
        title = phase_title(phase)
        rows.append((f"{title}: postgres, % of a core", f["percent_of_core_by_service"].get("postgres"),
                     (d.get("percent_of_core_by_service") or {}).get("postgres")))
        rows.append((f"{title}: stack + bench, % (of {fast['cpu']['machine_percent']})",
                     f["stack_and_bench_percent"], d.get("stack_and_bench_percent")))
        rows.append((f"{title}: other processes, %", f["other_processes_percent"], d.get("other_processes_percent")))
    width = max(len(r[0]) for r in rows) + 2
    cell = max(12, *(len(str(v)) + 2 for r in rows for v in r[1:]))
    lines = [f"{'figure':<{width}}{'fsync off':>{cell}}{'fsync on':>{cell}}"]
    lines += [f"{label:<{width}}{str(a):>{cell}}{str(b):>{cell}}" for label, a, b in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=5000, help="orders in the as-fast-as-possible burst")
    p.add_argument("--rates", type=float, nargs="*", default=[100, 500], help="fixed rates (orders/s)")
    p.add_argument("--rate-seconds", type=float, default=15, help="how long each fixed rate runs")
    p.add_argument("--phase-timeout", type=float, default=60, help="deadline of each wait (s)")
    p.add_argument("--skip-replay", action="store_true")
    p.add_argument("--replay", action="store_true", help="replay even on an external (shared) broker")
    p.add_argument("--keep", action="store_true", help="leave a stack this run started running")
    p.add_argument("--workers", nargs="*", default=[], metavar="SERVICE=N",
                   help="worker processes per service, for a stack this run starts (like orderflow up --workers)")
    p.add_argument("--idle-seconds", type=float, default=10, help="CPU of the untouched stack before any load")
    p.add_argument("--warmup-seconds", type=float, default=0,
                   help="load at the first rate for this long before the idle phase, then wait for its mails: "
                        "the figures of a warmed-up stack (the broker's JIT done) instead of a fresh one")
    p.add_argument("--settle-seconds", type=float, default=5,
                   help="wait after starting a stack, before the idle measurement")
    p.add_argument("--profile", action="store_true",
                   help="py-spy flame graph of each worker during the burst: bench/results/profile-<worker>.svg")
    p.add_argument("--durable-db", nargs="?", const="both", choices=["both", "only"],
                   help="once more on a fresh stack whose PostgreSQL has fsync and synchronous_commit on, and "
                        "both columns side by side; 'only': just the durable run")
    args = p.parse_args(argv)
    if args.durable_db and os.environ.get("DATABASE_URL"):
        p.error("--durable-db starts a PostgreSQL cluster of its own: unset DATABASE_URL")
    if args.profile and _py_spy() is None:
        log("--profile: py-spy is not installed (pip install -r requirements.lock); the profiles will say so")

    t0 = time.monotonic()
    results = run_pass(args, durable=args.durable_db == "only")
    latencies = {f"{r} orders/s": v for r, v in results.pop("_latencies").items()}
    if args.durable_db == "both":
        durable = run_pass(args, durable=True)
        latencies |= {f"{r} orders/s, fsync on": v for r, v in durable.pop("_latencies").items()}
        results["durable_db"] = durable
        results["bench_seconds_both"] = round(time.monotonic() - t0, 1)
        print("\nThe same benchmark with PostgreSQL not durable (fsync off) and durable (fsync on):")
        print(comparison(results, durable), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    note = plot(latencies, RESULTS / "latency.png",
                f"orderflow, {results['machine']['cpus']} CPUs, {results['machine']['cpu']} — {results['when']}")
    results["plot"] = note or str((RESULTS / "latency.png").relative_to(REPO))
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {RESULTS / 'latest.json'}" + (f"; {note}" if note else f" and {results['plot']}"))
    print(json.dumps({k: results[k] for k in ("committed_orders_per_s", "latency_by_rate", "mails", "peak_rss",
                                              "replay", "baseline_passthrough",
                                              "ratio_baseline_to_orderflow_events_per_s")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
