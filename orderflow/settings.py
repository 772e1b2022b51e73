"""Configuration from the environment (12-factor), validated once at start.

A wrong value raises SettingsError with one line that names the variable; the worker prints it and exits 2.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


class SettingsError(ValueError):
    """One clear line about one bad setting."""


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range ({lo}..{hi})")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (true/false)")


def _bootstrap(raw: str) -> str:
    servers = [s.strip() for s in raw.split(",") if s.strip()]
    if not servers:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is empty")
    for server in servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"KAFKA_BOOTSTRAP_SERVERS has {server!r}: expected host:port[,host:port...]")
    return ",".join(servers)


def _database_url(raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in {"postgresql", "postgres"} or not parsed.path.strip("/"):
        raise SettingsError(f"DATABASE_URL={raw!r} must look like postgresql://user@host:port/dbname")
    return raw


def _http_url(name: str, raw: str) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise SettingsError(f"{name}={raw!r} must be an http(s) URL")
    return raw.rstrip("/")


_SMTP_TLS = ("starttls", "required", "implicit", "none")


def _smtp_host(raw: str) -> str:
    host = raw.strip()
    if not host or any(c.isspace() for c in host):
        raise SettingsError(f"SMTP_HOST={raw!r} must be the mail server's host name or address")
    return host


def _smtp_tls(env: Mapping[str, str]) -> str:
    raw = env.get("SMTP_TLS")
    if raw is None or raw == "":
        # SMTP_STARTTLS (before SMTP_TLS): true asked for STARTTLS; false no longer turns the upgrade off
        return "required" if _bool(env, "SMTP_STARTTLS", False) else "starttls"
    mode = raw.strip().lower()
    if mode not in _SMTP_TLS:
        raise SettingsError(f"SMTP_TLS={raw!r} must be one of {', '.join(_SMTP_TLS)}")
    if mode == "none" and env.get("SMTP_CA_FILE"):
        raise SettingsError("SMTP_CA_FILE is set but SMTP_TLS=none: no TLS would use it")
    return mode


def _smtp_ca_file(raw: str | None) -> str | None:
    if raw is not None and not Path(raw).is_file():
        raise SettingsError(f"SMTP_CA_FILE={raw!r} is not a readable file")
    return raw


def _mail_from(raw: str) -> str:
    from orderflow.mailaddr import AddressError, mailbox

    try:
        return str(mailbox(raw))
    except AddressError as exc:
        raise SettingsError(f"MAIL_FROM: {exc} (expected name@domain or Name <name@domain>)") from None


_SECURITY_PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
_SASL_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None

    def client_options(self) -> dict[str, object]:
        """aiokafka's keyword arguments for these settings: the workers' admin clients and every operator command
        (`orderflow topics`, `dlq`, `replay`, `lag`, `simulate`, ...) reach a SASL/TLS broker the same way."""
        options: dict[str, object] = {"security_protocol": self.protocol}
        if self.protocol in {"SSL", "SASL_SSL"}:
            options["ssl_context"] = ssl.create_default_context(cafile=self.ssl_cafile)
        if self.protocol.startswith("SASL"):
            options.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        return options


def kafka_security(env: Mapping[str, str] | None = None) -> KafkaSecurity:
    """KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE, checked; SettingsError names the bad one."""
    env = os.environ if env is None else env
    security = KafkaSecurity(
        protocol=env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),
        sasl_mechanism=env.get("KAFKA_SASL_MECHANISM") or None,
        sasl_username=env.get("KAFKA_SASL_USERNAME") or None,
        sasl_password=env.get("KAFKA_SASL_PASSWORD") or None,
        ssl_cafile=env.get("KAFKA_SSL_CAFILE") or None,
    )
    if security.protocol not in _SECURITY_PROTOCOLS:
        allowed = sorted(_SECURITY_PROTOCOLS)
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={security.protocol!r} is not one of {allowed}")
    if security.protocol.startswith("SASL"):
        if security.sasl_mechanism not in _SASL_MECHANISMS:
            raise SettingsError(f"KAFKA_SASL_MECHANISM must be one of {sorted(_SASL_MECHANISMS)} with SASL")
        if not (security.sasl_username and security.sasl_password):
            raise SettingsError("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with SASL")
    if security.ssl_cafile and not Path(security.ssl_cafile).is_file():
        raise SettingsError(f"KAFKA_SSL_CAFILE={security.ssl_cafile!r} is not a readable file")
    return security


@dataclass(frozen=True)
class Settings:
    service: str
    kafka_bootstrap_servers: str
    database_url: str
    http_port: int
    backoffice_token: str
    topic_partitions: int = 8
    topic_replication_factor: int = 1
    abandon_after_seconds: int = 3600
    public_store_url: str = "http://localhost:8000"
    public_cart_url: str = "http://localhost:8102"
    """Where customers reach the cart service's HTTP (recovery e-mails' unsubscribe links point there)."""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_tls: str = "starttls"
    """starttls (upgrade when offered; required once credentials are set), required, implicit (port 465), none."""
    smtp_ca_file: str | None = None
    smtp_timeout_seconds: float = 120.0
    mail_from: str = "orderflow@localhost"
    mail_retry_base_seconds: float = 1.0
    mail_retry_max_seconds: float = 600.0
    mail_lease_seconds: float = 30.0
    mail_connections: int = 4
    data_dir: Path = Path(".run/data")
    store: str = "rocksdb"
    app_id_prefix: str = "orderflow"
    abandon_scan_seconds: float = 1.0
    expire_scan_seconds: float = 10.0
    """How often each orders worker looks for unpaid gateway orders past their shop's expire_unpaid_after_seconds."""
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    log_level: str = "info"

    @property
    def app_id(self) -> str:
        return f"{self.app_id_prefix}-{self.service}"


