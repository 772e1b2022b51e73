"""`orderflow containers up|down|status|logs|env`: the whole system as containers of one podman pod.

The images come from `infra/containers/build.sh` (a debootstrap base, Kafka from the project's pinned jars on
Debian's Java 17, Debian's PostgreSQL 15, Mailpit, and the app from the repository's Dockerfile). The pod uses the
host's network namespace and every container listens on 127.0.0.1 only (the services with HTTP_BIND_HOST), so no
container has a bridge address (podman's bridge would give them 10.88.x ones) and nothing is reachable from outside
the machine; the host's tools reach each part on its fixed port. The broker and the database keep their data in named
volumes that `down --volumes` removes. Settings have the same names as everywhere (README, "Configuration").

Why not podman-compose on docker-compose.yml: that file describes a bridge network with a name per service
(`kafka:9092`) and ports published from it; here everything stays on loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_DIR = REPO_ROOT / "infra" / "containers"
POD = "orderflow"
PREFIX = "orderflow-"
VOLUMES = ("orderflow-kafka-data", "orderflow-pg-data")
KAFKA_PORT, PG_PORT, SMTP_PORT, MAILPIT_HTTP_PORT = 29092, 25432, 21025, 28025
SERVICE_PORTS = {"orders": 28101, "cart": 28102, "inventory": 28103, "notify": 28104}
REPLICA_PORT_STEP = 10  # inventory-2 listens on 28113, inventory-3 on 28123, ...
MAX_REPLICAS = 8  # the topics' partitions: more workers of one service would idle
READY_TIMEOUT = 240.0


class ContainersError(RuntimeError):
    """What went wrong, in one line for the operator."""


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """podman with the project's containers.conf (runc, cgroupfs, no default ulimits)."""
    cmd = [str(CONTAINERS_DIR / "podman.sh"), *args]
    done = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise ContainersError(f"podman {' '.join(args[:3])} failed: {(done.stderr or done.stdout or '').strip()}")
    return done


def state_file() -> Path:
    return Path(os.environ.get("ORDERFLOW_RUN_DIR") or REPO_ROOT / ".run") / "containers.json"


@dataclass
class Layout:
    """What `up` started: enough for status, env and the tests to find every part."""

    scale: dict[str, int]
    token: str
    db_password: str
    started_at: float = field(default_factory=time.time)

    def containers(self) -> list[str]:
        names = ["kafka", "postgres", "mailpit"]
        for service in SERVICE_PORTS:
            names += [self.worker_name(service, i) for i in range(self.scale.get(service, 1))]
        return [PREFIX + n for n in names]

    @staticmethod
    def worker_name(service: str, index: int) -> str:
        return service if index == 0 else f"{service}-{index + 1}"

    @staticmethod
    def port(service: str, index: int) -> int:
        return SERVICE_PORTS[service] + REPLICA_PORT_STEP * index

    def workers(self) -> list[tuple[str, str, int]]:
        """(container, service, http port) of every worker."""
        return [
            (PREFIX + self.worker_name(s, i), s, self.port(s, i))
            for s in SERVICE_PORTS
            for i in range(self.scale.get(s, 1))
        ]

    @property
    def database_url(self) -> str:
        return f"postgresql://orderflow:{self.db_password}@127.0.0.1:{PG_PORT}/orderflow"

    def env(self) -> dict[str, str]:
        """What a host tool (demo, simulate, the fault checker) sets to reach the containerised system."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA_PORT}",
            "DATABASE_URL": self.database_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(SMTP_PORT),
            "MAILBOX_URL": f"http://127.0.0.1:{MAILPIT_HTTP_PORT}",
            "BACKOFFICE_TOKEN": self.token,
        }
        env.update({f"{s.upper()}_URL": f"http://127.0.0.1:{SERVICE_PORTS[s]}" for s in SERVICE_PORTS})
        return env

    def worker_env(self) -> dict[str, str]:
        """The services' settings inside the pod (the same names as everywhere)."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA_PORT}",
            "DATABASE_URL": self.database_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(SMTP_PORT),
            "MAIL_FROM": "orderflow@shop.example",
            "BACKOFFICE_TOKEN": self.token,
            "TOPIC_PARTITIONS": "8",
            "TOPIC_REPLICATION_FACTOR": "1",
            "ABANDON_AFTER_SECONDS": os.environ.get("ABANDON_AFTER_SECONDS", "3600"),
            "PUBLIC_STORE_URL": os.environ.get("PUBLIC_STORE_URL", "http://localhost:8000"),
            "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
            "LOG_LEVEL": "info",
            "HTTP_BIND_HOST": "127.0.0.1",
        }

    def save(self) -> None:
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))
        path.chmod(0o600)

    @classmethod
    def load(cls) -> Layout:
        try:
            return cls(**json.loads(state_file().read_text()))
        except FileNotFoundError:
            raise ContainersError("no containerised system here: `orderflow containers up` first") from None


