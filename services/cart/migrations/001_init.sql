-- The cart service's durable state (schema "cart"). Every write is guarded so redelivery and replay change nothing.

-- The durable copy of each cart: the newest snapshot (by occurred_at) wins; an older one never rolls it back.
CREATE TABLE IF NOT EXISTS carts (
    cart_id     text        PRIMARY KEY,
    shop_id     text        NOT NULL,
    customer    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    items       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    status      text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'ordered')),
    order_id    text,
    updated_at  timestamptz NOT NULL,          -- occurred_at of the event the row reflects
    written_at  timestamptz NOT NULL DEFAULT now()
);

-- Stock as last reported on inventory.levels (compacted, key shop_id/sku).
CREATE TABLE IF NOT EXISTS stock_levels (
    shop_id     text        NOT NULL,
    sku         text        NOT NULL,
    available   integer     NOT NULL CHECK (available >= 0),
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (shop_id, sku)
);

-- Each shop's own abandon_after (shop.settings, compacted); NULL means ABANDON_AFTER_SECONDS.
CREATE TABLE IF NOT EXISTS shop_settings (
    shop_id               text        PRIMARY KEY,
    abandon_after_seconds integer     CHECK (abandon_after_seconds > 0),
    updated_at            timestamptz NOT NULL
);

-- The watch on each cart's latest checkout. The scanner claims open rows past due_at and stages
-- checkout.abandoned in the same transaction: one per checkout across workers, restarts and replays.
CREATE TABLE IF NOT EXISTS checkouts (
    cart_id           text        PRIMARY KEY,
    shop_id           text        NOT NULL,
    state             text        NOT NULL CHECK (state IN ('open', 'ordered', 'paid', 'abandoned')),
    customer          jsonb       NOT NULL,
    items             jsonb       NOT NULL,
    started_event_id  uuid,
    started_at        timestamptz,
    due_at            timestamptz,
    order_id          text,
    order_at          timestamptz,
    abandoned_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS checkouts_due ON checkouts (due_at) WHERE state = 'open';
