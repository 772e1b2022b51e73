"""What a failure means: wait for a dependency, or blame the event. A pure rule; the runtime acts on it.

- `Cause.DEPENDENCY`: the database or the broker is away, misconfigured or overloaded (connection refused, wrong
  password, database missing, read-only after a failover, disk full, a cancelled statement, a deadlock, a lock race
  with another worker). The event is good: the worker waits with capped backoff, reports `ready: false`, and
  dead-letters nothing. Decided by PostgreSQL's SQLSTATE class (Appendix A of its manual) and by client error types.
- `Cause.EVENT`: the event itself cannot be applied (a data exception such as a value out of range, a constraint it
  violates, an error raised by the core for it). Only after the batch was split, the same event failed alone
  `EVENT_ATTEMPTS` times, is it dead-lettered with the reason.
"""

from __future__ import annotations

import enum

import asyncpg
from aiokafka.errors import KafkaError

EVENT_ATTEMPTS = 3

DEPENDENCY_SQLSTATE_CLASSES = frozenset({
    "08",  # connection exception
    "28",  # invalid authorization (wrong password, role missing)
    "3D",  # invalid catalog name (database missing)
    "3F",  # invalid schema name (schema dropped under us)
    "40",  # transaction rollback: serialization failure, deadlock
    "42",  # privilege / undefined table or column: a deployment fault (migrations, grants), not the event's
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "54",  # program limit exceeded (e.g. too many locks in a huge batch): splitting the batch is the cure
    "55",  # object not in prerequisite state: lock not available, object in use
    "57",  # operator intervention: query cancelled, admin shutdown, cannot connect now
    "58",  # system error: I/O
    "F0",  # configuration file error
    "XX",  # internal error
})
DEPENDENCY_SQLSTATES = frozenset({
    "25006",  # read-only SQL transaction: a replica after a failover
    "0A000",  # feature not supported (e.g. a write on a hot standby)
})

DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, DNS
    TimeoutError,
    asyncpg.InterfaceError,  # connection closed mid-call, pool closing
    asyncpg.InternalClientError,
    KafkaError,
)


class Cause(enum.Enum):
    DEPENDENCY = "dependency"
    EVENT = "event"


class LostRace(Exception):
    """Another worker moved a consumer position (or a row) this transaction expected: roll back and re-read."""


class NotCaughtUp(LostRace):
    """A decision that depends on another topic came before that topic was applied up to the event's time (an
    order refused for an unknown SKU whose restock waits in stock.adjusted): roll back and decide again shortly.
    A wait, like a race, never the event's fault."""


class Redecide(LostRace):
    """What a refusal depends on was found applied, but perhaps after the decision read its data: roll back and
    decide again at once (`Runtime._refusal_is_final`)."""


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None


def classify(exc: BaseException) -> Cause:
    """DEPENDENCY when waiting can cure it, EVENT when only this event is to blame."""
    if isinstance(exc, LostRace):
        return Cause.DEPENDENCY
    code = sqlstate(exc)
    if code is not None:
        if code in DEPENDENCY_SQLSTATES or code[:2] in DEPENDENCY_SQLSTATE_CLASSES:
            return Cause.DEPENDENCY
        return Cause.EVENT
    if isinstance(exc, DEPENDENCY_ERRORS):
        return Cause.DEPENDENCY
    return Cause.EVENT


RACE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})  # serialization failure, deadlock, lock not available


def is_race(exc: BaseException) -> bool:
    """A race with another worker or transaction (tried again at once, over in a moment), not a dependency away."""
    return isinstance(exc, LostRace) or sqlstate(exc) in RACE_SQLSTATES


def describe(exc: BaseException) -> str:
    """One line for a log, a health report or a dead letter's header; no DSN (and so no password) in it."""
    code = sqlstate(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    name = type(exc).__name__
    return f"{name} [{code}]: {text}" if code else (f"{name}: {text}" if text else name)


def backoff(attempt: int, *, first: float = 0.2, cap: float = 10.0) -> float:
    """Seconds before retry number `attempt` (1-based): doubling from `first`, at most `cap`."""
    return min(cap, first * (2 ** max(0, attempt - 1)))
