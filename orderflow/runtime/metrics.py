"""Prometheus metrics every service has; a service adds its own to the same registry.

The registry is the runtime's own (several runtimes share a test process), with the collectors prometheus_client
puts in its default one: process_* (CPU, memory, open files), python_info and python_gc_*."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from orderflow.runtime.outbox import parked_rows


class RuntimeMetrics:
    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.events_in = Counter("orderflow_events_in_total", "Events consumed, by topic", ["topic"], registry=r)
        self.dead_letters = Counter(
            "orderflow_dead_letters_total", "Events sent to a DLQ, by source topic and kind", ["topic", "kind"],
            registry=r,
        )
        self.handler_seconds = Histogram(
            "orderflow_handler_seconds", "Time to apply one batch, by topic", ["topic"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.batch_size = Histogram(
            "orderflow_batch_size", "Events per batch, by topic", ["topic"], registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
        )
        self.retries = Counter("orderflow_handler_retries_total", "Batches retried after a transient error",
                               ["topic"], registry=r)
        self.paused = Gauge("orderflow_paused", "1 while a handler waits for a dependency (database, broker)",
                            ["topic"], registry=r)
        self.redelivered = Counter("orderflow_records_redelivered_total",
                                   "Records dropped as below their stored consumer position (applied already)",
                                   ["topic"], registry=r)
        self.outbox_published = Counter("orderflow_outbox_published_total", "Events relayed to Kafka", registry=r)
        self.outbox_rounds = Counter("orderflow_outbox_rounds_total",
                                     "Relay rounds that published or parked rows (each one transaction)", registry=r)
        self.outbox_depth = Gauge("orderflow_outbox_depth", "Events staged but not yet relayed", registry=r)
        self.outbox_parked = Gauge("orderflow_outbox_parked",
                                   "Outbox rows parked: never publishable as they are (orderflow outbox list)",
                                   registry=r)
        self.outbox_parked.set_function(parked_rows)
        self.consumer_lag = Gauge(
            "orderflow_consumer_lag",
            "Records of an assigned partition not yet applied: its high watermark minus the position stored in "
            "PostgreSQL (what `orderflow lag` shows from the broker's committed offsets, which follow it)",
            ["group", "topic", "partition"], registry=r)
        self.inputs_behind = Gauge(
            "orderflow_inputs_behind_seconds",
            "How far behind now the inputs' horizon is: decisions made on the clock (abandoned checkouts) only "
            "cover what happened before it (orderflow/runtime/current.py); services that keep one only", registry=r)
        self.info = Gauge("orderflow_service_info", "Which service this is", ["service"], registry=r)
        self.info.labels(service=service).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
