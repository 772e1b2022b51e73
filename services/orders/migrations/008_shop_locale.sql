-- orders: each shop's language (shop.settings `locale`, contract v1.1; BCP 47, default `en`): the back office shows
-- a shop's pages in it (services/orders/web/pages.py), with amounts and dates written the locale's way.
ALTER TABLE shops ADD COLUMN IF NOT EXISTS locale text NOT NULL DEFAULT 'en';
