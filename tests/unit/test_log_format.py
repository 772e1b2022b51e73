"""LOG_FORMAT=json: the config handed to faust's worker makes every log line one JSON object."""

from __future__ import annotations

import io
import json
import logging

import pytest
from mode.utils.logging import setup_logging

from orderflow.logs import log_format, worker_logging_config
from orderflow.settings import SettingsError


def test_text_is_the_default_and_keeps_fausts_own_lines() -> None:
    assert log_format({}) == "text"
    assert worker_logging_config("orders", {}) is None
    assert worker_logging_config("orders", {"LOG_FORMAT": "TEXT"}) is None


def test_an_unknown_format_is_a_configuration_error() -> None:
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        log_format({"LOG_FORMAT": "xml"})


def test_json_lines_through_modes_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same call faust's worker makes (mode's setup_logging): each record becomes one parseable JSON line."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    saved = list(logging.root.handlers), logging.root.level
    try:
        setup_logging(loglevel="info", logging_config=worker_logging_config("inventory", {"LOG_FORMAT": "json"}))
        logging.getLogger("orderflow.test").info("reserved %d units", 3)
        logging.getLogger("orderflow.test").debug("below the level")
    finally:
        logging.root.handlers[:] = saved[0]
        logging.root.setLevel(saved[1])
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["message"] == "reserved 3 units"
    assert record["level"] == "INFO"
    assert record["logger"] == "orderflow.test"
    assert record["service"] == "inventory"
    assert record["time"] and record["pid"] > 0
