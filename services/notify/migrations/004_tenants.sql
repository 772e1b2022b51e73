-- Shops are tenants (DESIGN.md). notify was keyed by shop from the start: a mail's ref is "<shop_id>/<order or cart
-- id>" (services/notify/core.py, order_ref), so (ref, kind) — the primary key — and the Message-ID (a hash of ref and
-- kind) already name the shop, and two shops' order 1001 are two mails. No key changes here; this migration makes
-- the database hold that rule: a row's ref must belong to its own shop_id. Every row written so far was built that
-- way, so existing data passes the check as it is.
ALTER TABLE mails ADD CONSTRAINT mails_ref_in_shop CHECK (starts_with(ref, shop_id || '/'));
