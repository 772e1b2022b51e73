"""`orderflow replay` / `rebuild` on the real broker and database, with a tiny faust app of this module's own.

Run as a script, this module IS that app: it counts every message it sees into PostgreSQL (`seen` per
partition/offset), so a replay shows as counts going from 1 to 2, and a rebuild as counts back at 1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from helpers import async_wait_for

from orderflow.ops import replay as ops
from orderflow.ops.replay import PartitionProgress, ReplayTarget

MESSAGES = 30


def tiny_app_main() -> None:
    import faust

    app = faust.App(os.environ["TINY_APP_ID"], broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
                    store="memory://", web_enabled=False, broker_commit_interval=0.2,
                    consumer_auto_offset_reset="earliest", key_serializer="raw", value_serializer="raw")
    topic = app.topic(os.environ["TINY_TOPIC"], key_type=bytes, value_type=bytes)
    table = f'"{os.environ["TINY_SCHEMA"]}".seen'
    pools: list[asyncpg.Pool] = []

    @app.agent(topic)
    async def count(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if not pools:
                pools.append(await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=2))
            await pools[0].execute(
                f"INSERT INTO {table} (part, off) VALUES ($1, $2) "
                "ON CONFLICT (part, off) DO UPDATE SET seen = seen.seen + 1",
                event.message.partition, event.message.offset)

    faust.Worker(app, loglevel="warning", quiet=True, redirect_stdouts=False).execute_from_commandline()


@dataclass
class TinyApp:
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            # cwd: faust writes its data directory (<app id>-data) there, not into the checkout
            self.proc = subprocess.Popen([sys.executable, __file__], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True, cwd=self.log.parent)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a clean stop leaves the consumer group at once
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
async def tiny(kafka_bootstrap: str, database_url: str, tmp_path: Path) -> Iterator[tuple[TinyApp, ReplayTarget]]:
    run = uuid.uuid4().hex[:10]
    topic, schema, app_id = f"ops-replay-{run}", f"ops_replay_{run}", f"ops-replay-test-{run}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'CREATE SCHEMA "{schema}"; '
                       f'CREATE TABLE "{schema}".seen (part int, off bigint, seen int NOT NULL DEFAULT 1, '
                       "PRIMARY KEY (part, off)); "
                       f'CREATE TABLE "{schema}".schema_migrations (name text PRIMARY KEY); '
                       f"INSERT INTO \"{schema}\".schema_migrations VALUES ('001_init.sql')")
    await conn.close()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "DATABASE_URL": database_url,
           "TINY_APP_ID": app_id, "TINY_TOPIC": topic, "TINY_SCHEMA": schema,
           "PYTHONPATH": os.pathsep.join(sys.path)}
    app = TinyApp(env, tmp_path / "tiny.log")
    yield app, ReplayTarget("tiny", app_id, (topic,))
    app.stop()
    conn = await asyncpg.connect(database_url)
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()


async def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, f"event {i}".encode(), key=f"k{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _seen(database_url: str, schema: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        return [r["seen"] for r in await conn.fetch(f'SELECT seen FROM "{schema}".seen ORDER BY part, off')]
    finally:
        await conn.close()


async def test_replay_reprocesses_from_earliest_then_from_a_time_and_rebuild_starts_clean(
        kafka_bootstrap: str, database_url: str, tiny: tuple[TinyApp, ReplayTarget]) -> None:
    app, target = tiny
    schema = app.env["TINY_SCHEMA"]
    await _produce(kafka_bootstrap, target.topics[0], MESSAGES)
    app.start()
    await async_wait_for(lambda: _seen_is(database_url, schema, [1] * MESSAGES), timeout=60,
                         message="the tiny app counting every message once")

    with pytest.raises(ops.ReplayError, match="still has 1 member"):  # the app runs: the broker would refuse
        await ops.replay(kafka_bootstrap, [target], group_empty_timeout=1)

    snapshots: list[list[PartitionProgress]] = []
    final = await ops.replay(kafka_bootstrap, [target], stop_workers=app.stop, start_workers=app.start,
                             on_progress=snapshots.append, catch_up_timeout=90, poll=0.2)
    assert {p.start for p in final} == {0} and sum(p.goal for p in final) == MESSAGES
    assert all(p.done and p.lag == 0 for p in final), final
    assert await _seen(database_url, schema) == [2] * MESSAGES

    since = int(time.time() * 1000)
    await _produce(kafka_bootstrap, target.topics[0], 5)
    await async_wait_for(lambda: _seen_is(database_url, schema, sorted([2] * MESSAGES + [1] * 5)), timeout=30,
                         message="the 5 new messages counted once")
    final = await ops.replay(kafka_bootstrap, [target], from_ms=since, stop_workers=app.stop,
                             start_workers=app.start, catch_up_timeout=90, poll=0.2)
    assert sum(p.goal - p.start for p in final) == 5 and all(p.lag == 0 for p in final)
    assert sorted(await _seen(database_url, schema)) == [2] * (MESSAGES + 5)

    final = await ops.rebuild(kafka_bootstrap, database_url, target, schema=schema, stop_workers=app.stop,
                              start_workers=app.start, catch_up_timeout=90, poll=0.2)
    assert all(p.lag == 0 for p in final)
    assert await _seen(database_url, schema) == [1] * (MESSAGES + 5), "rebuild emptied the table, then replayed"
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations') == 1
    finally:
        await conn.close()


async def _seen_is(database_url: str, schema: str, expected: list[int]) -> bool:
    return sorted(await _seen(database_url, schema)) == sorted(expected)


if __name__ == "__main__":
    tiny_app_main()
