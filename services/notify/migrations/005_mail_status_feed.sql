-- notify: the feed of mail states the back office shows (topic mail.status, DESIGN.md deviation in the README).
--
-- A sender's update that changes what a merchant should see of a mail (sent, failed, a first or different transient
-- error, re-queued by an operator) sets status_changed_at and status_unpublished in the same statement; the status
-- feed (services/notify/status_feed.py) takes unpublished rows in batches and stages one mail.status event per row
-- in the transaction that clears the flag, so every change is published once, however many senders and workers run.
ALTER TABLE mails ADD COLUMN IF NOT EXISTS status_changed_at timestamptz;
ALTER TABLE mails ADD COLUMN IF NOT EXISTS status_unpublished boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS mails_status_unpublished ON mails (status_changed_at) WHERE status_unpublished;
