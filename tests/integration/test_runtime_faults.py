"""Runtime v2 under poison and under a database that refuses the workers' password, in the middle of simulated load.

Both scenarios run on the fault suite's machinery (`tests/faults/harness.py`): four real workers (one per service,
a fresh consumer group prefix) on the real broker and PostgreSQL, a paced storefront load of 250 sessions, the
fault a third of the way in, then every invariant of `tests/faults/invariants.py` once the system is at rest
(nothing lost, nothing applied twice, no record left beyond a stored consumer position).

1. A burst of poison: an `order.placed` whose `occurred_at` is 9999-12-31T23:59:59-01:00 (no UTC form), JSON nested
   3,000 deep in an ignored field, an integer of 5,000 digits (in a real field, and in an ignored one), invalid
   UTF-8, a lone surrogate, a 600 KB value. Each must be on its DLQ within 10 s of being sent, once per consuming
   service, bytes untouched, with a `dlq.error` reason; the load's invariants must hold (the partitions flowed on).
   The test prints the `dlq.error.kind` of each: a kind outside the contract's own (`CONTRACT_KINDS`) means the
   poison escaped `contracts.decode` and was caught later (the runtime's split-and-dead-letter path).
2. PostgreSQL answering "password authentication failed" for 30 s. The local test cluster trusts every local
   connection (`initdb -A trust`), so a password can never fail for the `orderflow` role: this module's workers
   connect as a dedicated role, `orderflow_pw`, that pg_hba.conf makes authenticate with scram-sha-256. The
   outage is `ALTER ROLE orderflow_pw PASSWORD` to something else (through the superuser's connection) plus
   terminating that role's open sessions (a password change alone leaves open sessions working), held 30 s, then
   the password back. Zero dead letters (this load carries no bad message, so its namespace must be in no DLQ),
   every event applied afterwards, every worker's /health said `ready: false` during the outage, and the
   workers' logs name SQLSTATE 28P01.

With an external DATABASE_URL (no local cluster to configure) the workers use that URL and scenario 2 is skipped.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from contracts import topics
from contracts.events import CartUpdated, OrderPlaced, PaymentConfirmed
from orderflow.runtime.dlq import HEADER_ERROR, HEADER_KIND, HEADER_SERVICE
from orderflow.sim.scenario import Mix, Scenario
from tests.faults.harness import SERVICES, FaultStack, fault_stack, hold, play
from tests.faults.invariants import BadMessage, Record, end_offsets, read_topics

# Both run in `make test`, on one stack of their own; N in a row (the figures: docs/guarantees.md, "Measured"):
# `LOOP_TESTS=tests/integration/test_runtime_faults.py tests/faults/loop.sh N poison` (or `password`).
pytestmark = pytest.mark.slow

PASSWORD_ROLE = "orderflow_pw"
OUTAGE_SECONDS = 30.0
DLQ_WITHIN_SECONDS = 10.0
CONTRACT_KINDS = {"empty", "too_large", "not_json", "not_object", "invalid"}
"""`dlq.error.kind` values that `contracts.decode` itself gives (contracts/codec.py)."""


# --- a role that needs its password -------------------------------------------------------------------------


@dataclass
class PasswordRole:
    name: str
    password: str
    url: str
    """The workers' DATABASE_URL: this role, its password, the local cluster."""


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def _refused(url: str) -> bool:
    """True when a connection with this URL is refused for its password (SQLSTATE 28P01)."""
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except asyncpg.InvalidPasswordError:
        return True
    await conn.close()
    return False


