"""The local stack: broker, database, mail sink and every discovered service, started and stopped as one.

State lives in `<repo>/.run/` (or $ORDERFLOW_RUN_DIR): `stack.json` records ports, pids and URLs so that `down`,
`status` and `env` work from any later command. Each `up` starts from empty data; `down` deletes the data and keeps
the logs (in `<run dir>/logs` and `kafka.log`) for a post-mortem.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from orderflow.infra import kafka, mailpit, mailsink, postgres
from orderflow.infra.ports import (
    LOCALHOST,
    InfraError,
    ProcRef,
    free_port,
    http_ok,
    run_coro,
    tail,
    wait_until,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARTITIONS = 8
DLQ_PARTITIONS = 8
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DLQ_HEADROOM_BYTES = 64 * 1024
DLQ_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES + DLQ_HEADROOM_BYTES
"""A dead letter is its source message plus `dlq.*` headers: a DLQ accepts a little more than its source topic
(a letter that still does not fit goes out as a stub, see `orderflow.runtime.dlq`)."""
SERVICE_START_TIMEOUT = 120.0


class StackError(InfraError):
    """Something about the stack as a whole; the message is meant for the operator, one line or a log tail."""


def run_dir() -> Path:
    return Path(os.environ.get("ORDERFLOW_RUN_DIR") or REPO_ROOT / ".run").resolve()


def _state_file(rd: Path) -> Path:
    return rd / "stack.json"


def load_state(rd: Path | None = None) -> dict | None:
    path = _state_file(rd or run_dir())
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def setting(env_name: str, section: str, key: str) -> str:
    """An environment variable, else the running local stack's value (so tools work after `orderflow up`)."""
    if value := os.environ.get(env_name):
        return value
    state = load_state()
    if state is None:
        raise InfraError(f"set {env_name} or run `orderflow up --detach`")
    return state[section][key]


def _save_state(rd: Path, state: dict) -> None:
    rd.mkdir(parents=True, exist_ok=True)
    tmp = _state_file(rd).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(_state_file(rd))


# --- topics ------------------------------------------------------------------------------------------------


def topic_partitions() -> int:
    raw = os.environ.get("TOPIC_PARTITIONS", "")
    try:
        value = int(raw) if raw else DEFAULT_PARTITIONS
    except ValueError:
        raise StackError(f"TOPIC_PARTITIONS={raw!r} is not a whole number") from None
    if value < 1:
        raise StackError(f"TOPIC_PARTITIONS={value} must be at least 1")
    return value


