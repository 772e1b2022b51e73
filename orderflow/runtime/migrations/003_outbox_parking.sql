-- Outbox rows the relay can never publish (too large for their topic, topic missing, writing to it denied) are
-- parked with the reason instead of blocking every row behind them. `orderflow outbox list SERVICE` shows them,
-- `orderflow outbox retry SERVICE [ID ...]` clears the mark after a fix so the relay tries them again.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS parked_at timestamptz;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS parked_reason text;

-- What the relay reads: rows neither published nor parked, in id order. Replaces outbox_unpublished (one partial
-- index on the insert path, not two).
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;
DROP INDEX IF EXISTS outbox_unpublished;

-- Counted for the orderflow_outbox_parked gauge and listed by the operator command: a handful of rows at most.
CREATE INDEX IF NOT EXISTS outbox_parked ON outbox (id) WHERE parked_at IS NOT NULL AND published_at IS NULL;
