-- Contract v1.1 (DESIGN.md, "Contract v1.1"): what order.placed may now carry, stored as the storefront sent it.
-- Every column is nullable: a v1 order (and every order stored before this migration) has none of them.
ALTER TABLE orders
    ADD COLUMN shipping_address jsonb,   -- {name, line1, line2?, postal_code, city, region?, country, phone?}
    ADD COLUMN billing_address  jsonb,   -- the same shape
    ADD COLUMN shipping         jsonb,   -- {method, carrier?, cost_cents}
    ADD COLUMN discount_cents   bigint,
    ADD COLUMN tax_cents        bigint,
    ADD COLUMN note             text,    -- the customer's note, up to 2,000 characters
    ADD COLUMN locale           text;    -- the customer's language, BCP 47
