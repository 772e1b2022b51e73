-- orders: the back office's read model of mail.status (notify's word on each e-mail): the newest state of every
-- mail of the shop, shown on its order's page and in the mail view. Newest changed_at wins, so a redelivery or a
-- replay of an older state changes nothing.
CREATE TABLE IF NOT EXISTS mail_states (
    shop_id     text        NOT NULL,
    subject     text        NOT NULL CHECK (subject IN ('order', 'cart')),
    subject_id  text        NOT NULL,
    kind        text        NOT NULL,
    audience    text        NOT NULL,
    state       text        NOT NULL,
    attempts    integer     NOT NULL,
    reply       text,
    message_id  text        NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (shop_id, subject, subject_id, kind)
);
CREATE INDEX IF NOT EXISTS mail_states_by_shop ON mail_states (shop_id, changed_at DESC);
