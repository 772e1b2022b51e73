"""`python -m orderflow.worker SERVICE [--data-dir D]`: runs one worker of one service."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orderflow worker", description="Run one worker of one service.")
    parser.add_argument("service")
    parser.add_argument("--data-dir", help="this worker's own folder for its RocksDB tables")
    parser.add_argument("--http-port", type=int, help="overrides the service's <SERVICE>_HTTP_PORT")
    args = parser.parse_args(argv)

    import faust

    from orderflow.logs import worker_logging_config
    from orderflow.services import get
    from orderflow.settings import SettingsError, load_settings

    try:
        spec = get(args.service)
    except KeyError as exc:
        print(f"orderflow worker: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.data_dir:
        os.environ["ORDERFLOW_DATA_DIR"] = args.data_dir
    if args.http_port is not None:
        os.environ[spec.port_env] = str(args.http_port)
    try:
        settings = load_settings(spec.name, spec.port_env, spec.default_port)
        runtime = spec.build(settings)
        logging_config = worker_logging_config(spec.name)
    except SettingsError as exc:
        print(f"orderflow-{args.service}: configuration error: {exc}", file=sys.stderr)
        return 2
    import asyncio

    from orderflow.runtime import db, faust_adapter

    try:
        faust_adapter.check()
    except faust_adapter.UnsupportedFaust as exc:
        print(f"orderflow-{args.service}: {exc}", file=sys.stderr)
        return 2
    check_loop = asyncio.new_event_loop()  # not asyncio.run: it would unset the loop faust's worker is to use
    try:
        problem = check_loop.run_until_complete(db.misconfiguration(settings.database_url))
    finally:
        check_loop.close()
    if problem:
        print(f"orderflow-{args.service}: configuration error: {problem}", file=sys.stderr)
        return 2
    level = runtime.settings.log_level
    worker = faust.Worker(
        runtime.app, runtime, loglevel=level, quiet=True, redirect_stdouts=False, logging_config=logging_config
    )
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