def _env_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def _health_of_worker(port: int) -> list[str]:
    # A plain string, run by the container's /bin/sh (podman 4.3 splits a JSON array form on spaces).
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"
    return [
        "--health-cmd",
        f'python3 -c "{probe}"',
        "--health-interval",
        "10s",
        "--health-retries",
        "6",
        "--health-timeout",
        "5s",
        "--health-start-period",
        "60s",
    ]


def wait_healthy(names: Sequence[str], timeout: float, say: Callable[[str], None]) -> None:
    """Run each container's health check until it passes (podman has no systemd timer here to run them)."""
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        for name in list(pending):
            state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
            if state in {"exited", "stopped", "dead"}:
                logs = podman("logs", "--tail", "30", name, check=False)
                raise ContainersError(f"{name} {state}:\n{logs.stdout}{logs.stderr}")
            if podman("healthcheck", "run", name, check=False).returncode == 0:
                pending.remove(name)
                say(f"healthy   {name}")
        if pending and time.monotonic() > deadline:
            raise ContainersError(f"not healthy after {timeout:.0f} s: {', '.join(pending)}")
        if pending:
            time.sleep(1.0)  # polling interval of a deadline loop


def up(scale: dict[str, int] | None = None, *, build: bool = True, say: Callable[[str], None] = print) -> Layout:
    """Build (cached) images, create the pod and start everything; return once every container is healthy."""
    scale = {s: n for s, n in (scale or {}).items() if n != 1}
    for service, count in scale.items():
        if service not in SERVICE_PORTS or not 1 <= count <= MAX_REPLICAS:
            raise ContainersError(f"--scale {service}={count}: a service of {sorted(SERVICE_PORTS)}, 1-{MAX_REPLICAS}")
    if podman("pod", "exists", POD, check=False).returncode == 0:
        raise ContainersError(f"pod {POD} exists: `orderflow containers down` first (or `status`)")
    if build:
        subprocess.run([str(CONTAINERS_DIR / "build.sh"), "all"], check=True)
    layout = Layout(scale, os.environ.get("BACKOFFICE_TOKEN") or secrets.token_urlsafe(24), secrets.token_urlsafe(18))
    layout.save()
    began = time.monotonic()
    podman("pod", "create", "--name", POD, "--network", "host")
    for volume in VOLUMES:
        if podman("volume", "exists", volume, check=False).returncode != 0:
            podman("volume", "create", volume)
    run = ["run", "-d", "--pod", POD, "--log-driver", "k8s-file"]
    podman(
        *run,
        "--name",
        f"{PREFIX}kafka",
        "-v",
        f"{VOLUMES[0]}:/var/lib/kafka/data",
        "--health-cmd",
        f"bash -c 'exec 3<>/dev/tcp/127.0.0.1/{KAFKA_PORT}'",
        "--health-interval",
        "10s",
        "localhost/orderflow-kafka:latest",
    )
    podman(
        *run,
        "--name",
        f"{PREFIX}postgres",
        "-v",
        f"{VOLUMES[1]}:/var/lib/orderflow-pg",
        "-e",
        f"POSTGRES_PASSWORD={layout.db_password}",
        "-e",
        f"PGPORT={PG_PORT}",
        "--health-cmd",
        f"/usr/lib/postgresql/15/bin/pg_isready -h 127.0.0.1 -p {PG_PORT} -U orderflow",
        "--health-interval",
        "5s",
        "localhost/orderflow-postgres:latest",
    )
    podman(
        *run,
        "--name",
        f"{PREFIX}mailpit",
        "--health-cmd",
        f"/usr/local/bin/mailpit readyz --listen 127.0.0.1:{MAILPIT_HTTP_PORT}",
        "--health-interval",
        "5s",
        "localhost/orderflow-mailpit:latest",
        "--smtp",
        f"127.0.0.1:{SMTP_PORT}",
        "--listen",
        f"127.0.0.1:{MAILPIT_HTTP_PORT}",
    )
    wait_healthy([f"{PREFIX}kafka", f"{PREFIX}postgres", f"{PREFIX}mailpit"], READY_TIMEOUT, say)
    # The one-shot set-up: topics (idempotent) and migrations, before any worker.
    init = podman(
        "run",
        "--rm",
        "--pod",
        POD,
        "--name",
        f"{PREFIX}init",
        *_env_args(layout.worker_env()),
        "--entrypoint",
        "sh",
        "localhost/orderflow:latest",
        "-c",
        "orderflow topics && orderflow migrate",
        check=False,
    )
    if init.returncode != 0:
        raise ContainersError(f"init (topics, migrate) failed:\n{init.stdout[-2000:]}{init.stderr[-2000:]}")
    say("init      topics and migrations applied")
    for name, service, port in layout.workers():
        env = {**layout.worker_env(), f"{service.upper()}_HTTP_PORT": str(port)}
        podman(
            *run,
            "--name",
            name,
            "--restart",
            "on-failure",
            "--stop-timeout",
            "30",
            *_env_args(env),
            *_health_of_worker(port),
            "localhost/orderflow:latest",
            "worker",
            service,
        )
    wait_healthy([name for name, _s, _p in layout.workers()], READY_TIMEOUT, say)
    say(
        f"up in {time.monotonic() - began:.1f} s: pod {POD}, {len(layout.containers())} containers; "
        f"back office http://127.0.0.1:{SERVICE_PORTS['orders']}/backoffice/, "
        f"Mailpit http://127.0.0.1:{MAILPIT_HTTP_PORT}/; `orderflow containers env` for the rest"
    )
    return layout