def wanted_topics(partitions: int | None = None, brokers: int = 1) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, configs) for every topic of the contract registry and its dead-letter topic, on a cluster
    of `brokers`: from three brokers on each topic also says `min.insync.replicas=2` (see `replication_for`)."""
    from contracts import ALL

    partitions = partitions or topic_partitions()
    _replication, min_isr = kafka.replication_for(brokers)
    durability = {"min.insync.replicas": str(min_isr)} if min_isr > 1 else {}
    wanted = []
    for spec in ALL:
        wanted.append((spec.name, partitions, {**spec.configs, "max.message.bytes": str(MAX_MESSAGE_BYTES),
                                               **durability}))
        wanted.append((spec.dlq, DLQ_PARTITIONS, {**spec.dlq_configs, "max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES),
                                                  **durability}))
    return wanted


RAISED_ON_EXISTING = ("max.message.bytes",)
"""Settings `orderflow topics` brings existing topics up to (only ever raised; the cleanup policy of an existing topic
is never changed: turning compaction on or off under live data is an operator's decision)."""

DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source: set on the topic itself


async def _topic_overrides(admin: object, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's own settings (not the broker's defaults), by name."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not names:
        return {}
    responses = await admin.describe_configs(  # type: ignore[attr-defined]
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    overrides: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, error_message, _type, name, entries in response.resources:
            if error_code:
                raise StackError(f"describing topic {name} failed: error {error_code} {error_message or ''}".strip())
            own: dict[str, str] = {}
            for entry in entries:
                config_name, value, source = entry[0], entry[1], entry[3]
                is_own = source == DYNAMIC_TOPIC_CONFIG if response.API_VERSION >= 1 else not source
                if is_own and value is not None:
                    own[config_name] = value
            overrides[name] = own
    return overrides


async def _raise_existing(admin: object, wanted: dict[str, dict[str, str]]) -> dict[str, str]:
    """Raise RAISED_ON_EXISTING settings of existing topics that are below what is wanted; {name: what changed}.

    aiokafka 0.14 only has the non-incremental AlterConfigs, which replaces all of a topic's own settings: the
    topic's current ones are sent along, changed only where raised."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    current = await _topic_overrides(admin, list(wanted))
    changes: dict[str, dict[str, str]] = {}
    for name, configs in wanted.items():
        own = current.get(name, {})
        for key in RAISED_ON_EXISTING:
            if key in configs and int(own.get(key) or 0) < int(configs[key]):
                changes.setdefault(name, {})[key] = configs[key]
    if not changes:
        return {}
    responses = await admin.alter_configs(  # type: ignore[attr-defined]
        [ConfigResource(ConfigResourceType.TOPIC, name, {**current.get(name, {}), **raised})
         for name, raised in changes.items()])
    for response in responses:
        for error_code, error_message, _type, name in response.resources:
            if error_code:
                raise StackError(f"altering topic {name} failed: error {error_code} {error_message or ''}".strip())
    return {name: ", ".join(f"{k}={v}" for k, v in raised.items()) for name, raised in changes.items()}


async def _create_topics(bootstrap: str, partitions: int | None) -> dict[str, str]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from orderflow.ops.broker import options

    admin = AIOKafkaAdminClient(**options(bootstrap, request_timeout_ms=30000))
    await admin.start()
    try:
        existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
        brokers = len((await admin.describe_cluster())["brokers"])
        replication, _min_isr = kafka.replication_for(brokers)
        wanted = wanted_topics(partitions, brokers)
        outcome = {name: f"exists ({existing[name]} partitions)" for name, _, _ in wanted if name in existing}
        raised = await _raise_existing(admin, {name: configs for name, _, configs in wanted if name in existing})
        for name, change in raised.items():
            outcome[name] += f", raised {change}"
        missing = [NewTopic(name, n, replication, topic_configs=configs)
                   for name, n, configs in wanted if name not in existing]
        if missing:
            response = await admin.create_topics(missing, timeout_ms=30000)
            for error in response.topic_errors:
                name, code = error[0], error[1]
                message = error[2] if len(error) > 2 else ""
                if code == 0:
                    outcome[name] = f"created ({next(t.num_partitions for t in missing if t.name == name)} "
                    outcome[name] += "partitions)"
                elif code == 36:  # TOPIC_ALREADY_EXISTS: someone else created it meanwhile
                    outcome[name] = "exists"
                else:
                    raise StackError(f"creating topic {name} failed: error {code} {message or ''}".strip())
        return outcome
    finally:
        await admin.close()


def create_topics(bootstrap: str, partitions: int | None = None) -> dict[str, str]:
    """Create every registry topic (its partitions, cleanup policy, size limit) and its `.dlq`, with replication
    factor min(3, brokers) and, on three brokers or more, min.insync.replicas 2; existing ones are kept, their size
    limit raised to the wanted one when lower (their replication is an operator's reassignment, not changed here)."""
    return run_coro(_create_topics(bootstrap, partitions))


# --- service workers ---------------------------------------------------------------------------------------


@dataclass
class WorkerHandle:
    """One service worker process; tests use stop(signal.SIGKILL) and start_worker(...) again to crash it."""

    name: str
    index: int
    port: int
    port_env: str
    data_dir: Path
    log_file: Path
    proc: ProcRef | None = None
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return self.proc is not None and self.proc.alive()

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/health")

    def wait_healthy(self, timeout: float = SERVICE_START_TIMEOUT) -> WorkerHandle:
        def exited() -> str | None:
            if self.alive():
                return None
            return f"exited before it was healthy; log {self.log_file}:\n{tail(self.log_file)}"

        try:
            wait_until(self.healthy, timeout=timeout, interval=0.2, abort=exited,
                       what=f"{self.name}-{self.index} at {self.url}/health (log: {self.log_file})")
        except InfraError as exc:
            raise StackError(str(exc)) from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """SIGTERM lets the worker commit and leave its group; SIGKILL simulates a crash."""
        if self.proc is not None:
            self.proc.stop(sig=sig, timeout=timeout)
        if self.popen is not None:
            self.popen.wait()

    def to_state(self) -> dict:
        return {"name": self.name, "index": self.index, "port": self.port, "port_env": self.port_env,
                "url": self.url, "data_dir": str(self.data_dir), "log": str(self.log_file),
                "process": self.proc.to_state() if self.proc else None}

    @classmethod
    def from_state(cls, state: dict) -> WorkerHandle:
        proc = ProcRef.from_state(state["process"]) if state.get("process") else None
        return cls(state["name"], int(state["index"]), int(state["port"]), state["port_env"],
                   Path(state["data_dir"]), Path(state["log"]), proc)


def start_worker(name: str, index: int, env: Mapping[str, str], *, rd: Path | None = None,
                 port: int | None = None, wait: bool = True,
                 timeout: float = SERVICE_START_TIMEOUT) -> WorkerHandle:
    """Start `python -m orderflow.worker NAME` detached, with its own data dir, log and HTTP port.

    Restarting a worker with the same (name, index) reuses its data dir, as a real restart would.
    """
    from orderflow.services import get

    spec = get(name)
    rd = rd or run_dir()
    port = port or free_port()
    data_dir = rd / "data" / f"{name}-{index}"
    log_file = rd / "logs" / f"{name}-{index}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **env, spec.port_env: str(port), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "orderflow.worker", name, "--data-dir", str(data_dir)],
            env=child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=REPO_ROOT,
        )
    handle = WorkerHandle(name, index, port, spec.port_env, data_dir, log_file, ProcRef.of(popen.pid), popen)
    if wait:
        try:
            handle.wait_healthy(timeout)
        except BaseException:
            handle.stop(timeout=10)
            raise
    return handle


# --- the stack ---------------------------------------------------------------------------------------------


def service_env(state: Mapping) -> dict[str, str]:
    """What every service process needs to find the broker, database, SMTP server and the back-office token."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": state["kafka"]["bootstrap"],
        "DATABASE_URL": state["postgres"]["url"],
        "SMTP_HOST": state["smtp"]["host"],
        "SMTP_PORT": str(state["smtp"]["port"]),
        "BACKOFFICE_TOKEN": state["backoffice_token"],
        "TOPIC_PARTITIONS": str(state["topic_partitions"]),
        # faust creates its tables' changelogs itself: the same replication as the catalogue's topics
        "TOPIC_REPLICATION_FACTOR": str(kafka.replication_for(int(state["kafka"].get("brokers", 1)))[0]),
    }
    if state["smtp"].get("mailbox_url"):
        env["MAILBOX_URL"] = state["smtp"]["mailbox_url"]
        # The local sink answers at once and shares the cores: more connections would only take CPU from orders.
        env["MAIL_SMTP_CONNECTIONS"] = os.environ.get("MAIL_SMTP_CONNECTIONS", "1")
    return env


def _any_alive(state: Mapping) -> bool:
    refs = [s.get("process") for s in (state.get("kafka"), state.get("postgres"), state.get("mailsink")) if s]
    refs += [node.get("process") for node in (state.get("kafka") or {}).get("nodes", [])]
    refs += [w.get("process") for w in state.get("services", [])]
    return any(ProcRef.from_state(r).alive() for r in refs if r)


def _start_infra(rd: Path, say: Callable[[str], None], brokers: int = 1, mail: str = "sink") -> dict:
    """Broker(s), database and mail sink in parallel (the brokers' JVM start dominates); env vars select external
    ones. `brokers` > 1 starts a local KRaft cluster of that many nodes (each a controller voter too). `mail`:
    "sink" (the hand-written sink, with its fault modes) or "mailpit" (Mailpit, built once with Go)."""
    state: dict = {"run_dir": str(rd)}
    jobs: dict[str, Callable[[], object]] = {}
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        if not kafka.broker_ready(bootstrap):
            raise StackError(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} is set but no broker answers there "
                             "(unset it to start a local broker)")
        state["kafka"] = {"bootstrap": bootstrap, "external": True, "brokers": kafka.registered(bootstrap)}
    elif brokers > 1:
        jobs["kafka"] = lambda: kafka.start_cluster(rd, brokers)
    else:
        jobs["kafka"] = lambda: kafka.start(rd)
    if url := os.environ.get("DATABASE_URL"):
        state["postgres"] = {"url": url, "external": True}
    else:
        jobs["postgres"] = lambda: postgres.start()
    if host := os.environ.get("SMTP_HOST"):
        state["smtp"] = {"host": host, "port": int(os.environ.get("SMTP_PORT", "25")),
                         "mailbox_url": os.environ.get("MAILBOX_URL"), "external": True}
    else:
        jobs["mailsink"] = (lambda: mailpit.start(rd)) if mail == "mailpit" else (lambda: mailsink.start(rd))

    errors = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        for name, future in futures.items():
            try:
                handle = future.result()
            except Exception as exc:  # noqa: BLE001 - collected, the others are stopped, then raised
                errors.append(f"{name}: {exc}")
                continue
            state[name] = handle.to_state()  # type: ignore[attr-defined]
    if "mailsink" in state:
        sink = state["mailsink"]
        state["smtp"] = {"host": sink["smtp_host"], "port": sink["smtp_port"], "mailbox_url": sink["url"]}
    if errors:
        _stop_infra(state)
        raise StackError("could not start the stack:\n" + "\n".join(errors))
    if "kafka" in jobs:
        count = state["kafka"].get("brokers", 1)
        replication, min_isr = kafka.replication_for(count)
        cluster = f"{count} brokers, replication {replication}, min ISR {min_isr}; " if count > 1 else ""
        say(f"broker    {state['kafka']['bootstrap']}  ({cluster}started in {state['kafka']['started_in']:.1f} s; "
            f"log {state['kafka']['log']})")
    else:
        say(f"broker    {state['kafka']['bootstrap']}  (external)")
    say(f"database  {state['postgres']['url']}" + ("  (external)" if state["postgres"].get("external") else ""))
    mailbox = state["smtp"].get("mailbox_url") or "-"
    say(f"smtp      {state['smtp']['host']}:{state['smtp']['port']}  mailbox {mailbox}")
    return state


def _stop_infra(state: Mapping) -> None:
    if (sink := state.get("mailsink")) and not sink.get("external"):
        mailsink.MailSinkHandle.from_state(sink).stop()
    if (db := state.get("postgres")) and not db.get("external"):
        postgres.PostgresHandle.from_state(db).remove()
    if (broker := state.get("kafka")) and not broker.get("external"):
        if "nodes" in broker:
            cluster = kafka.KafkaCluster.from_state(broker)
            cluster.stop()
            for node in cluster.nodes:
                shutil.rmtree(node.data_dir, ignore_errors=True)
        else:
            handle = kafka.KafkaHandle.from_state(broker)
            handle.stop()
            shutil.rmtree(handle.data_dir, ignore_errors=True)


def _migrate(database_url: str) -> None:
    from orderflow.runtime.db import migrate_all

    result = migrate_all(database_url)
    if hasattr(result, "__await__"):
        run_coro(result)


def up(*, detach: bool = True, workers: Mapping[str, int] | None = None, rd: Path | None = None,
       say: Callable[[str], None] = print, brokers: int = 1, mail: str = "sink") -> dict:
    """Start everything, wait until each part is healthy, record it in stack.json; foreground unless detach.
    `brokers`: how many local Kafka brokers (3 = a real cluster: replication 3, min ISR 2); `mail`: sink or mailpit."""
    from orderflow.services import discover

    rd = rd or run_dir()
    workers = dict(workers or {})
    specs = discover()
    unknown = set(workers) - {s.name for s in specs}
    if unknown:
        raise StackError(f"unknown service(s) in --workers: {', '.join(sorted(unknown))}")
    old = load_state(rd)
    if old and _any_alive(old):
        raise StackError(f"the stack in {rd} is already running (`orderflow down` first, or `orderflow status`)")
    if old:
        down(rd=rd, say=lambda _msg: None)  # a stale state (crash, reboot): clear its leftovers
    shutil.rmtree(rd / "kafka-data", ignore_errors=True)
    for node_dir in rd.glob("kafka-*/kafka-data"):  # a cluster's nodes (a crashed run's would keep its cluster id)
        shutil.rmtree(node_dir, ignore_errors=True)
    (rd / "logs").mkdir(parents=True, exist_ok=True)

    begun = time.monotonic()
    state = _start_infra(rd, say, brokers, mail)
    state.update(backoffice_token=os.environ.get("BACKOFFICE_TOKEN") or secrets.token_urlsafe(24),
                 topic_partitions=topic_partitions(), services=[], started_at=time.time())
    _save_state(rd, state)
    try:
        create_topics(state["kafka"]["bootstrap"], state["topic_partitions"])
        say(f"topics    {len(wanted_topics(state['topic_partitions']))} ready")
        if specs:
            _migrate(state["postgres"]["url"])
        env = service_env(state)
        handles = [start_worker(spec.name, i, env, rd=rd, wait=False)
                   for spec in specs for i in range(workers.get(spec.name, 1))]
        state["services"] = [h.to_state() for h in handles]
        _save_state(rd, state)
        for handle in handles:
            handle.wait_healthy()
            say(f"{handle.name:<9} {handle.url}  (worker {handle.index}, log {handle.log_file})")
    except BaseException:
        down(rd=rd, say=lambda _msg: None)
        raise
    say(f"up in {time.monotonic() - begun:.1f} s; state in {_state_file(rd)}")
    for line in access_lines(state):
        say(line)
    if not detach:
        state["supervisor_pid"] = os.getpid()
        _save_state(rd, state)
        _supervise(rd, state, say)
    return state


def _supervise(rd: Path, state: dict, say: Callable[[str], None]) -> None:
    """Foreground mode: wait for Ctrl-C/SIGTERM (or a `down` elsewhere), report crashed workers, then stop all."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    say("running; Ctrl-C stops everything")
    reported: set[str] = set()
    try:
        while not stop.wait(1.0):
            if not _state_file(rd).exists():
                say("stack was stopped elsewhere")
                return
            for w in state["services"]:
                key = f"{w['name']}-{w['index']}"
                if key not in reported and not ProcRef.from_state(w["process"]).alive():
                    reported.add(key)
                    say(f"{key} exited; log {w['log']}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("stopping...")
    down(rd=rd, say=say)


def down(*, rd: Path | None = None, say: Callable[[str], None] = print) -> bool:
    """Stop services, mail sink, database and broker; delete their data. False when nothing was recorded."""
    rd = rd or run_dir()
    state = load_state(rd)
    if state is None:
        say(f"nothing recorded in {rd}")
        return False
    for w in reversed(state.get("services", [])):
        if w.get("process"):
            ProcRef.from_state(w["process"]).stop(timeout=30)
    _stop_infra(state)
    shutil.rmtree(rd / "data", ignore_errors=True)
    _state_file(rd).unlink(missing_ok=True)
    say("stopped")
    return True


@dataclass
class Check:
    component: str
    healthy: bool
    detail: str


def status(rd: Path | None = None) -> list[Check]:
    """Ask each part the question that proves it works: metadata, SELECT 1, GET /health."""
    state = load_state(rd or run_dir())
    if state is None:
        return [Check("stack", False, "not running (no stack.json)")]

    def probe(name: str, fn: Callable[[], bool], detail: str) -> Check:
        try:
            return Check(name, bool(fn()), detail)
        except Exception as exc:  # noqa: BLE001 - a probe failing is the answer "unhealthy"
            return Check(name, False, f"{detail}: {exc}")

    bootstrap = state["kafka"]["bootstrap"]
    checks = [
        probe("broker", lambda: kafka.broker_ready(bootstrap), bootstrap),
        probe("database", lambda: postgres.db_ready(state["postgres"]["url"]), state["postgres"]["url"]),
    ]
    if checks[-1].healthy:
        checks.append(_outbox_check(state["postgres"]["url"]))
    if mailbox := state["smtp"].get("mailbox_url"):
        checks.append(probe("mailsink", lambda: http_ok(f"{mailbox}/health") or http_ok(f"{mailbox}/readyz"), mailbox))
    for w in state.get("services", []):
        checks.append(probe(f"{w['name']}-{w['index']}", lambda w=w: http_ok(f"{w['url']}/health"), w["url"]))
    return checks


def _outbox_check(database_url: str) -> Check:
    """Rows an outbox relay parked (never publishable as they are): shown, not unhealthy (the rest flows on)."""
    from orderflow.ops.outbox import OutboxError, parked_counts

    try:
        parked = run_coro(parked_counts(database_url))
    except OutboxError as exc:
        return Check("outbox", False, str(exc))
    if not parked:
        return Check("outbox", True, "no parked rows")
    listed = ", ".join(f"{service} {n}" for service, n in sorted(parked.items()))
    return Check("outbox", True, f"PARKED rows: {listed} (orderflow outbox list)")


def env_vars(rd: Path | None = None) -> dict[str, str]:
    """The stack's connection settings, for `eval $(orderflow env)` and other tools."""
    state = load_state(rd or run_dir())
    if state is None:
        raise StackError("the stack is not running (orderflow up --detach)")
    env = service_env(state)
    env.pop("TOPIC_PARTITIONS")
    env.setdefault("MAILBOX_URL", "")
    ordered = {k: env[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SMTP_HOST", "SMTP_PORT",
                                   "MAILBOX_URL", "BACKOFFICE_TOKEN")}
    for w in state.get("services", []):
        ordered.setdefault(f"{w['name'].upper()}_URL", w["url"])
    return ordered


def access_lines(state: Mapping) -> list[str]:
    """What `up` ends with: where the back office is, the operator's token, and how to get both again."""
    orders = next((w["url"] for w in state.get("services", []) if w["name"] == "orders"), None)
    lines = [f"back office {orders}/backoffice/" if orders else "back office: no orders worker",
             f"token     {state['backoffice_token']}  (BACKOFFICE_TOKEN: the operator's sign-in and API token)"]
    if mailbox := state.get("smtp", {}).get("mailbox_url"):
        lines.append(f"mailbox   {mailbox}")
    lines.append('`orderflow env` prints these again as export lines: eval "$(.venv/bin/orderflow env)"')
    return lines


def env_lines(rd: Path | None = None) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in env_vars(rd).items()]
