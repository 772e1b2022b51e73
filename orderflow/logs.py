"""LOG_FORMAT: how a worker writes its log lines — `text` (faust's coloured lines, the default) or `json`.

JSON lines are for log collectors (Loki, Elasticsearch, a cloud's log router): one object per line with time, level,
logger, service and message, written by python-json-logger rather than a hand-made formatter. The choice is handed to
faust's worker as a logging config merged over its own, so faust's, aiokafka's and orderflow's loggers all follow it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from orderflow.settings import SettingsError

LOG_FORMATS = ("text", "json")
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
JSON_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger", "process": "pid"}


def log_format(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    value = env.get("LOG_FORMAT", "text").strip().lower() or "text"
    if value not in LOG_FORMATS:
        raise SettingsError(f"LOG_FORMAT={value!r} must be text or json")
    return value


def worker_logging_config(service: str, env: Mapping[str, str] | None = None) -> dict | None:
    """The logging config to merge over faust's (None keeps faust's text lines)."""
    if log_format(env) == "text":
        return None
    return {
        "merge": True,  # mode.utils.logging merges this over its defaults: its root level and loggers stay
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": JSON_FIELDS,
                "rename_fields": JSON_RENAMED,
                "static_fields": {"service": service},
            }
        },
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
        },
    }