def load_settings(service: str, port_env: str, default_port: int, env: Mapping[str, str] | None = None) -> Settings:
    """Read and check every setting the service uses. Raises SettingsError on the first bad one."""
    env = os.environ if env is None else env
    security = kafka_security(env)

    store = env.get("ORDERFLOW_STORE", "rocksdb")
    if store not in {"rocksdb", "memory"}:
        raise SettingsError(f"ORDERFLOW_STORE={store!r} must be rocksdb or memory")
    if bool(env.get("SMTP_USERNAME")) != bool(env.get("SMTP_PASSWORD")):
        raise SettingsError("SMTP_USERNAME and SMTP_PASSWORD go together: set both or neither")
    log_level = env.get("LOG_LEVEL", "info").lower()
    if log_level not in {"debug", "info", "warning", "error"}:
        raise SettingsError(f"LOG_LEVEL={log_level!r} must be debug, info, warning or error")

    return Settings(
        service=service,
        kafka_bootstrap_servers=_bootstrap(env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")),
        database_url=_database_url(env.get("DATABASE_URL", "postgresql://orderflow@127.0.0.1:5432/orderflow")),
        http_port=_int(env, port_env, default_port, 0, 65535),
        backoffice_token=env.get("BACKOFFICE_TOKEN") or secrets.token_urlsafe(24),
        topic_partitions=_int(env, "TOPIC_PARTITIONS", 8, 1, 1024),
        topic_replication_factor=_int(env, "TOPIC_REPLICATION_FACTOR", 1, 1, 16),
        abandon_after_seconds=_int(env, "ABANDON_AFTER_SECONDS", 3600, 1, 30 * 24 * 3600),
        public_store_url=_http_url("PUBLIC_STORE_URL", env.get("PUBLIC_STORE_URL", "http://localhost:8000")),
        public_cart_url=_http_url("PUBLIC_CART_URL", env.get("PUBLIC_CART_URL", "http://localhost:8102")),
        smtp_host=_smtp_host(env.get("SMTP_HOST", "127.0.0.1")),
        smtp_port=_int(env, "SMTP_PORT", 25, 1, 65535),
        smtp_username=env.get("SMTP_USERNAME") or None,
        smtp_password=env.get("SMTP_PASSWORD") or None,
        smtp_tls=_smtp_tls(env),
        smtp_ca_file=_smtp_ca_file(env.get("SMTP_CA_FILE") or None),
        smtp_timeout_seconds=float(_int(env, "SMTP_TIMEOUT_SECONDS", 120, 1, 3600)),
        mail_from=_mail_from(env.get("MAIL_FROM", "orderflow@localhost")),
        mail_retry_base_seconds=_int(env, "MAIL_RETRY_BASE_MS", 1000, 10, 3_600_000) / 1000.0,
        mail_retry_max_seconds=float(_int(env, "MAIL_RETRY_MAX_SECONDS", 600, 1, 86_400)),
        mail_lease_seconds=float(_int(env, "MAIL_LEASE_SECONDS", 30, 1, 3600)),
        mail_connections=_int(env, "MAIL_SMTP_CONNECTIONS", 4, 1, 32),
        data_dir=Path(env.get("ORDERFLOW_DATA_DIR", f".run/data/{service}")),
        store=store,
        app_id_prefix=env.get("ORDERFLOW_APP_ID_PREFIX", "orderflow"),
        abandon_scan_seconds=float(_int(env, "ABANDON_SCAN_MS", 1000, 50, 600_000)) / 1000.0,
        expire_scan_seconds=float(_int(env, "EXPIRE_SCAN_MS", 10_000, 50, 3_600_000)) / 1000.0,
        kafka_security=security,
        log_level=log_level,
    )
