-- Recovery reminders (issue 16): the shop's reminder delays and consent rule (shop.settings v1.1), the customer's
-- consent and how many reminders each checkout had, and the e-mails that unsubscribed from a shop's reminders.
ALTER TABLE shop_settings ADD COLUMN IF NOT EXISTS recovery_reminders_seconds integer[];
ALTER TABLE shop_settings ADD COLUMN IF NOT EXISTS recovery_requires_consent boolean NOT NULL DEFAULT false;

ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS marketing_consent boolean NOT NULL DEFAULT false;
-- Reminders decided (sent or stopped) so far; a checkout abandoned before reminders existed had its one.
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS reminders_sent integer NOT NULL DEFAULT 0;
ALTER TABLE checkouts ADD COLUMN IF NOT EXISTS reminders_stopped text;
UPDATE checkouts SET reminders_sent = 1 WHERE state = 'abandoned' AND reminders_sent = 0;

-- One row per (shop, e-mail) that asked for no more reminders; the e-mail as recovery.normalized_email writes it.
-- The first request is kept (a replayed or repeated one changes nothing).
CREATE TABLE IF NOT EXISTS unsubscribes (
    shop_id          text        NOT NULL,
    email            text        NOT NULL,
    via              text        NOT NULL CHECK (via IN ('one-click', 'form')),
    unsubscribed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shop_id, email)
);
