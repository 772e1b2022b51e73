-- notify: fencing of the mail outbox, and failed mails an operator can find and re-queue.
--
-- claim_token: set anew at every claim (pending → sending); every later update of the row by that sender (rendering,
-- sent, retry, failed, release, lease extension) matches it, so a sender whose lease ran out can no longer change a
-- row another sender has claimed since. NULL when nobody holds the row.
-- failed_at: when the row became 'failed' (a 5xx naming the recipient or the content, or an address the mailer
-- cannot use); last_error then holds the server's reply. `orderflow mail retry` puts it back to 'pending', same
-- Message-ID, and counts it in requeued.
ALTER TABLE mails ADD COLUMN IF NOT EXISTS claim_token uuid;
ALTER TABLE mails ADD COLUMN IF NOT EXISTS failed_at timestamptz;
ALTER TABLE mails ADD COLUMN IF NOT EXISTS requeued integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS mails_failed_by_shop ON mails (shop_id, created_at DESC) WHERE state = 'failed';
CREATE INDEX IF NOT EXISTS mails_by_shop ON mails (shop_id, created_at DESC);
