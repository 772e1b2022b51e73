-- Per-shop credentials (schema "auth", shared by every service: orders checks merchant credentials, cart checks
-- storefront keys). A credential is `of<kind>_<credential_id>_<secret>`; only the id is stored in clear, the secret
-- as an scrypt hash with its own salt, so a copy of this table opens nothing. Revoking sets revoked_at: every request
-- reads it, so a revoked credential is refused at once by every worker.
CREATE TABLE IF NOT EXISTS credentials (
    credential_id text        PRIMARY KEY,
    shop_id       text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('merchant', 'storefront')),
    label         text,
    salt          bytea       NOT NULL,
    hash          bytea       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);
CREATE INDEX IF NOT EXISTS credentials_by_shop ON credentials (shop_id, created_at);
