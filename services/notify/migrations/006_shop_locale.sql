-- notify: each shop's language (shop.settings `locale`, contract v1.1; BCP 47, default `en`). The shop's mails are
-- written in it, and so are its customers' mails unless the order names the customer's own `locale`.
ALTER TABLE shops ADD COLUMN IF NOT EXISTS locale text NOT NULL DEFAULT 'en';
