"""A bad setting stops a worker with one clear line naming the variable, and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orderflow.services import discover


@pytest.mark.parametrize("service", [s.name for s in discover()])
def test_bad_setting_stops_the_worker_with_one_line(service):
    env = dict(os.environ, TOPIC_PARTITIONS="eight")
    done = subprocess.run([sys.executable, "-m", "orderflow.worker", service], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [f"orderflow-{service}: configuration error: TOPIC_PARTITIONS='eight' is not a whole number"]


def test_unknown_service_is_refused():
    done = subprocess.run([sys.executable, "-m", "orderflow.worker", "billing"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "unknown service 'billing'" in done.stderr


def _worker(service: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orderflow.worker", service], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=60)


def test_a_database_that_does_not_exist_stops_the_worker_with_one_line(database_url: str) -> None:
    base, _, _ = database_url.rpartition("/")
    url = base.replace("://", "://orderflow:s3cret-pw@", 1) if "@" not in base else base
    done = _worker("inventory", DATABASE_URL=f"{url}/no_such_database_here")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orderflow-inventory: configuration error: DATABASE_URL"), lines
    assert "no_such_database_here" in lines[0] and "s3cret-pw" not in lines[0]


def test_a_port_that_is_not_a_number_stops_the_worker_with_one_line_and_no_password() -> None:
    done = _worker("orders", DATABASE_URL="postgresql://orderflow:s3cret-pw@127.0.0.1:fivefourthreetwo/orderflow")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "configuration error" in lines[0] and "DATABASE_URL" in lines[0], lines
    assert "s3cret-pw" not in lines[0]
