-- Refunds (DESIGN.md, "Order and payment rules"): what each order has refunded, and every refund asked for,
-- applied or refused, once per (shop, order, refund id).
ALTER TABLE orders ADD COLUMN refunded_cents bigint NOT NULL DEFAULT 0;

CREATE TABLE refunds (
    shop_id      text        NOT NULL,
    order_id     text        NOT NULL,
    refund_id    text        NOT NULL,
    amount_cents bigint      NOT NULL,
    currency     text        NOT NULL,
    provider     text        NOT NULL,   -- the gateway's name, or "merchant" for POST /orders/{id}/refunds
    reason       text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    applied      boolean     NOT NULL DEFAULT false,
    outcome      text,       -- null while held (its order not placed yet); then "applied" or "refused: <why>"
    PRIMARY KEY (shop_id, order_id, refund_id)
);
