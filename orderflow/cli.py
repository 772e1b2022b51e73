"""`orderflow`: the one command-line entry point (stack, topics, workers, migrations).

To add a command: write one `cmd_<name>(args) -> int` function and one `sub.add_parser(...)` entry in `parser()`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from orderflow.infra.ports import InfraError


def _bootstrap() -> str:
    from orderflow import stack

    return stack.setting("KAFKA_BOOTSTRAP_SERVERS", "kafka", "bootstrap")


def _database_url() -> str:
    from orderflow import stack

    return stack.setting("DATABASE_URL", "postgres", "url")


def _workers(pairs: Sequence[str]) -> dict[str, int]:
    counts = {}
    for pair in pairs:
        name, sep, count = pair.partition("=")
        if not sep or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"--workers expects SERVICE=N with N >= 1, got {pair!r}")
        counts[name] = int(count)
    return counts


# --- commands ----------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from orderflow import stack

    stack.up(detach=args.detach, workers=_workers(args.workers), brokers=args.brokers, mail=args.mail)
    return 0


def cmd_containers(args: argparse.Namespace) -> int:
    from orderflow import containers

    return containers.main(args.action, scale=_workers(args.scale), volumes=args.volumes, follow=args.follow,
                           container=args.container)


def cmd_down(_args: argparse.Namespace) -> int:
    from orderflow import stack

    stack.down()
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    from orderflow import stack

    checks = stack.status()
    for check in checks:
        print(f"{check.component:<12} {'healthy' if check.healthy else 'UNHEALTHY':<10} {check.detail}")
    return 0 if all(c.healthy for c in checks) else 1


def cmd_env(_args: argparse.Namespace) -> int:
    from orderflow import stack

    print("\n".join(stack.env_lines()))
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from orderflow.infra.ports import run_coro
    from orderflow.ops.topic_config import reconcile

    outcome, drift = run_coro(reconcile(_bootstrap(), args.partitions, apply=args.apply))
    by_topic: dict[str, list[str]] = {}
    for d in drift:
        by_topic.setdefault(d.topic, []).append(f"set {d.key}={d.wanted} (was {d.current})" if args.apply
                                                else f"DRIFT {d}")
    for name, said in outcome.items():
        print(f"{name:<32} {'; '.join([said, *by_topic.get(name, [])])}")
    if drift and not args.apply:
        print(f"{len(drift)} setting(s) of {len(by_topic)} topic(s) differ from the catalogue (contracts/topics.py); "
              "`orderflow topics --apply` sets them")
        return 1 if args.check else 0
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from orderflow.services import get
    from orderflow.worker import main as worker_main

    if args.workers == 1:
        if args.data_dir:
            Path(args.data_dir).mkdir(parents=True, exist_ok=True)
        return worker_main([args.service] + (["--data-dir", args.data_dir] if args.data_dir else []))
    try:
        spec = get(args.service)
    except KeyError as exc:
        raise InfraError(exc.args[0]) from None
    base_port = int(os.environ.get(spec.port_env) or spec.default_port)
    data_root = Path(args.data_dir or Path("data") / spec.name)
    for i in range(args.workers):
        Path(f"{data_root}-{i}").mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def forward(sig: int, _frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(args.workers):
        # each in its own session so that a terminal's Ctrl-C reaches it once, forwarded by us
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "orderflow.worker", spec.name, "--data-dir", f"{data_root}-{i}",
             "--http-port", str(base_port + i)],
            start_new_session=True,
        ))
    codes = [proc.wait() for proc in procs]
    return max(codes, default=0)


def cmd_migrate(_args: argparse.Namespace) -> int:
    from orderflow.infra.ports import run_coro
    from orderflow.runtime.db import migrate_all

    applied = run_coro(migrate_all(_database_url()))
    for service, names in (applied or {}).items():
        print(f"{service:<12} {', '.join(names) if names else 'up to date'}")
    return 0


def service_names() -> list[str]:
    """The services' names, from the folders that have a service.py (without importing them: --help stays quick)."""
    import services

    return sorted(p.parent.name for folder in services.__path__ for p in Path(folder).glob("*/service.py"))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orderflow")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


