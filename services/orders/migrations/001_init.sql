-- The orders service's own tables (schema "orders"; search_path is set).

-- A shop's settings, from shop.settings (or PUT /shops, which also emits it). Newest occurred_at wins.
CREATE TABLE shops (
    shop_id                  text        PRIMARY KEY,
    name                     text        NOT NULL,
    merchant_email           text        NOT NULL,
    abandon_after_seconds    integer,
    ignore_incomplete_orders boolean     NOT NULL DEFAULT true,
    version                  integer     NOT NULL DEFAULT 0,
    occurred_at              timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    order_id         text        PRIMARY KEY,
    shop_id          text        NOT NULL,
    cart_id          text,
    customer         jsonb       NOT NULL,
    customer_email   text        NOT NULL,
    customer_name    text,
    items            jsonb       NOT NULL,
    total_cents      bigint      NOT NULL,
    currency         text        NOT NULL,
    payment_method   text        NOT NULL,
    payment_provider text        NOT NULL,
    status           text        NOT NULL,
    payment_status   text        NOT NULL,
    payment_mismatch boolean     NOT NULL DEFAULT false,
    placed_at        timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    version          integer     NOT NULL DEFAULT 0  -- the seq of the last history row
);
CREATE INDEX orders_by_status ON orders (status, placed_at DESC);
CREATE INDEX orders_by_shop ON orders (shop_id, placed_at DESC);

-- One row per real change; (order_id, seq) also derives the order.status event id.
CREATE TABLE order_history (
    order_id            text        NOT NULL REFERENCES orders (order_id),
    seq                 integer     NOT NULL,
    from_status         text,
    to_status           text        NOT NULL,
    from_payment_status text,
    to_payment_status   text        NOT NULL,
    changed_by          text        NOT NULL,
    reason              text        NOT NULL,
    at                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, seq)
);

-- Every payment.confirmed, keyed by the gateway's payment id; held (applied = false) until its order exists.
CREATE TABLE payments (
    order_id     text        NOT NULL,
    payment_id   text        NOT NULL,
    shop_id      text        NOT NULL,
    amount_cents bigint      NOT NULL,
    currency     text        NOT NULL,
    provider     text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    applied      boolean     NOT NULL DEFAULT false,
    outcome      text,       -- null while held; then what it did: "applied", "duplicate", a refusal reason
    PRIMARY KEY (order_id, payment_id)
);

-- What inventory did for each order (inventory.deductions): per line asked and moved, to show shortfalls.
CREATE TABLE stock_outcomes (
    order_id    text        NOT NULL,
    kind        text        NOT NULL,
    lines       jsonb       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);

-- Customers' cancel requests: held until the order exists, then honoured or refused (kept either way).
CREATE TABLE cancel_requests (
    event_id    uuid        PRIMARY KEY,
    order_id    text        NOT NULL,
    reason      text,
    received_at timestamptz NOT NULL DEFAULT now(),
    outcome     text        -- null while held; "canceled", "already canceled" or the refusal reason
);
CREATE INDEX cancel_requests_by_order ON cancel_requests (order_id);
