"""The runtime every service shares: faust app, PostgreSQL pool, outbox relay, dead letters, HTTP, metrics.

A service builds one `Runtime`, registers handlers with `consume`, adds routes, and is done. Nothing opens a
connection at import time: the pool, the relay and the HTTP server start with the worker.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import faust
from aiokafka.errors import KafkaError
from mode import Service

from contracts import ContractError, Event, TopicSpec, decode
from orderflow.runtime import db, outbox, seek_guard
from orderflow.runtime.dlq import DeadLetters, Source
from orderflow.runtime.http import HttpSurface
from orderflow.runtime.metrics import RuntimeMetrics
from orderflow.runtime.outbox import OutboxRelay
from orderflow.settings import Settings

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

TRANSIENT = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
             asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError, KafkaError, TimeoutError)
"""Errors that mean "try again later" (database or broker away), never "this event is bad"."""


class Rejected(Exception):
    """Raised by a handler for an event that honours the contract but cannot be applied (e.g. an unknown SKU)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Incoming(Generic[E]):
    event: E
    source: Source


Handler = Callable[[list[Incoming[Any]]], Awaitable[None]]


def make_faust_app(settings: Settings) -> faust.App:
    seek_guard.install()
    sec = settings.kafka_security
    credentials = None
    ssl_context = None
    if sec.protocol in {"SSL", "SASL_SSL"}:
        ssl_context = ssl.create_default_context(cafile=sec.ssl_cafile)
    if sec.protocol.startswith("SASL"):
        credentials = faust.SASLCredentials(
            username=sec.sasl_username, password=sec.sasl_password, ssl_context=ssl_context,
            mechanism=sec.sasl_mechanism,
        )
    elif ssl_context is not None:
        credentials = faust.SSLCredentials(ssl_context)
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{s}" for s in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=credentials,
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        web_enabled=False,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger_ms=5,  # fuller produce requests (a syscall is dear here) for 5 ms on a hop
        producer_max_request_size=2 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=4 * 1024 * 1024,
        broker_commit_interval=0.5,
        # A SIGKILLed worker holds its partitions until its session expires: 10 s, not faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        stream_recovery_delay=0.0,
        stream_wait_empty=False,
        table_standby_replicas=0,
    )


