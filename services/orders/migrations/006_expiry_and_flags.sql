-- Expiry and flags (DESIGN.md, "Order and payment rules"; issue 17 items 4 and 5).
--
-- shops.expire_unpaid_after_seconds: shop.settings' v1.1 field; an incomplete (unpaid gateway) order older than this
-- is canceled with reason "expired" by the expiry sweep. Null for shops stored before: the contract's default (7 days)
-- applies.
ALTER TABLE shops ADD COLUMN expire_unpaid_after_seconds integer;

-- orders.flags: every flag the order ever raised (payment_mismatch, payment_after_cancel, refund_due), each once; raising
-- one stages its order.flagged event (one alert mail per order and flag). payment_mismatch keeps its own column too.
ALTER TABLE orders ADD COLUMN flags text[] NOT NULL DEFAULT '{}';
UPDATE orders SET flags = ARRAY['payment_mismatch'] WHERE payment_mismatch;
CREATE INDEX orders_by_flags ON orders USING gin (flags);
-- the expiry sweep: incomplete orders, oldest first
CREATE INDEX orders_incomplete_by_age ON orders (placed_at) WHERE status = 'incomplete';
