-- Consumer positions with the effects (runtime v2): per consumer group, topic and partition, the next offset to
-- read, written in the same transaction as the effects of every record before it. A worker drops records below
-- it and re-reads from it; the broker's committed offsets only follow it (for lag tooling).
CREATE TABLE IF NOT EXISTS consumer_positions (
    consumer    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Event-id dedupe is per topic: two topics may carry the same event id (a producer's choice), and only topics where a
-- producer may resend one fact at a new offset use it at all.
ALTER TABLE processed_events DROP CONSTRAINT IF EXISTS processed_events_pkey;
ALTER TABLE processed_events ADD PRIMARY KEY (topic, event_id);
