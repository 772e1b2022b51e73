"""The things the runtime asks of faust beyond its public API, in one place, checked at start.

Consumer positions live in PostgreSQL (`positions.py`, `unit.py`), so correctness no longer rests on faust's commit
bookkeeping: every source topic is subscribed with `acks=False`, which keeps faust from ever committing an offset by
itself. What is left:

- **seeking** a source partition back to its stored position: `Consumer.seek(tp, offset)`, public;
- **committing** the stored positions to the broker, so that lag tools (`kafka-consumer-groups`, `orderflow lag`)
  see real progress: `Consumer._commit(offsets)`, private, run by `SafeCommitConsumerThread._commit` (it replaces
  faust's, private too). faust's crashes the consumer on any error of a commit, and a commit made while the
  partitions were being revoked reached aiokafka as an empty dict (ValueError) and stopped the worker; ours keeps
  only the partitions held at that moment, in the consumer's own thread, and a failed commit only returns False.
  The broker's committed offset never decides what is applied, so a change there can only make lag figures stale,
  never lose an event.
- an **idempotent producer** (`IdempotentProducer`): faust's aiokafka producer takes `producer_acks=-1` but turns
  idempotence on only inside its transactions (`Producer._settings_extra`, private). Without it, a batch whose first
  attempt reached a partition leader that then died unacknowledged is written twice by the client's own retry;
  with it, the new leader drops the repeat by its producer id and sequence. Every event the outbox relay publishes
  and every dead letter goes through this producer.

`check()` runs at worker start and refuses versions this was not written and tested against
(`tests/unit/test_faust_adapter.py` fails loudly when the signatures change).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from importlib.metadata import version
from time import monotonic
from typing import Any

import faust
from aiokafka.structs import OffsetAndMetadata
from faust.transport.consumer import Consumer
from faust.transport.drivers import aiokafka as aiokafka_driver

log = logging.getLogger(__name__)

TESTED = {"faust-streaming": {"0.15.3"}, "aiokafka": {"0.13.0", "0.14.0"}}


class UnsupportedFaust(RuntimeError):
    pass


def check() -> None:
    """Raise UnsupportedFaust (one line) unless the installed faust/aiokafka are the ones this adapter knows."""
    for package, tested in TESTED.items():
        installed = version(package)
        if installed not in tested:
            raise UnsupportedFaust(f"{package} {installed} is installed; orderflow's consumer adapter is tested with "
                                   f"{', '.join(sorted(tested))} (orderflow/runtime/faust_adapter.py)")
    for owner, name, params in ((Consumer, "seek", ["self", "partition", "offset"]),
                                (Consumer, "_commit", ["self", "offsets"]),
                                (aiokafka_driver.AIOKafkaConsumerThread, "_commit", ["self", "offsets"]),
                                (aiokafka_driver.Consumer, "_new_consumer_thread", ["self"]),
                                (faust.App, "_new_consumer", ["self"]),
                                (aiokafka_driver.Producer, "_settings_extra", ["self"]),
                                (faust.App, "_new_producer", ["self"])):
        method = getattr(owner, name, None)
        if method is None or list(inspect.signature(method).parameters) != params:
            raise UnsupportedFaust(f"faust's {owner.__name__}.{name} is not {name}({', '.join(params[1:])}) any more")


class IdempotentProducer(aiokafka_driver.Producer):
    """faust's aiokafka producer with acks=all and idempotence on for every send, not only in transactions."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class SafeCommitConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """faust's consumer thread whose commit never crashes the consumer (see the module's docstring)."""

    async def _commit(self, offsets: Mapping[Any, int]) -> bool:
        held = {tp: offset for tp, offset in offsets.items() if tp in self.assignment()}
        if not held:
            return False
        try:
            await self._ensure_consumer().commit(
                {aiokafka_driver.ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "") for tp, offset in held.items()})
        except Exception as exc:  # noqa: BLE001 - only lag figures depend on it; the next commit tries again
            log.info("offsets not committed to the broker: %r", exc)
            return False
        self.tp_last_committed_at.update({tp: monotonic() for tp in held})
        return True


class SafeCommitConsumer(aiokafka_driver.Consumer):
    def _new_consumer_thread(self) -> SafeCommitConsumerThread:
        return SafeCommitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class App(faust.App):
    """faust's App whose producer is an `IdempotentProducer` and whose consumer commits through
    `SafeCommitConsumerThread` (`_new_producer` and `_new_consumer` are faust's `Transport.create_producer` and
    `create_consumer` with our classes)."""

    def _new_producer(self) -> IdempotentProducer:
        return IdempotentProducer(self.transport, loop=self.loop, beacon=self.beacon)

    def _new_consumer(self) -> SafeCommitConsumer:
        return SafeCommitConsumer(self.transport, callback=self.topics.on_message, loop=self.loop,
                                  on_partitions_revoked=self._on_partitions_revoked,
                                  on_partitions_assigned=self._on_partitions_assigned, beacon=self.beacon)


async def seek(app: Any, tp: Any, offset: int) -> None:
    await app.consumer.seek(tp, offset)


async def commit(app: Any, offsets: Mapping[Any, int]) -> bool:
    """Commit these offsets for the partitions still assigned; False when it could not.

    Filtered here, not only by faust: a batch applied while its partitions were being revoked leaves offsets of
    partitions this worker no longer holds, faust's `_commit` filters them out and hands aiokafka an empty dict,
    aiokafka raises ValueError, and faust crashes the consumer for it: the worker stopped (seen in make test, a
    worker taking over after another one stopped, 2026-12-01)."""
    assigned = app.consumer.assignment()
    held = {tp: offset for tp, offset in offsets.items() if tp in assigned}
    if not held:
        return False
    return bool(await app.consumer._commit(held))
