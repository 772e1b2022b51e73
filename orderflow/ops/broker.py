"""How every operator command reaches the broker, and what it says when it cannot.

The workers' own settings are used (`orderflow.settings.kafka_security`: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*,
KAFKA_SSL_CAFILE), so `orderflow topics`, `dlq`, `replay`, `rebuild`, `lag`, `simulate` and `demo` reach a SASL/TLS
broker exactly as the services do. `unreachable()` turns a broker or database failure into the one line the command
line prints instead of a traceback.
"""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaError

from orderflow.infra.ports import InfraError
from orderflow.runtime.failures import Cause, classify, describe
from orderflow.settings import SettingsError, kafka_security


def options(bootstrap: str, **extra: object) -> dict[str, object]:
    """aiokafka keyword arguments: the broker, the workers' security settings, then `extra`."""
    try:
        security = kafka_security().client_options()
    except SettingsError as exc:
        raise InfraError(str(exc)) from None
    return {"bootstrap_servers": bootstrap, **security, **extra}


def unreachable(exc: BaseException) -> str | None:
    """One line naming what could not be reached (the broker or the database), or None if `exc` is not that."""
    if isinstance(exc, KafkaError):
        name = type(exc).__name__
        text = describe(exc).removeprefix(f"{name}: ").removeprefix(f"{name}: ")  # aiokafka repeats its own name
        return f"the Kafka broker cannot be reached or refused the request ({name}: {text})"
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | OSError | TimeoutError) and (
        classify(exc) is Cause.DEPENDENCY
    ):
        return f"the database cannot be reached or refused the connection ({describe(exc)})"
    return None
