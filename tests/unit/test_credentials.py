"""Per-shop credentials, pure parts: token format, scrypt check, the throttle, and sessions that name who signed in."""

from __future__ import annotations

import pytest

from orderflow.auth.credentials import Throttle, hash_secret, new_token, parse, secret_matches
from services.orders.web.session import SessionKeys


def test_a_new_token_parses_back_and_only_its_secret_matches() -> None:
    credential_id, secret, token = new_token("merchant")
    parsed = parse(token)
    assert parsed is not None and (parsed.kind, parsed.credential_id, parsed.secret) == ("merchant", credential_id,
                                                                                        secret)
    assert token.startswith("ofm_") and new_token("storefront")[2].startswith("ofs_")
    stored = hash_secret(secret, b"0123456789abcdef")
    assert secret_matches(secret, b"0123456789abcdef", stored)
    assert not secret_matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"), b"0123456789abcdef", stored)
    assert not secret_matches(secret, b"fedcba9876543210", stored)


@pytest.mark.parametrize("token", [None, "", "test-token", "ofx_0123456789abcdef_" + "a" * 43,
                                   "ofm_0123456789ABCDEF_" + "a" * 43, "ofm_0123456789abcdef_" + "a" * 42])
def test_anything_else_is_not_a_credential(token: str | None) -> None:
    assert parse(token) is None


def test_throttle_allows_ten_tries_a_minute_per_address() -> None:
    throttle = Throttle(limit=10, per=60.0)
    for n in range(10):
        assert throttle.retry_after("10.0.0.1", now=100.0 + n) == 0
        throttle.record("10.0.0.1", now=100.0 + n)
    assert throttle.retry_after("10.0.0.1", now=110.0) == pytest.approx(50.0)
    assert throttle.retry_after("10.0.0.2", now=110.0) == 0, "another address has its own budget"
    assert throttle.retry_after("10.0.0.1", now=160.5) == 0, "the first try left the window"


def test_throttle_forgets_the_oldest_addresses_beyond_its_bound() -> None:
    throttle = Throttle(limit=1, per=60.0, max_addresses=2)
    for address in ("a", "b", "c"):
        throttle.record(address, now=0.0)
    assert throttle.retry_after("a", now=1.0) == 0 and throttle.retry_after("c", now=1.0) > 0


def test_a_session_names_who_signed_in_and_cannot_be_changed() -> None:
    keys = SessionKeys("operator-token")
    merchant = keys.open(keys.issue(now=1000.0, scope="merchant-0123456789abcdef"), now=1001.0)
    assert merchant is not None and merchant.credential_id == "0123456789abcdef"
    operator = keys.open(keys.issue(now=1000.0), now=1001.0)
    assert operator is not None and operator.credential_id is None and operator.scope == "operator"
    issued, nonce, _scope, signature = keys.issue(now=1000.0, scope="merchant-0123456789abcdef").split(".")
    assert keys.open(f"{issued}.{nonce}.operator.{signature}", now=1001.0) is None, "a merchant cannot become operator"
    assert SessionKeys("another-token").open(keys.issue(now=1000.0), now=1001.0) is None
    assert keys.open(f"{issued}.{nonce}.{signature}", now=1001.0) is None, "the old three-part cookie is over"
