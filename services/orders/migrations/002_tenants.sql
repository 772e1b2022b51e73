-- Shops are tenants (DESIGN.md): order ids, payment ids and cancel requests are unique within a shop only, so every
-- key of this schema starts with shop_id. Existing rows are carried over: child tables get the shop of their order.
--
-- Rows whose order is not (or no longer) in `orders` cannot learn their shop here: a stock outcome or a cancel request
-- for an order this database never stored (only possible after a rebuild that lost it, or for a cancel still held for
-- an order not yet placed) gets shop_id '' — not a valid shop id (contracts.Identifier needs one character), so such
-- a row is kept for the record but never matched to any shop's order.

-- orders: (shop_id, order_id)
ALTER TABLE order_history DROP CONSTRAINT IF EXISTS order_history_order_id_fkey;
ALTER TABLE orders DROP CONSTRAINT orders_pkey;
ALTER TABLE orders ADD PRIMARY KEY (shop_id, order_id);
-- the operator's look-up by order id alone (to find it in every shop, or to say which shops share it)
CREATE INDEX orders_by_order_id ON orders (order_id);

-- order_history: (shop_id, order_id, seq), referencing its order
ALTER TABLE order_history ADD COLUMN shop_id text;
UPDATE order_history h SET shop_id = o.shop_id FROM orders o WHERE o.order_id = h.order_id;  -- every row had its order
ALTER TABLE order_history ALTER COLUMN shop_id SET NOT NULL;
ALTER TABLE order_history DROP CONSTRAINT order_history_pkey;
ALTER TABLE order_history ADD PRIMARY KEY (shop_id, order_id, seq);
ALTER TABLE order_history ADD CONSTRAINT order_history_order_fkey
    FOREIGN KEY (shop_id, order_id) REFERENCES orders (shop_id, order_id);

-- payments: (shop_id, order_id, payment_id); shop_id was already stored with every payment
ALTER TABLE payments DROP CONSTRAINT payments_pkey;
ALTER TABLE payments ADD PRIMARY KEY (shop_id, order_id, payment_id);
CREATE INDEX payments_held ON payments (shop_id, order_id) WHERE outcome IS NULL;

-- stock_outcomes: (shop_id, order_id, kind)
ALTER TABLE stock_outcomes ADD COLUMN shop_id text;
UPDATE stock_outcomes s SET shop_id = o.shop_id FROM orders o WHERE o.order_id = s.order_id;
UPDATE stock_outcomes SET shop_id = '' WHERE shop_id IS NULL;
ALTER TABLE stock_outcomes ALTER COLUMN shop_id SET NOT NULL;
ALTER TABLE stock_outcomes DROP CONSTRAINT stock_outcomes_pkey;
ALTER TABLE stock_outcomes ADD PRIMARY KEY (shop_id, order_id, kind);

-- cancel_requests: (shop_id, event_id), found by (shop_id, order_id)
ALTER TABLE cancel_requests ADD COLUMN shop_id text;
UPDATE cancel_requests c SET shop_id = o.shop_id FROM orders o WHERE o.order_id = c.order_id;
UPDATE cancel_requests SET shop_id = '' WHERE shop_id IS NULL;
ALTER TABLE cancel_requests ALTER COLUMN shop_id SET NOT NULL;
ALTER TABLE cancel_requests DROP CONSTRAINT cancel_requests_pkey;
ALTER TABLE cancel_requests ADD PRIMARY KEY (shop_id, event_id);
DROP INDEX cancel_requests_by_order;
CREATE INDEX cancel_requests_by_order ON cancel_requests (shop_id, order_id);
