-- Tables every service keeps in its own schema (search_path is the service's schema).

-- One row per input event a service has applied: the key that makes redelivery and replay harmless.
CREATE TABLE IF NOT EXISTS processed_events (
    event_id     uuid        PRIMARY KEY,
    topic        text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: events to emit are written in the same transaction as the state change,
-- then relayed to Kafka. A crash between the two re-sends a row, never loses one.
CREATE TABLE IF NOT EXISTS outbox (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    key          bytea       NOT NULL,
    value        bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
