-- Issue 16: the watch of an unpaid gateway order that was canceled or expired ends in state 'canceled' (never claimed,
-- so no further reminder), with why its order ended ('expired' or 'canceled'): the recovery link then offers the
-- order's items for a new cart instead of a payment the shop no longer accepts.
ALTER TABLE checkouts DROP CONSTRAINT IF EXISTS checkouts_state_check;
ALTER TABLE checkouts ADD CONSTRAINT checkouts_state_check
    CHECK (state IN ('open', 'ordered', 'paid', 'abandoned', 'canceled'));
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS order_closed text CHECK (order_closed IN ('expired', 'canceled'));