# --- parser ------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderflow", description="orderflow: the order back end of a shop builder.",
        epilog="Broker and database: KAFKA_BOOTSTRAP_SERVERS (with KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, "
        "KAFKA_SSL_CAFILE, as the workers) and DATABASE_URL, else the running local stack's (`orderflow env`).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("up", help="start broker, database, mail sink and every service; wait until healthy")
    s.add_argument("--detach", action="store_true", help="return once healthy and leave everything running")
    s.add_argument("--workers", nargs="*", default=[], metavar="SERVICE=N", help="worker processes per service")
    s.add_argument("--brokers", type=int, choices=range(1, 6), default=1, metavar="N",
                   help="local Kafka brokers, 1-5 (3: a KRaft cluster with replication 3 and min.insync.replicas 2)")
    s.add_argument("--mail", choices=["sink", "mailpit"], default="sink",
                   help="local mail server: the test sink (default) or Mailpit, built once with Go into the cache")
    s.set_defaults(func=cmd_up)

    sub.add_parser("down", help="stop everything `up` started").set_defaults(func=cmd_down)

    s = sub.add_parser("containers", help="the whole system as containers of one podman pod (docs/deploy.md)",
                       description="Build the images (cached) and run broker, PostgreSQL, Mailpit, the one-shot init "
                       "and the four services as one podman pod on 127.0.0.1.")
    s.add_argument("action", choices=["up", "down", "status", "logs", "env"], help="%(choices)s")
    s.add_argument("container", nargs="?", help="logs: only this container (e.g. inventory-2)")
    s.add_argument("--scale", nargs="*", default=[], metavar="SERVICE=N", help="up: workers of a service (1-8)")
    s.add_argument("--volumes", action="store_true", help="down: remove the broker's and the database's data too")
    s.add_argument("--follow", "-f", action="store_true", help="logs: follow")
    s.set_defaults(func=cmd_containers)
    sub.add_parser("status", help="is each part healthy? (exit 1 if not)").set_defaults(func=cmd_status)
    sub.add_parser("env", help="export lines for the running stack").set_defaults(func=cmd_env)

    s = sub.add_parser("topics", help="create every catalogue topic and its .dlq; report settings that drifted",
                       description="Create every topic of contracts/topics.py and its .dlq with the catalogue's "
                       "cleanup policy, retention and size limit (idempotent), and report existing topics whose "
                       "settings differ from it.")
    s.add_argument("--partitions", type=int, default=None,
                   help="for topics created now; default $TOPIC_PARTITIONS or 8")
    s.add_argument("--apply", action="store_true",
                   help="set the drifted settings of existing topics to the catalogue's")
    s.add_argument("--check", action="store_true", help="exit 1 when settings drifted (and --apply was not given)")
    s.set_defaults(func=cmd_topics)

    s = sub.add_parser("worker", help="run worker(s) of one service in the foreground")
    s.add_argument("service", choices=service_names(), help="which service: %(choices)s")
    s.add_argument("--workers", type=int, default=1, help="N processes, ports <SERVICE>_HTTP_PORT + i")
    s.add_argument("--data-dir", help="data folder (with N workers, each gets <dir>-<i>)")
    s.set_defaults(func=cmd_worker)

    sub.add_parser("migrate", help="apply the database migrations of every service").set_defaults(func=cmd_migrate)

    from orderflow import ops  # dlq, replay, rebuild

    ops.add_parsers(sub, _bootstrap, _database_url)

    from orderflow.ops import mail  # mail list|retry

    mail.add_parser(sub, _database_url)

    from orderflow.ops import shops  # shop credentials create|list|revoke

    shops.add_parser(sub, _database_url)

    from orderflow.sim.cli import add_simulate_parser  # simulate
    from orderflow.sim.demo import add_demo_parser  # demo

    add_simulate_parser(sub)
    add_demo_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command != "worker":  # an operator command says one line when the broker is away, not aiokafka's retries
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except (InfraError, argparse.ArgumentTypeError) as exc:
        print(f"orderflow {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from orderflow.ops.broker import unreachable

        if (line := unreachable(exc)) is None:
            raise
        print(f"orderflow {args.command}: error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
