-- notify: the shops' mail settings and the mail outbox (one row per (ref, kind), sent once).

CREATE TABLE IF NOT EXISTS shops (
    shop_id        text        PRIMARY KEY,
    name           text        NOT NULL,
    merchant_email text        NOT NULL,
    updated_at     timestamptz NOT NULL
);

-- ref is "<shop_id>/<order_id or cart_id>"; kind is new_order, confirmation, processed, delivered, canceled,
-- shortfall, recovery or message:<message_id>. subject/text/html are rendered once, on the first send
-- attempt (a merchant mail waits here until its shop's settings are known), so a re-send is identical.
CREATE TABLE IF NOT EXISTS mails (
    ref             text        NOT NULL,
    kind            text        NOT NULL,
    shop_id         text        NOT NULL,
    audience        text        NOT NULL CHECK (audience IN ('merchant', 'customer')),
    template        text        NOT NULL,
    context         jsonb       NOT NULL,
    to_addr         text,
    subject         text,
    text            text,
    html            text,
    message_id      text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    PRIMARY KEY (ref, kind)
);
CREATE INDEX IF NOT EXISTS mails_due ON mails (created_at DESC) WHERE state IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS mails_unrendered_by_shop ON mails (shop_id) WHERE state = 'pending' AND html IS NULL;