def down(*, volumes: bool = False, say: Callable[[str], None] = print) -> None:
    """Stop and remove the pod and its containers; with volumes, the broker's and the database's data too."""
    if podman("pod", "exists", POD, check=False).returncode == 0:
        podman("pod", "stop", "-t", "30", POD, check=False)
        podman("pod", "rm", "-f", POD)
        say(f"removed pod {POD}")
    if volumes:
        for volume in VOLUMES:
            if podman("volume", "exists", volume, check=False).returncode == 0:
                podman("volume", "rm", "-f", volume)
                say(f"removed volume {volume}")
        state_file().unlink(missing_ok=True)


def status() -> list[tuple[str, str, str]]:
    """(container, state, health) of every container of the pod."""
    layout = Layout.load()
    rows = []
    for name in layout.containers():
        state = podman("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip() or "missing"
        health = "-"
        if state == "running":
            health = "healthy" if podman("healthcheck", "run", name, check=False).returncode == 0 else "unhealthy"
        rows.append((name, state, health))
    return rows


def main(action: str, *, scale: dict[str, int], volumes: bool, follow: bool, container: str | None) -> int:
    try:
        if action == "up":
            up(scale)
        elif action == "down":
            down(volumes=volumes)
        elif action == "status":
            rows = status()
            for name, state, health in rows:
                print(f"{name:<28} {state:<10} {health}")
            return 0 if all(health == "healthy" for _n, _s, health in rows) else 1
        elif action == "env":
            for name, value in Layout.load().env().items():
                print(f"export {name}={value}")
        elif action == "logs":
            names = [PREFIX + container.removeprefix(PREFIX)] if container else Layout.load().containers()
            for name in names:
                if not container:
                    print(f"==> {name} <==", flush=True)
                subprocess.run(
                    [str(CONTAINERS_DIR / "podman.sh"), "logs", *(["-f"] if follow else ["--tail", "20"]), name],
                    check=False,
                )
    except ContainersError as exc:
        print(f"orderflow containers {action}: {exc}", file=sys.stderr)
        return 1
    return 0