@pytest.fixture(scope="module")
async def password_role(postgres_server, database_url: str) -> AsyncIterator[PasswordRole | None]:
    """`orderflow_pw`, a superuser (so it runs the services' migrations like `orderflow` does) that pg_hba.conf
    makes authenticate with scram-sha-256 over TCP; None when the database is not the local cluster."""
    if postgres_server is None:
        yield None
        return
    password = f"pw-{uuid.uuid4().hex}"
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        verb = "ALTER" if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", PASSWORD_ROLE) else "CREATE"
        await conn.execute(f"{verb} ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{password}'")
        hba = postgres_server.data_dir / "pg_hba.conf"
        rules = (f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
                 f"host all {PASSWORD_ROLE} ::1/128 scram-sha-256\n")
        text = hba.read_text()
        if rules not in text:
            hba.write_text(rules + text)  # the first matching line wins: before initdb's `trust` lines
        assert await conn.fetchval("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    role = PasswordRole(PASSWORD_ROLE, password, _with_credentials(postgres_server.url, PASSWORD_ROLE, password))
    wrong = _with_credentials(postgres_server.url, PASSWORD_ROLE, "not-the-password")
    deadline = time.monotonic() + 30
    while not await _refused(wrong):  # the postmaster reloads pg_hba.conf asynchronously
        assert time.monotonic() < deadline, "pg_hba.conf reloaded, yet a wrong password is still accepted"
        await asyncio.sleep(0.2)  # polling interval of a deadline loop
    assert not await _refused(role.url), "the role's own password is refused"
    yield role


@pytest.fixture(scope="module")
async def stack(kafka_bootstrap: str, database_url: str, mailsink, password_role: PasswordRole | None,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FaultStack]:
    async with fault_stack(kafka_bootstrap, database_url, mailsink, tmp_path_factory.mktemp("runtime-faults"),
                           name="runtime", worker_database_url=password_role.url if password_role else None,
                           ) as prepared:
        yield prepared


# --- poison -------------------------------------------------------------------------------------------------


def _first(scenario: Scenario, kind: type) -> dict:
    for session in scenario.session_events:
        for event in session:
            if isinstance(event, kind):
                return event.model_dump(mode="json", exclude_none=True)
    raise AssertionError(f"the scenario holds no {kind.__name__}")


def poison(ns: str) -> list[BadMessage]:
    """Each built from a valid event of the kind the topic carries (new ids in the namespace, so one that were
    wrongly applied would show up as an order, cart or payment no session made), then broken one way."""
    scenario = Scenario.generate(7, 20, Mix(shops=1, skus_per_shop=2), namespace=ns)
    out = []

    def placed(name: str) -> dict:
        event = _first(scenario, OrderPlaced)
        return {**event, "event_id": str(uuid.uuid4()), "order_id": f"{ns}-poison-{name}",
                "cart_id": f"{ns}-poison-{name}"}

    def add(topic: str, name: str, value: bytes, why: str) -> None:
        out.append(BadMessage(topic, f"{ns}-poison-{name}".encode(), value, why))

    far = placed("future")
    far["occurred_at"] = "9999-12-31T23:59:59-01:00"
    add(topics.ORDER_PLACED.name, "future", json.dumps(far).encode(), "occurred_at 9999-12-31T23:59:59-01:00")

    deep = json.dumps(placed("deep"))
    add(topics.ORDER_PLACED.name, "deep", f'{deep[:-1]}, "note": {"[" * 3000}{"]" * 3000}}}'.encode(),
        "JSON nested 3,000 deep in an ignored field")

    digits = re.sub(r'"total_cents": \d+', '"total_cents": ' + "9" * 5000, json.dumps(placed("digits")))
    add(topics.ORDER_PLACED.name, "digits", digits.encode(), "an integer of 5,000 digits (total_cents)")

    ignored = json.dumps(placed("digits-ignored"))
    add(topics.ORDER_PLACED.name, "digits-ignored", f'{ignored[:-1]}, "note": {"7" * 5000}}}'.encode(),
        "an integer of 5,000 digits in an ignored field")

    payment = _first(scenario, PaymentConfirmed)
    payment = {**payment, "event_id": str(uuid.uuid4()), "order_id": f"{ns}-poison-utf8",
               "payment_id": f"{ns}-poison-utf8", "provider": "PROVIDER"}
    add(topics.PAYMENT_CONFIRMED.name, "utf8", json.dumps(payment).encode().replace(b"PROVIDER", b"pay\xff\xfepal"),
        "invalid UTF-8")

    cart = _first(scenario, CartUpdated)
    cart = {**cart, "event_id": str(uuid.uuid4()), "cart_id": f"{ns}-poison-surrogate",
            "customer": {"name": "SURROGATE", "email": f"lone.{ns}@customer.example"}}
    add(topics.CART_UPDATED.name, "surrogate", json.dumps(cart).replace("SURROGATE", "Ada \\ud800").encode(),
        "a lone surrogate (\\ud800) in a string")

    status = {"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T12:00:00Z", "shop_id": f"{ns}-shop0",
              "order_id": f"{ns}-poison-huge", "status": "pending", "payment_status": "paid",
              "changed_by": "system", "customer": {"email": f"huge.{ns}@customer.example"}, "items": [],
              "total_cents": 0, "currency": "EUR", "payment": {"method": "gateway", "provider": "paypal"},
              "padding": "x" * 600_000}
    add(topics.ORDER_STATUS.name, "huge", json.dumps(status).encode(), "a 600 KB value")
    return out


@dataclass
class Letter:
    service: str
    kind: str
    error: str
    seconds: float
    """After the poison burst was sent, when the letter was first seen on its DLQ."""


async def test_poison_burst_mid_load_each_dead_lettered_within_10s_and_the_load_holds(stack: FaultStack) -> None:
    dlqs = sorted({f"{t}.dlq" for t in (topics.ORDER_PLACED.name, topics.PAYMENT_CONFIRMED.name,
                                        topics.CART_UPDATED.name, topics.ORDER_STATUS.name)})
    since = {}
    letters: dict[tuple[str, bytes], dict[str, Letter]] = {}
    late: list[str] = []

    async def before_load() -> None:
        since.update(await end_offsets(stack.bootstrap, dlqs))

    async def fault() -> None:
        run = stack.runs[-1]
        sent = time.monotonic()  # the burst was sent just before (play sends it, then calls this)
        want = {(b.topic, b.key): b for b in run.bad if b.key.startswith(f"{run.scenario.namespace}-poison".encode())}
        consumers = stack.consumers
        while True:
            found: list[Record] = await read_topics(stack.bootstrap, dlqs, since=since,
                                                    keep=lambda r: (r.topic.removesuffix(".dlq"), r.key) in want)
            now = time.monotonic() - sent
            for r in found:
                by = letters.setdefault((r.topic.removesuffix(".dlq"), r.key), {})
                service = r.headers.get(HEADER_SERVICE, "?")
                by.setdefault(service, Letter(service, r.headers.get(HEADER_KIND, ""),
                                              r.headers.get(HEADER_ERROR, ""), now))
            if all(set(letters.get(k, {})) >= consumers[k[0]] for k in want):
                return
            if now >= DLQ_WITHIN_SECONDS:
                late.extend(f"{want[k].why} on {k[0]}: dead-lettered by {sorted(letters.get(k, {}))} of "
                            f"{sorted(consumers[k[0]])} within {DLQ_WITHIN_SECONDS:.0f}s"
                            for k in want if not set(letters.get(k, {})) >= consumers[k[0]])
                return  # the load's invariants are still checked: does the partition flow on?
            await asyncio.sleep(0.25)  # polling interval of a deadline loop

    try:
        run = await play(stack, "poison", 606, fault, abandon_after=30, before_load=before_load, bad=poison)
    finally:
        lines = []
        for (topic, key), by in sorted(letters.items()):
            for letter in sorted(by.values(), key=lambda x: x.service):
                escaped = "" if letter.kind in CONTRACT_KINDS else "  <- escaped contracts.decode"
                lines.append(f"  {key.decode(errors='replace').split('-poison-')[-1]:15} {topic:18} "
                             f"{letter.service:9} {letter.seconds:5.1f}s  {letter.kind:14} {letter.error[:90]}"
                             f"{escaped}")
        print("\npoison dead letters (name, topic, service, seen after, kind, reason):\n" + "\n".join(lines))
    assert not late, "poison not dead-lettered in time:\n  " + "\n  ".join(late)
    for (topic, key), by in letters.items():
        for letter in by.values():
            assert letter.error, f"{key!r} on {topic}: dead letter without a dlq.error reason"
    assert run.observed is not None


# --- the database refusing the password -----------------------------------------------------------------------


async def test_password_authentication_failing_for_30s_mid_load(stack: FaultStack,
                                                                 password_role: PasswordRole | None) -> None:
    if password_role is None:
        pytest.skip("the database is external: its authentication cannot be configured here")
    wrong = f"rotated-{uuid.uuid4().hex}"
    seen: dict[str, object] = {}

    async def fault() -> None:
        admin = await asyncpg.connect(stack.database_url, timeout=10)
        try:
            await admin.execute(f"ALTER ROLE {password_role.name} PASSWORD '{wrong}'")
            try:
                seen["terminated"] = await admin.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = $1", password_role.name)
                seen["refused"] = await _refused(password_role.url)
                late: list[int] = []

                async def no_session_of_the_role() -> None:
                    # a session authenticated just before the ALTER and listed just after the first terminate
                    late.append(await admin.fetchval(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE usename = $1", password_role.name))

                seen["health"] = await hold(stack, OUTAGE_SECONDS, during=no_session_of_the_role)
                seen["late"] = sum(late)
                print(f"\npassword refused {OUTAGE_SECONDS:.0f}s: {seen['terminated']} sessions terminated at the "
                      f"start, {seen['late']} later; {seen['health'].summary()}")
            finally:
                await admin.execute(f"ALTER ROLE {password_role.name} PASSWORD '{password_role.password}'")
        finally:
            await admin.close()

    await play(stack, "password", 707, fault, abandon_after=75, bad=None)
    health = seen["health"]
    assert seen["refused"], "a connection with the workers' URL was not refused for its password during the outage"
    assert all(health.not_ready(s) for s in SERVICES), \
        f"a worker never reported ready: false while its password was refused: {health.summary()}"
    logged = {w.service for w in [*stack.workers.values(), *stack.extra] if "28P01" in w.log_path.read_text()}
    assert logged, "no worker logged SQLSTATE 28P01 (password authentication failed)"
    print(f"workers that logged 28P01: {sorted(logged)}")
