"""`orderflow simulate`: storefront traffic from a seeded scenario, with a progress line and a summary."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from orderflow.sim.driver import DriveReport, Pace, drive
from orderflow.sim.scenario import Mix, Scenario

_MIX_FIELDS = ("abandoned_carts", "gateway_unpaid", "manual_payments", "manual_confirmed",
               "duplicated_confirmations", "early_confirmations", "cancels", "restocks", "scarcity")


def bootstrap_servers() -> str:
    """KAFKA_BOOTSTRAP_SERVERS, else the local stack's broker (`orderflow up`)."""
    from orderflow import stack
    from orderflow.infra.ports import InfraError

    try:
        return stack.setting("KAFKA_BOOTSTRAP_SERVERS", "kafka", "bootstrap")
    except InfraError as exc:
        raise SystemExit(f"orderflow simulate: error: {exc}") from None


def add_simulate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("simulate", help="produce storefront traffic (carts, orders, payments, stock)")
    _add_arguments(p)
    p.set_defaults(func=lambda args: run(args))
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=1, help="same seed, same traffic (default 1)")
    p.add_argument("--sessions", "--count", dest="count", type=int, default=1000,
                   help="customer sessions to produce (default 1000)")
    p.add_argument("--rate", type=float, default=None, help="per second (default: as fast as possible)")
    p.add_argument("--unit", choices=("sessions", "events"), default="sessions", help="what --rate counts")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--namespace", default=None, help="prefix of shop/cart/order ids (default sim<seed>)")
    p.add_argument("--shops", type=int, default=3)
    p.add_argument("--skus-per-shop", type=int, default=6)
    p.add_argument("--abandon-after", type=int, default=None, help="abandon_after_seconds in every shop's settings")
    p.add_argument("--shared-ids", action="store_true",
                   help="shops reuse each other's order, cart and payment ids (each numbers its own from 1001)")
    for name in _MIX_FIELDS:
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(Mix, name),
                       help=f"share (default {getattr(Mix, name)})")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def mix_from(args: argparse.Namespace) -> Mix:
    return Mix(**{name: getattr(args, name) for name in _MIX_FIELDS}, shops=args.shops,
               skus_per_shop=args.skus_per_shop, abandon_after_seconds=args.abandon_after,
               shared_ids=args.shared_ids)


async def simulate(args: argparse.Namespace) -> tuple[Scenario, DriveReport]:
    from contracts.producer import StorefrontProducer
    from orderflow.ops.broker import options

    scenario = Scenario.generate(args.seed, args.count, mix_from(args), namespace=args.namespace)
    pace = Pace(rate=args.rate, unit=args.unit, duration=args.duration)
    async with StorefrontProducer(**options(bootstrap_servers(), linger_ms=5)) as producer:
        if args.quiet:
            report = await drive(scenario, producer, pace)
        else:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            columns = (TextColumn("simulate"), BarColumn(), MofNCompleteColumn(), TextColumn("sessions"),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
            with Progress(*columns, transient=False) as progress:
                task = progress.add_task("simulate", total=len(scenario.session_events), rate="")

                def show(r: DriveReport) -> None:
                    progress.update(task, completed=r.sessions_sent,
                                    rate=f"{r.events_sent} events, {r.events_per_second:,.0f} events/s")

                report = await drive(scenario, producer, pace, on_progress=show)
    return scenario, report


def run(args: argparse.Namespace) -> int:
    try:
        scenario, report = asyncio.run(simulate(args))
    except ValueError as exc:
        print(f"orderflow simulate: error: {exc}", file=sys.stderr)
        return 2
    expected = scenario.expected_for(report.sessions_sent)
    by_status: dict[str, int] = {}
    for order in expected.orders.values():
        key = f"{order.status}/{order.payment_status}"
        by_status[key] = by_status.get(key, 0) + 1
    print(f"sent {report.sessions_sent} sessions, {report.events_sent} events (+{len(scenario.setup_events)} setup) "
          f"in {report.seconds:.1f} s: {report.events_per_second:,.0f} events/s; stopped by {report.stopped_by}")
    print("expected orders: " + (", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) or "none")
          + f"; abandoned checkouts {len(expected.abandoned_carts)}")
    return 0


def simulate_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="orderflow simulate", description="produce storefront traffic")
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(simulate_main())
