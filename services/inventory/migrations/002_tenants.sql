-- Shops are tenants (DESIGN.md): order ids are unique within a shop only, so the per-order state and the ledger are
-- keyed by (shop_id, order_id). Both tables already stored the shop of every row: only the keys change.
ALTER TABLE order_stock DROP CONSTRAINT order_stock_pkey;
ALTER TABLE order_stock ADD PRIMARY KEY (shop_id, order_id);

ALTER TABLE stock_moves DROP CONSTRAINT stock_moves_pkey;
ALTER TABLE stock_moves ADD PRIMARY KEY (shop_id, order_id, kind, sku);
