"""Which failures wait for a dependency and which blame the event (orderflow/runtime/failures.py)."""

from __future__ import annotations

import asyncpg
import pytest
from aiokafka.errors import KafkaConnectionError

from orderflow.runtime.failures import Cause, LostRace, backoff, classify, describe
from orderflow.runtime.unit import PositionMoved


def pg_error(sqlstate: str) -> asyncpg.PostgresError:
    cls = asyncpg.PostgresError
    for candidate in asyncpg.exceptions.__dict__.values():
        is_error = isinstance(candidate, type) and issubclass(candidate, cls)
        if is_error and getattr(candidate, "sqlstate", None) == sqlstate:
            cls = candidate
            break
    err = cls.__new__(cls)
    Exception.__init__(err, f"error {sqlstate}")
    err.sqlstate = sqlstate
    return err


@pytest.mark.parametrize("sqlstate", [
    "08006",  # connection failure
    "28P01",  # wrong password
    "3D000",  # database missing
    "40001",  # serialization failure
    "40P01",  # deadlock
    "25006",  # read-only transaction (failover)
    "53100",  # disk full
    "57014",  # statement cancelled
    "57P01",  # admin shutdown
    "42P01",  # table missing: a deployment fault
])
def test_dependency_faults_never_blame_the_event(sqlstate: str) -> None:
    assert classify(pg_error(sqlstate)) is Cause.DEPENDENCY


@pytest.mark.parametrize("sqlstate", ["22003", "22001", "23505", "23514"])
def test_data_and_constraint_errors_blame_the_event(sqlstate: str) -> None:
    assert classify(pg_error(sqlstate)) is Cause.EVENT


@pytest.mark.parametrize("exc", [ConnectionRefusedError(), TimeoutError(), KafkaConnectionError(),
                                 asyncpg.InterfaceError("closed"), LostRace(), PositionMoved()])
def test_client_errors_and_races_wait(exc: BaseException) -> None:
    assert classify(exc) is Cause.DEPENDENCY


@pytest.mark.parametrize("exc", [KeyError("sku"), ValueError("bad"), OverflowError(), RecursionError()])
def test_other_errors_blame_the_event(exc: BaseException) -> None:
    assert classify(exc) is Cause.EVENT


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    assert backoff(100) == 10.0


def test_describe_is_one_line_with_the_sqlstate() -> None:
    assert describe(pg_error("28P01")) == "InvalidPasswordError [28P01]: error 28P01"
    assert "\n" not in describe(ValueError("a\nb"))
