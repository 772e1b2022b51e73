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
plus the baseline: raw aiokafka consume + produce of the burst's events on the same broker, and the ratio.
Writes bench/results/latest.json and bench/results/latency.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
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

from contracts import PaymentConfirmed  # noqa: E402
from contracts.producer import StorefrontProducer  # noqa: E402
from orderflow import stack  # noqa: E402
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
    def __init__(self, state: dict, args: argparse.Namespace) -> None:
        self.state = state
        self.args = args
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

    async def phase(self, name: str, sessions: int, rate: float | None, timeout: float) -> dict[str, Any]:
        """Produce `sessions` paid orders at `rate` orders/s (None: as fast as possible); wait until committed."""
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
            started = time.monotonic()
            report = await drive(scenario, producer, Pace(rate=rate), on_sent=on_sent, send_setup=False)
            sent_in = time.monotonic() - started
            after = await self.end_offsets(INPUT_TOPICS)
        log(f"{name}: {report.sessions_sent} orders ({report.events_sent} events) produced in {sent_in:.1f} s")
        count, ok = await poll(lambda: self.committed(shops), lambda n: n >= sessions, timeout, interval=0.25)
        elapsed = time.monotonic() - started
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

        try:
            done, ok = await poll(done_so_far, lambda n: n >= total or proc.poll() is not None,
                                  self.args.phase_timeout, interval=0.5)
        finally:
            await admin.close()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        elapsed = time.monotonic() - (first_at or started)
        out = {"events": done, "topic_events": total, "caught_up": done >= total, "seconds": round(elapsed, 2),
               "events_per_s": round(done / elapsed, 1) if elapsed and done else None,
               "startup_seconds": round((first_at or started) - started, 2), "log": str(log_path)}
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
            # Fixed rates first, on an idle stack: behind a burst's backlog they would measure the backlog.
            rates = {}
            for rate in a.rates:
                rates[str(rate)] = await self.phase(f"r{rate:g}", int(rate * a.rate_seconds), rate, a.phase_timeout)
            mail_base = await self.mailbox_size()
            burst = await self.phase("burst", a.orders, None, a.phase_timeout)
            mails = await self.mails(2 * burst["committed"], mail_base)
            baseline = await self.baseline(burst["_offsets"])
            shared = self.state["kafka"].get("external") and not a.replay
            replay = {"skipped": "external broker: a replay group would apply other users' events; --replay forces"} \
                if a.skip_replay or shared else await self.replay()
            rss = self.peak_rss()
        finally:
            await self.pg.close()
            if self.offsets is not None:
                await _stop(self.offsets)
        orderflow_eps = burst["events_per_s"] or 0
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "settings": {"burst_orders": a.orders, "rates": a.rates, "rate_seconds": a.rate_seconds,
                         "workers": sorted(f"{w['name']}-{w['index']}" for w in self.state.get("services", []))},
            "committed_orders_per_s": burst["committed_orders_per_s"],
            "burst": _public(burst),
            "latency_by_rate": {r: _public(v) for r, v in rates.items()},
            "mails": mails,
            "peak_rss": rss,
            "replay": replay,
            "baseline_passthrough": baseline,
            "ratio_baseline_to_orderflow_events_per_s":
                round(baseline["events_per_s"] / orderflow_eps, 1) if baseline["events_per_s"] and orderflow_eps
                else None,
            "_latencies": {r: v["_latencies"] for r, v in rates.items()},
        }


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
                label=f"{rate} orders/s (p99 {percentile(values, 99):.0f} ms)")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=5000, help="orders in the as-fast-as-possible burst")
    p.add_argument("--rates", type=float, nargs="*", default=[100, 500], help="fixed rates (orders/s)")
    p.add_argument("--rate-seconds", type=float, default=15, help="how long each fixed rate runs")
    p.add_argument("--phase-timeout", type=float, default=60, help="deadline of each wait (s)")
    p.add_argument("--skip-replay", action="store_true")
    p.add_argument("--replay", action="store_true", help="replay even on an external (shared) broker")
    p.add_argument("--keep", action="store_true", help="leave a stack this run started running")
    args = p.parse_args(argv)

    state = stack.load_state()
    started_here = False
    if state is None or not all(stack.WorkerHandle.from_state(w).alive() for w in state.get("services", [])):
        log("no running stack: starting one (orderflow up --detach)")
        state = stack.up(detach=True)
        started_here = True
    t0 = time.monotonic()
    try:
        results = asyncio.run(Bench(state, args).main())
    finally:
        if started_here and not args.keep:
            stack.down()
    latencies = results.pop("_latencies")
    results["bench_seconds"] = round(time.monotonic() - t0, 1)
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
