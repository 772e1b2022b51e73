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