class Runtime(Service):
    """Owns the long-lived resources of one worker and the plumbing between topic and handler."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.settings = settings
        self.service = settings.service
        self.app = make_faust_app(settings)
        self.metrics = RuntimeMetrics(settings.service)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._assigned_once = False
        self._health_checks: list[Callable[[], Awaitable[dict[str, Any]]]] = []
        self._background: list[Callable[[], Awaitable[None]]] = []
        self.http = HttpSurface(settings.http_port, settings.backoffice_token, self.health, self.render_metrics)
        self.dlq = DeadLetters(settings.service, self._send_with_headers,
                               lambda topic, kind: self.metrics.dead_letters.labels(topic, kind).inc())
        self.outbox = OutboxRelay(self.pool, settings.service, self._send_soon,
                                  on_published=self.metrics.outbox_published.inc)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        super().__init__(**kwargs)

    # --- resources ------------------------------------------------------------------------------------------

    async def pool(self) -> asyncpg.Pool:
        """The PostgreSQL pool, created (and the schema migrated) on first use."""
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    await db.migrate_service(self.settings.database_url, self.service)
                    self._pool = await db.connect_pool(self.settings.database_url, self.service)
        return self._pool

    async def _send_soon(self, topic: str, key: bytes, value: bytes) -> Awaitable[object]:
        return await self.app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)

    async def _send_with_headers(self, topic: str, key: bytes | None, value: bytes | None,
                                 headers: list[tuple[str, bytes]]) -> None:
        await self.app.producer.send_and_wait(topic, key, value, partition=None, timestamp=None, headers=headers)

    def background(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Register a coroutine that runs for the worker's life (e.g. an SMTP sender, a scanner)."""
        self._background.append(fn)
        return fn

    def health_check(self, fn: Callable[[], Awaitable[dict[str, Any]]]) -> Callable[[], Awaitable[dict[str, Any]]]:
        self._health_checks.append(fn)
        return fn

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self.http.start()
        self.add_future(self.outbox.run())
        self.add_future(self._prune_outbox())
        for fn in self._background:
            self.add_future(self._keep_running(fn))

    async def _keep_running(self, fn: Callable[[], Awaitable[None]]) -> None:
        while not self.should_stop:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed; restarting it", fn.__name__)
                await asyncio.sleep(1.0)

    async def _prune_outbox(self) -> None:
        """Published outbox rows are kept a day for inspection, then deleted, hourly."""
        while not self.should_stop:
            try:
                await self.outbox.prune(older_than_hours=24)
            except TRANSIENT as exc:
                log.warning("outbox prune skipped: %s", exc)
            await self.sleep(3600)

    async def on_stop(self) -> None:
        await self.http.stop()
        if self._pool is not None:
            await self._pool.close()

    async def _on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        self._assigned_once = True
        self._guard_acks()

    def _guard_acks(self) -> None:
        """At a rebalance or a stop faust drops the messages still queued (fetched in an older generation, or
        while the flow is suspended) and *acks* them, so their offsets get committed although no handler ever saw
        them: lost. Only a message fetched in the current generation, acked while the flow runs, may advance the
        committed offset; the others are simply read again from the committed offset (handlers are idempotent)."""
        consumer = self.app.consumer
        if getattr(consumer, "_orderflow_acks_guarded", False):
            return
        app, ack = self.app, consumer.ack

        def guarded_ack(message: Any) -> bool:
            if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
                return False
            return ack(message)

        consumer.ack = guarded_ack
        consumer._orderflow_acks_guarded = True

    async def health(self) -> dict[str, Any]:
        report: dict[str, Any] = {"service": self.service}
        try:
            pool = await asyncio.wait_for(self.pool(), timeout=2)
            await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout=2)
            report["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported as text
            report["database"] = f"error: {exc}"
        report["consumer"] = "assigned" if self._assigned_once and not self.app.rebalancing else "waiting"
        for check in self._health_checks:
            report.update(await check())
        report["ready"] = report["database"] == "ok" and report["consumer"] == "assigned" and all(
            v in {"ok", "assigned"} for k, v in report.items() if k.endswith("_check")
        )
        return report

    def render_metrics(self) -> bytes:
        self.metrics.outbox_depth.set(self.outbox.depth)
        return self.metrics.render()

    # --- consuming ------------------------------------------------------------------------------------------

    def topic(self, spec: TopicSpec) -> faust.TopicT:
        return self.app.topic(spec.name, key_type=bytes, value_type=bytes, key_serializer="raw",
                              value_serializer="raw", partitions=self.settings.topic_partitions)

    def consume(self, spec: TopicSpec, *, batch: int = 1, within: float = 0.02) -> Callable[[Handler], Handler]:
        """Decorator: `handler(list[Incoming])` gets the valid events of each batch, in offset order.

        Invalid ones are dead-lettered first. Offsets are acknowledged only after the handler returned and every
        dead letter was written, so a crash redelivers (at-least-once); handlers make that harmless by key.
        """

        def register(handler: Handler) -> Handler:
            topic = self.topic(spec)

            async def agent(stream: faust.StreamT) -> None:
                # faust's take_events acks a batch in a `finally` when the generator resumes for the next batch or
                # is closed, so a batch must never be left unprocessed: retry it in place, and void those acks if
                # cancelled. That `finally` is the one ack: acking here too would decrement the message's reference
                # count twice and commit it before another agent on the same topic (a table agent) has seen it.
                async for events in stream.take_events(batch, within=within):
                    while True:
                        try:
                            await self._process(spec, handler, events)
                            break
                        except asyncio.CancelledError:
                            for event in events:  # a stop mid-batch: these offsets must not be committed
                                event.message.acked = True
                            raise
                        except Exception:  # never let an exception escape: faust would ack and skip
                            log.exception("unexpected failure processing %s; retrying the batch", spec.name)
                            await asyncio.sleep(1.0)

            agent.__name__ = f"{handler.__name__}"
            self.app.agent(topic, name=f"{self.service}.{handler.__name__}")(agent)
            return handler

        return register

    async def _process(self, spec: TopicSpec, handler: Handler, events: Sequence[Any]) -> None:
        good: list[Incoming[Any]] = []
        for ev in events:
            msg = ev.message
            source = Source(msg.topic, msg.partition, msg.offset, ev.key, ev.value)
            self.metrics.events_in.labels(spec.name).inc()
            try:
                good.append(Incoming(decode(spec.model, ev.value), source))
            except ContractError as exc:
                await self.dlq.send(source, exc.reason, exc.kind)
        if not good:
            return
        self.metrics.batch_size.labels(spec.name).observe(len(good))
        started = time.perf_counter()
        staged = outbox.staged_so_far()
        await self._apply(spec, handler, good)
        self.metrics.handler_seconds.labels(spec.name).observe(time.perf_counter() - started)
        if outbox.staged_so_far() != staged:
            self.outbox.wake()

    async def _apply(self, spec: TopicSpec, handler: Handler, batch: list[Incoming[Any]]) -> None:
        """Transient failures retry forever with backoff; a bad batch is split to find and dead-letter the culprit."""
        delay = 0.2
        attempts = 0
        while True:
            try:
                await handler(batch)
                return
            except TRANSIENT as exc:
                self.metrics.retries.labels(spec.name).inc()
                log.warning("%s: transient error (%s); retrying in %.1fs", spec.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Rejected as exc:
                if len(batch) == 1:
                    await self.dlq.send(batch[0].source, exc.reason, "rejected")
                    return
                break
            except Exception as exc:
                attempts += 1
                if len(batch) > 1:
                    break
                if attempts >= 3:
                    log.exception("%s: event failed 3 times; dead-lettering it", spec.name)
                    await self.dlq.send(batch[0].source, f"handler error: {exc!r}", "handler_error")
                    return
                await asyncio.sleep(delay)
        for one in batch:  # split: apply one at a time so only the culprit is dead-lettered
            await self._apply(spec, handler, [one])
