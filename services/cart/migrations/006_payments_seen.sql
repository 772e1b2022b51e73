-- A gateway's payment.confirmed, as cart saw it: it stops the reminders of the checkout that led to the order even
-- while orders has not yet said paid (orders down or behind). Cart's inputs' horizon covers payment.confirmed, so a
-- payment made before a checkout's due time is here before that checkout can be claimed. Kept 60 days (a watch is
-- due at most 30 days after its order); `seen_at` orders the pruning.
CREATE TABLE IF NOT EXISTS payments_seen (
    shop_id  text        NOT NULL,
    order_id text        NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, order_id)
);
CREATE INDEX IF NOT EXISTS payments_seen_by_age ON payments_seen (seen_at);
