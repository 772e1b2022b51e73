-- The back office's view of stock: orders' own read model of the compacted inventory.levels topic (DESIGN.md:
-- services talk only through topics, so the Stock page reads this, never the inventory service's API or tables).
-- One row per (shop, SKU), the newest level by its updated_at; a replay of the topic writes the same rows again.
CREATE TABLE stock_levels (
    shop_id    text        NOT NULL,
    sku        text        NOT NULL,
    available  integer     NOT NULL,
    updated_at timestamptz NOT NULL,   -- the level's own time (inventory's), not when orders stored it
    PRIMARY KEY (shop_id, sku)
);
-- the Stock page lists a shop's SKUs out-of-stock first, then by SKU
CREATE INDEX stock_levels_shortest_first ON stock_levels (shop_id, (available > 0), sku);
