-- A due checkout whose checkout.abandoned cannot be built (e.g. data an older release stored) is parked with the
-- reason instead of stopping the abandon scanner for every other checkout (runtime v2, "no head-of-line poison").
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS parked_reason text;
