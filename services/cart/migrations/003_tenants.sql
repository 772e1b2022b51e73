-- Shops are tenants (DESIGN.md): cart ids are unique within a shop only, so carts and checkout watches are keyed by
-- (shop_id, cart_id). Both tables already stored the shop of every row: only the keys change. (The advisory lock of a
-- checkout watch names the shop too: services/cart/repository.py, lock_checkouts.)
ALTER TABLE carts DROP CONSTRAINT carts_pkey;
ALTER TABLE carts ADD PRIMARY KEY (shop_id, cart_id);

ALTER TABLE checkouts DROP CONSTRAINT checkouts_pkey;
ALTER TABLE checkouts ADD PRIMARY KEY (shop_id, cart_id);
