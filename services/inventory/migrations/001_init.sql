-- Inventory: levels per (shop, SKU), the per-order state and the ledger that makes deduction exactly-once.

-- A row exists once stock.adjusted created the SKU; an order line for a SKU with no row is rejected.
-- version grows by one per batch that changes the row: it names each published inventory.levels event.
CREATE TABLE IF NOT EXISTS stock (
    shop_id    text        NOT NULL,
    sku        text        NOT NULL,
    available  bigint      NOT NULL CHECK (available >= 0),
    version    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, sku)
);

-- One row per order whose stock was deducted (then maybe returned) or that was closed by a cancel before any
-- deduction. States only move forward, so a duplicate or replayed order.status event finds its work done.
CREATE TABLE IF NOT EXISTS order_stock (
    order_id   text        PRIMARY KEY,
    shop_id    text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('open', 'deducted', 'returned', 'closed')),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The ledger: at most one deduction and one return per order line, written with the level change.
CREATE TABLE IF NOT EXISTS stock_moves (
    order_id   text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('deducted', 'returned')),
    shop_id    text        NOT NULL,
    sku        text        NOT NULL,
    asked      integer     NOT NULL CHECK (asked >= 0),
    moved      integer     NOT NULL CHECK (moved >= 0 AND moved <= asked),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind, sku)
);
