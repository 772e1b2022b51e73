"""A pure, seeded storefront scenario: the contract events many shops and customers would produce, and what must follow.

`Scenario.generate(seed, sessions, mix)` is deterministic for a given seed, mix, namespace and start time: it does no
I/O and reads no clock unless `start` is left out. Besides the events it computes the **expected outcome** — each
order's final status and payment status, the checkouts that must be reported abandoned, and each SKU's final stock —
so load tests and fault tests can use it as their oracle.

Stock is replayed in the canonical order (setup, then sessions in order, each session's events in order), with the
inventory rules: deduct once per order on its first committing change, never below zero (a short order takes what is
left), return what was moved on a cancel. Broker topics do not order events across topics, so where a clamp could
make the result depend on arrival order the SKU is flagged in `Expected.order_sensitive_skus`. With the default
`Mix.scarcity = 0` every SKU's initial stock covers all its demand and the result is exact whatever the order.

Shops are tenants: the oracle keys every order by (shop_id, order_id) and every cart by (shop_id, cart_id). With
`Mix.shared_ids` the shops number their orders, carts and payments alike (each shop's first session is order
`<ns>-1001`, cart `<ns>-cart1001`, payment `<ns>-1001-pay`; SKUs are always the same names in every shop), as real
shop builders do: nothing of one shop may show in, or change, another's.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from contracts.base import Event
from contracts.events import (
    CartCustomer,
    CartItem,
    CartUpdated,
    CheckoutStarted,
    Customer,
    OrderCancelRequested,
    OrderItem,
    OrderPlaced,
    OrderStatus,
    Payment,
    PaymentConfirmed,
    PaymentStatus,
    ShopSettings,
    StockAdjusted,
)

GATEWAY_PROVIDERS = ("paypal", "ideal", "stripe")
MANUAL_PROVIDERS = ("transfer", "cheque")
PRODUCTS = ("mug", "tee", "poster", "cap", "tote", "sticker", "hoodie", "notebook", "pin", "socks", "lamp", "print")


@dataclass(frozen=True)
class Mix:
    """Shares (0..1) of what sessions do. Fates are exclusive: abandoned cart, unpaid gateway order, or an order."""

    abandoned_carts: float = 0.2
    """Sessions that fill a cart and leave; half of them also start a checkout (those must be reported abandoned)."""
    gateway_unpaid: float = 0.1
    """Sessions that place a gateway order and never pay it (incomplete; reported abandoned)."""
    manual_payments: float = 0.25
    """Of the orders that commit, the share paid by cheque or transfer (pending/awaiting at once)."""
    manual_confirmed: float = 0.5
    """Of the manual orders, the share whose payment is later confirmed (paid; stock untouched)."""
    duplicated_confirmations: float = 0.2
    """Of the confirmed payments, the share confirmed twice (half a redelivery, half a gateway retry)."""
    early_confirmations: float = 0.1
    """Of the gateway payments, the share whose confirmation is produced before its order.placed."""
    cancels: float = 0.05
    """Of the committed orders, the share the customer cancels afterwards (stock returned)."""
    restocks: float = 0.05
    """Share of sessions followed by a merchant restock (stock.adjusted delta) of one of the shop's SKUs."""
    shops: int = 3
    skus_per_shop: int = 6
    max_lines: int = 3
    scarcity: float = 0.0
    """0: initial stock covers all demand (exact oracle). >0: initial stock is demand x (1 - scarcity): shortfalls."""
    abandon_after_seconds: int | None = None
    """Written into every shop's settings when set (short values for demos and tests)."""
    shared_ids: bool = False
    """Number orders, carts and payments per shop, so shops reuse each other's ids (and SKUs, as always)."""

    def __post_init__(self) -> None:
        for name in ("abandoned_carts", "gateway_unpaid", "manual_payments", "manual_confirmed",
                     "duplicated_confirmations", "early_confirmations", "cancels", "restocks", "scarcity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"mix {name}={value} must be between 0 and 1")
        if self.abandoned_carts + self.gateway_unpaid > 1.0:
            raise ValueError("mix abandoned_carts + gateway_unpaid must not exceed 1")
        if self.shops < 1 or self.skus_per_shop < 1 or self.max_lines < 1:
            raise ValueError("mix shops, skus_per_shop and max_lines must be at least 1")


OrderKey = tuple[str, str]
"""(shop_id, order_id)."""
CartKey = tuple[str, str]
"""(shop_id, cart_id)."""


@dataclass(frozen=True)
class ExpectedOrder:
    shop_id: str
    order_id: str
    cart_id: str
    status: OrderStatus
    payment_status: PaymentStatus
    committed: bool
    """Whether stock was deducted for it at some point (a later cancel returns it)."""
    email: str

    @property
    def key(self) -> OrderKey:
        return (self.shop_id, self.order_id)


@dataclass
class Expected:
    orders: dict[OrderKey, ExpectedOrder] = field(default_factory=dict)
    """(shop_id, order_id) -> how the order must end."""
    stock: dict[tuple[str, str], int] = field(default_factory=dict)
    """(shop_id, sku) -> available at the end."""
    initial_stock: dict[tuple[str, str], int] = field(default_factory=dict)
    abandoned_carts: set[CartKey] = field(default_factory=set)
    """(shop_id, cart_id) of the carts that must yield exactly one checkout.abandoned (checkout never ordered, or
    gateway order unpaid)."""
    order_sensitive_skus: set[tuple[str, str]] = field(default_factory=set)
    """SKUs whose final stock could differ if events arrived in another order (a clamp may have been hit)."""

    def orders_with(self, status: OrderStatus) -> list[ExpectedOrder]:
        return [o for o in self.orders.values() if o.status == status]

    @property
    def committed_orders(self) -> int:
        return sum(1 for o in self.orders.values() if o.committed)


@dataclass
class Scenario:
    seed: int
    namespace: str
    mix: Mix
    shops: list[ShopSettings]
    setup_events: list[Event]
    """shop.settings, then one stock.adjusted set_to per SKU: produce these first and let them land."""
    session_events: list[list[Event]]
    """One list per customer session, in the order a storefront would produce them."""
    expected: Expected

    @property
    def event_count(self) -> int:
        return len(self.setup_events) + sum(len(s) for s in self.session_events)

    def expected_for(self, sessions: int) -> Expected:
        """The oracle when only the first `sessions` sessions were produced (a run stopped by its duration)."""
        return expected_outcome(self.setup_events, self.session_events[:sessions])

    @classmethod
    def generate(cls, seed: int, sessions: int, mix: Mix | None = None, *, namespace: str | None = None,
                 start: datetime | None = None) -> Scenario:
        return _Generator(seed, sessions, mix or Mix(), namespace or f"sim{seed}", start).build()


# --- generation --------------------------------------------------------------------------------------------


class _Generator:
    def __init__(self, seed: int, sessions: int, mix: Mix, namespace: str, start: datetime | None) -> None:
        if sessions < 0:
            raise ValueError("sessions must be >= 0")
        self.rng = random.Random(seed)
        self.seed = seed
        self.sessions = sessions
        self.mix = mix
        self.ns = namespace
        self.clock = (start or datetime.now(UTC)).astimezone(UTC)
        self.counter = 0
        self.per_shop: dict[str, int] = {}

    def _envelope(self, shop_id: str) -> dict:
        self.counter += 1
        self.clock += timedelta(milliseconds=1)
        return {"event_id": uuid.uuid5(uuid.NAMESPACE_URL, f"orderflow-sim:{self.ns}:{self.seed}:{self.counter}"),
                "occurred_at": self.clock, "shop_id": shop_id}

    def build(self) -> Scenario:
        mix, rng = self.mix, self.rng
        shops = [ShopSettings(**self._envelope(f"{self.ns}-shop{i}"), name=f"Sim shop {i}",
                              merchant_email=f"merchant{i}.{self.ns}@shop.example",
                              abandon_after_seconds=mix.abandon_after_seconds)
                 for i in range(mix.shops)]
        catalogue = {s.shop_id: [(f"{PRODUCTS[j % len(PRODUCTS)]}-{j}", 500 + 250 * (j % 7))
                                 for j in range(mix.skus_per_shop)] for s in shops}
        sessions = [self._session(n, rng.choice(shops).shop_id, catalogue) for n in range(self.sessions)]
        # Initial stock: what the sessions commit, so a scarcity share can be taken off it deterministically.
        demand = _committed_demand(sessions)
        setup: list[Event] = list(shops)
        for shop in shops:
            for sku, _price in catalogue[shop.shop_id]:
                need = demand.get((shop.shop_id, sku), 0)
                level = need + 10 if mix.scarcity == 0 else int(need * (1.0 - mix.scarcity))
                setup.append(StockAdjusted(**self._envelope(shop.shop_id), sku=sku, set_to=level,
                                           reason="simulator initial stock"))
        return Scenario(self.seed, self.ns, mix, shops, setup, sessions, expected_outcome(setup, sessions))

    def _session(self, n: int, shop_id: str, catalogue: dict[str, list[tuple[str, int]]]) -> list[Event]:
        mix, rng = self.mix, self.rng
        if mix.shared_ids:  # each shop numbers its own: every shop's k-th session uses the same ids
            k = self.per_shop[shop_id] = self.per_shop.get(shop_id, 1000) + 1
            cart_id, order_id = f"{self.ns}-cart{k}", f"{self.ns}-{k}"
        else:
            cart_id, order_id = f"{self.ns}-cart{n}", f"{self.ns}-order{n}"
        customer = Customer(email=f"shopper{n}.{self.ns}@customer.example", name=f"Shopper {n}",
                            customer_id=f"{self.ns}-cust{n}")
        cart_customer = CartCustomer(**customer.model_dump())
        picks = rng.sample(catalogue[shop_id], k=min(len(catalogue[shop_id]), rng.randint(1, mix.max_lines)))
        lines = [OrderItem(sku=sku, name=sku.split("-")[0].title(), quantity=rng.randint(1, 3), unit_price_cents=p)
                 for sku, p in picks]
        items = [CartItem(sku=i.sku, quantity=i.quantity, name=i.name, unit_price_cents=i.unit_price_cents)
                 for i in lines]
        total = sum(i.quantity * i.unit_price_cents for i in lines)
        events: list[Event] = []
        # The cart fills up one line at a time (each event a snapshot of the whole cart).
        for k in range(1, len(items) + 1):
            events.append(CartUpdated(**self._envelope(shop_id), cart_id=cart_id, customer=cart_customer,
                                      items=items[:k]))
        fate = rng.random()
        if fate < mix.abandoned_carts:
            if rng.random() < 0.5:
                events.append(CheckoutStarted(**self._envelope(shop_id), cart_id=cart_id, customer=customer,
                                              items=items, total_cents=total, currency="EUR"))
            return self._maybe_restock(events, shop_id, catalogue)
        events.append(CheckoutStarted(**self._envelope(shop_id), cart_id=cart_id, customer=customer, items=items,
                                      total_cents=total, currency="EUR"))
        unpaid = fate < mix.abandoned_carts + mix.gateway_unpaid
        manual = not unpaid and rng.random() < mix.manual_payments
        payment = Payment(method="manual", provider=rng.choice(MANUAL_PROVIDERS)) if manual else \
            Payment(method="gateway", provider=rng.choice(GATEWAY_PROVIDERS))
        placed = OrderPlaced(**self._envelope(shop_id), order_id=order_id, cart_id=cart_id, customer=customer,
                             items=lines, total_cents=total, currency="EUR", payment=payment)
        if unpaid:
            events.append(placed)
            return self._maybe_restock(events, shop_id, catalogue)
        confirmed = not manual or rng.random() < mix.manual_confirmed
        confirmations: list[Event] = []
        if confirmed:
            first = PaymentConfirmed(**self._envelope(shop_id), order_id=order_id, payment_id=f"{order_id}-pay",
                                     amount_cents=total, currency="EUR", provider=payment.provider)
            confirmations.append(first)
            if rng.random() < mix.duplicated_confirmations:
                # A redelivery keeps the event id; a gateway retry is a new event for the same payment.
                confirmations.append(first if rng.random() < 0.5 else
                                     first.model_copy(update=self._envelope(shop_id)))
        if not manual and confirmations and rng.random() < mix.early_confirmations:
            events += [confirmations[0], placed, *confirmations[1:]]
        else:
            events += [placed, *confirmations]
        if rng.random() < mix.cancels:
            events.append(OrderCancelRequested(**self._envelope(shop_id), order_id=order_id,
                                               reason="changed my mind"))
        return self._maybe_restock(events, shop_id, catalogue)

    def _maybe_restock(self, events: list[Event], shop_id: str,
                       catalogue: dict[str, list[tuple[str, int]]]) -> list[Event]:
        if self.rng.random() < self.mix.restocks:
            sku, _ = self.rng.choice(catalogue[shop_id])
            events.append(StockAdjusted(**self._envelope(shop_id), sku=sku, delta=self.rng.randint(1, 20),
                                        reason="simulator restock"))
        return events


# --- the oracle --------------------------------------------------------------------------------------------


def _committed_demand(sessions: Sequence[Sequence[Event]]) -> dict[tuple[str, str], int]:
    demand: dict[tuple[str, str], int] = {}
    committed = {key for key, o in expected_outcome([], sessions, track_stock=False).orders.items() if o.committed}
    for session in sessions:
        for placed in session:
            if isinstance(placed, OrderPlaced) and (placed.shop_id, placed.order_id) in committed:
                for line in placed.items:
                    key = (placed.shop_id, line.sku)
                    demand[key] = demand.get(key, 0) + line.quantity
    return demand


def expected_outcome(setup: Sequence[Event], sessions: Sequence[Sequence[Event]], *,
                     track_stock: bool = True) -> Expected:
    """Replays the events through the contract's rules (DESIGN.md, "Order and payment rules") in canonical order."""
    out = Expected()
    ignore_incomplete = {e.shop_id: e.ignore_incomplete_orders for e in setup if isinstance(e, ShopSettings)}
    stock: dict[tuple[str, str], int] = {}
    worst: dict[tuple[str, str], int] = {}  # stock minus every deduction, ignoring all additions: < 0 => clamp risk
    moved: dict[OrderKey, list[tuple[tuple[str, str], int]]] = {}

    def adjust(event: StockAdjusted) -> None:
        key = (event.shop_id, event.sku)
        if event.set_to is not None:
            if key in stock:
                out.order_sensitive_skus.add(key)  # a count after orders moved stock depends on arrival order
            stock[key] = event.set_to
            worst[key] = event.set_to
            out.initial_stock.setdefault(key, event.set_to)
        else:
            stock[key] = max(0, stock.get(key, 0) + (event.delta or 0))
            if (event.delta or 0) < 0:
                worst[key] = worst.get(key, 0) + (event.delta or 0)

    def deduct(placed: OrderPlaced) -> None:
        lines = []
        for line in placed.items:
            key = (placed.shop_id, line.sku)
            take = min(line.quantity, stock.get(key, 0))
            stock[key] = stock.get(key, 0) - take
            worst[key] = worst.get(key, 0) - line.quantity
            lines.append((key, take))
        moved[placed.shop_id, placed.order_id] = lines

    for event in setup:
        if isinstance(event, StockAdjusted):
            adjust(event)
    for session in sessions:
        placed: dict[str, OrderPlaced] = {}
        paid_early: set[str] = set()
        state: dict[str, tuple[OrderStatus, PaymentStatus, bool]] = {}
        for event in session:
            if isinstance(event, StockAdjusted):
                adjust(event)
            elif isinstance(event, CheckoutStarted):
                out.abandoned_carts.add((event.shop_id, event.cart_id))
            elif isinstance(event, OrderPlaced):
                placed[event.order_id] = event
                out.abandoned_carts.discard((event.shop_id, event.cart_id))
                gateway_incomplete = event.payment.method == "gateway" and ignore_incomplete.get(event.shop_id, True)
                if event.order_id in paid_early:
                    state[event.order_id] = (OrderStatus.PENDING, PaymentStatus.PAID, True)
                elif gateway_incomplete:
                    state[event.order_id] = (OrderStatus.INCOMPLETE, PaymentStatus.INCOMPLETE, False)
                    out.abandoned_carts.add((event.shop_id, event.cart_id))  # until paid: unpaid = abandoned
                else:
                    state[event.order_id] = (OrderStatus.PENDING, PaymentStatus.AWAITING, True)
                if state[event.order_id][2]:
                    deduct(event)
            elif isinstance(event, PaymentConfirmed):
                if event.order_id not in state:
                    paid_early.add(event.order_id)
                    continue
                status, _pay, committed = state[event.order_id]
                if status == OrderStatus.INCOMPLETE:
                    state[event.order_id] = (OrderStatus.PENDING, PaymentStatus.PAID, True)
                    deduct(placed[event.order_id])
                    out.abandoned_carts.discard((event.shop_id, placed[event.order_id].cart_id))
                elif status != OrderStatus.CANCELED:
                    state[event.order_id] = (status, PaymentStatus.PAID, committed)
            elif isinstance(event, OrderCancelRequested):
                current = state.get(event.order_id)
                if current and current[0] == OrderStatus.PENDING:
                    state[event.order_id] = (OrderStatus.CANCELED, current[1], current[2])
                    for key, take in moved.pop((event.shop_id, event.order_id), []):
                        stock[key] = stock.get(key, 0) + take
        for order_id, (status, payment_status, committed) in state.items():
            p = placed[order_id]
            out.orders[p.shop_id, order_id] = ExpectedOrder(p.shop_id, order_id, p.cart_id, status, payment_status,
                                                            committed, p.customer.email)
    if track_stock:
        out.stock = dict(stock)
        out.order_sensitive_skus |= {key for key, low in worst.items() if low < 0}
    return out
