"""The cart service: persistent carts, their view against stock, and abandoned-checkout detection.

Inputs: cart.updated, checkout.started, order.placed, order.status, inventory.levels, shop.settings.
Output: checkout.abandoned, through the outbox.

Carts, stock levels, shop settings and checkout watches live in PostgreSQL, which any worker can serve from. The one
faust table, `checkouts-due` (windowed), proposes abandoned checkouts (services/cart/detection.py). A `carts` table
that mirrored each cart's newest snapshot was removed: nothing read it (GET /carts/{id} reads PostgreSQL), and it
cost a changelog write per cart.updated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import faust
from faust.exceptions import PartitionsMismatch

from contracts import CheckoutStarted, ContractError, decode, now, topics
from orderflow.auth.credentials import Verifier
from orderflow.runtime.app import Runtime
from orderflow.runtime.failures import describe
from orderflow.runtime.unit import UnitOfWork
from orderflow.services import ServiceSpec
from orderflow.settings import Settings
from services.cart import core, detection, handlers, recovery, repository
from services.cart.api import CART_VIEW_DOC, cart_view_handler, unsubscribe_handler

log = logging.getLogger(__name__)

TABLE_READY_SECONDS = 15.0
PAYMENTS_KEPT = timedelta(days=60)
"""A payment seen stops reminders of a watch due at most 30 days after its order; kept twice that."""
PRUNE_EVERY_SECONDS = 3600.0
TABLE_KEPT_AT_LEAST = timedelta(minutes=15)
"""The checkouts-due table's windows, and its changelog's retention, last at least this long (see `build`)."""


async def write_table(write: Callable[[], object], what: str) -> None:
    """faust checks a table's changelog partition count on its first write; a changelog created moments ago can
    still show 0 partitions in the consumer's metadata. Wait for the metadata rather than let the agent crash (a
    crash acks and skips the event)."""
    deadline = time.monotonic() + TABLE_READY_SECONDS
    while True:
        try:
            write()
            return
        except PartitionsMismatch as exc:
            if time.monotonic() >= deadline:
                log.error("%s not written: %s", what, str(exc).replace("\n", " "))
                return
            await asyncio.sleep(0.25)


def build(settings: Settings) -> Runtime:
    """Wires handlers, the windowed table's abandoned-checkout detection and GET /carts/{cart_id}.

    Detection (services/cart/detection.py): the windowed table `checkouts-due` proposes due checkouts, by faust's
    window close and by a sweep of each worker's local partitions; PostgreSQL's checkout row, claimed `WHERE state =
    'open'` in the transaction that stages checkout.abandoned, makes each (checkout, reminder) happen once across
    workers, restarts and replays; the PostgreSQL scanner is the safety net for what the table missed.
    """
    rt = Runtime(settings)
    rt.track_inputs()  # abandoned checkouts are decided against the inputs' horizon, not the clock
    metrics = handlers.CartMetrics(rt.metrics.registry)
    recovery_key = recovery.key_from(settings.backoffice_token)  # signs the links of recovery e-mails
    default_after = timedelta(seconds=settings.abandon_after_seconds)
    rt.context = handlers.Context(default_abandon_after=default_after, metrics=metrics)
    partitions = settings.topic_partitions

    json_schema = faust.Schema(key_serializer="json", value_serializer="json")
    # Abandoned-checkout detection (services/cart/detection.py): windows of one base size, a due time per entry.
    proposals = detection.Proposals()

    def window_closed(key: Any, value: Any) -> None:
        horizon = rt.inputs_horizon()
        if horizon is not None and isinstance(value, dict) and "shop_id" in value \
                and min(value["due"], default=0) <= min(horizon, time.time()):
            proposals.propose((value["shop_id"], value["cart_id"]), "window")

    # In memory, recovered from its changelog at every start: the changelog keeps 2 windows (faust sets a windowed
    # changelog's retention to its expiry), so that read is bounded. With RocksDB, a worker SIGKILLed and restarted
    # kept changelog offsets that faust 0.15.3's recovery then fetched "out of range" and waited for forever ("No
    # event received for active tp ... since recovery start"; the cart worker never got ready: fault loop, 2026-12-01;
    # faust-streaming issues 155, 158, 597, 651 describe this family).
    # The same wait happened in memory once (SIGKILL fault loop, run 6 of 10, 2026-12-02): a changelog partition's
    # only record, older than the retention (8 s: the test's abandon delay was 4 s), was deleted between faust reading
    # where the log starts and fetching from there; recovery then waited for that offset for ever. The retention,
    # hence the expiry, is at least TABLE_KEPT_AT_LEAST: only a partition idle that long can lose its records so.
    checkouts_due = rt.app.Table("checkouts-due", default=None, partitions=partitions, schema=json_schema,
                                 store="memory://", on_window_close=window_closed,
                                 ).tumbling(default_after, expires=max(default_after * 2, TABLE_KEPT_AT_LEAST))

    # --- the faust table: a plain agent, so each write goes to the changelog partition of its source event ----

    @rt.app.agent(rt.topic(topics.CHECKOUT_STARTED), name="cart.checkouts-window")
    async def keep_checkouts_due(stream: faust.StreamT) -> None:
        async for value in stream:
            try:
                started = decode(CheckoutStarted, value)
            except ContractError:
                continue
            try:
                policies = await repository.recovery_policies(await rt.pool(), [started.shop_id], default_after)
                delays = policies[started.shop_id].reminders
            except Exception as exc:  # noqa: BLE001 - the deployment's delay then; the safety net covers the rest
                log.info("checkout of %s/%s: shop's reminders not read (%s)", started.shop_id, started.cart_id,
                         describe(exc))
                delays = (int(default_after.total_seconds()),)
            key = detection.table_key(started.shop_id, started.cart_id)
            value = detection.entry(started.shop_id, started.cart_id, started.occurred_at.timestamp(), delays)
            await write_table(partial(checkouts_due.__setitem__, key, value), f"checkout of cart {key} (due table)")
            due_index.add(value)

    proposed: dict[tuple[str, float], float] = {}
    due_index = detection.DueIndex()
    next_full_scan = [0.0]

    @rt.app.timer(settings.abandon_scan_seconds, name="cart.checkouts-sweep")
    async def sweep_checkouts_due() -> None:
        """Propose what is due: the local partitions of the table read every FULL_SCAN_SECONDS (a timer reads,
        never writes), the agent's writes in between."""
        at = time.time()
        if at >= next_full_scan[0]:
            due_index.rebuild(checkouts_due.table.data.items())
            next_full_scan[0] = at + detection.FULL_SCAN_SECONDS
        horizon = rt.inputs_horizon()
        if horizon is None:
            return  # nothing is known applied yet: a due checkout's order may still be on its way
        for key, _ in due_index.pop_due(min(at, horizon), proposed):
            proposals.propose(key, "sweep")
        detection.forget_old(proposed, at)

    # --- PostgreSQL: the durable cart, stock, settings and checkout watches -----------------------------------

    rt.consume(topics.CART_UPDATED, handlers.carts_updated, batch=200)
    rt.consume(topics.INVENTORY_LEVELS, handlers.levels_reported, batch=500)
    rt.consume(topics.SHOP_SETTINGS, handlers.shop_settings_changed, batch=100)
    rt.consume(topics.CHECKOUT_STARTED, handlers.checkouts_started, batch=200)
    rt.consume(topics.ORDER_PLACED, handlers.orders_placed, batch=200)
    rt.consume(topics.ORDER_STATUS, handlers.order_status_changed, batch=200)
    # A gateway's payment stops its checkout's reminders at once, not only once orders says paid: while orders is
    # down or behind, the inputs' horizon (which covers this topic, not orders' backlog) would otherwise let a
    # checkout whose payment waits in orders be judged abandoned.
    rt.consume(topics.PAYMENT_CONFIRMED, handlers.payments_confirmed, batch=500)

    # --- the abandon scanner --------------------------------------------------------------------------------

    async def abandon_due(uow: UnitOfWork, keys: list[core.CartKey] | None = None,
                          overdue: timedelta = timedelta(0)) -> list[core.Checkout]:
        """Claim watches past due and decide each one's next reminder, in one transaction: one checkout.abandoned
        per reminder sent, none without consent when the shop requires it or after the e-mail unsubscribed. A
        checkout whose event cannot be built is parked with the reason, and the others go on.

        "Past due" is judged against the inputs' horizon, not the clock (orderflow/runtime/current.py): only a
        checkout due before the moment every input partition is known applied up to, so an order held back by a
        broker outage or a backlog is read before its checkout could be called abandoned."""
        horizon = rt.inputs_horizon(age=overdue.total_seconds())  # the safety net's grace runs from the horizon
        if horizon is None:
            return []
        claimed = await repository.claim_due_checkouts(uow.conn, keys=keys, overdue=overdue,
                                                       due_by=datetime.fromtimestamp(horizon, UTC))
        if not claimed:
            return []
        policies = await repository.recovery_policies(uow.conn, [c.shop_id for c in claimed], default_after)
        gone = await repository.unsubscribed(uow.conn, [(c.shop_id, recovery.normalized_email(c.customer["email"]))
                                                        for c in claimed if c.customer.get("email")])
        paid = await repository.paid_orders(uow.conn, [(c.shop_id, c.order_id) for c in claimed if c.order_id])
        at = now()
        decided, sent, parked = [], [], []
        for checkout in claimed:
            email = recovery.normalized_email(checkout.customer.get("email") or "")
            after, outcome = core.next_reminder(checkout, policies[checkout.shop_id], (checkout.shop_id, email) in gone,
                                                payment_seen=(checkout.shop_id, checkout.order_id) in paid)
            if outcome is core.ReminderOutcome.SEND:
                try:
                    uow.emit([core.abandoned_event(checkout, settings.public_store_url, at, recovery_key,
                                                   reminder=checkout.reminders_sent,
                                                   public_cart_url=settings.public_cart_url)])
                    sent.append(checkout)
                except Exception as exc:  # noqa: BLE001 - one bad row must not stop the scanner: parked, counted
                    after = replace(after, state=core.CheckoutState.ABANDONED)
                    parked.append((checkout, describe(exc)))
            else:
                uow.after_commit(partial(metrics.reminders_stopped.labels(outcome.value).inc))
            decided.append(after)
        await repository.save_checkouts(uow.conn, decided)
        for checkout, reason in parked:
            await repository.park_checkout(uow.conn, checkout.shop_id, checkout.cart_id, reason)
            uow.after_commit(metrics.parked.inc)
            log.error("checkout of cart %s parked: %s", checkout.cart_id, reason)
        if sent:
            uow.after_commit(partial(metrics.abandoned.inc, len(sent)))
            log.info("abandoned checkouts: %s", ", ".join(f"{c.shop_id}/{c.cart_id}#{c.reminders_sent}" for c in sent))
        return claimed

    async def claim_proposed(batch: dict[core.CartKey, str]) -> set[core.CartKey]:
        """Claim what the windowed table proposed; each claim counted by its source (window or sweep)."""
        await rt.wait_caught_up(None, "the abandon detector")
        claimed = await rt.run_unit(partial(abandon_due, keys=list(batch)), topic="abandon-detector")
        for checkout in claimed:
            metrics.detections.labels(batch[checkout.key]).inc()
        return {checkout.key for checkout in claimed}

    @rt.background
    async def abandon_detector() -> None:
        await proposals.run(claim_proposed)

    async def forget_old_payments(uow: UnitOfWork) -> None:
        await repository.forget_payments(uow.conn, PAYMENTS_KEPT)

    @rt.background
    async def abandon_scanner() -> None:
        """The safety net, every ABANDON_SCAN_MS: claim the checkouts due for SAFETY_NET_GRACE that the windowed
        table did not propose (one unit of work per round); it parks checkouts whose event cannot be built."""
        next_count = next_prune = 0.0
        while True:
            # After a replay or rebuild, nothing is abandoned until every input topic caught up: a checkout whose
            # order the replay has not reached yet would otherwise be mailed "your cart is waiting".
            await rt.wait_caught_up(None, "the abandon scanner")
            claimed = await rt.run_unit(partial(abandon_due, overdue=detection.SAFETY_NET_GRACE),
                                        topic="abandon-scanner")
            if claimed:
                metrics.detections.labels("safety_net").inc(len(claimed))
            if time.monotonic() >= next_count:
                metrics.open_carts.set(await repository.count_carts(await rt.pool()))
                next_count = time.monotonic() + 10.0
            if time.monotonic() >= next_prune:
                await rt.run_unit(forget_old_payments, topic="payments-prune")
                next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            await asyncio.sleep(settings.abandon_scan_seconds)

    # The cart view checks its own credentials: a storefront key, a recovery link's token or BACKOFFICE_TOKEN (api.py).
    verifier = Verifier(rt.pool, settings.backoffice_token)
    rt.http.route("GET", "/carts/{cart_id}", cart_view_handler(rt.pool, metrics.out_of_stock_shown, verifier,
                                                               recovery_key), auth=False, doc=CART_VIEW_DOC)
    # A recovery e-mail's unsubscribe link and its RFC 8058 one-click POST: the signed token is the credential.
    unsubscribe = unsubscribe_handler(rt.pool, recovery_key, lambda via: metrics.unsubscribes.labels(via).inc())
    rt.http.route("GET", "/unsubscribe", unsubscribe, auth=False)
    rt.http.route("POST", "/unsubscribe", unsubscribe, auth=False)
    return rt


SERVICE = ServiceSpec(
    name="cart", port_env="CART_HTTP_PORT", default_port=8102, build=build,
    description="persistent carts, out-of-stock display, abandoned checkouts",
)
