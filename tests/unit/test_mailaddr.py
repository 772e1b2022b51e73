"""The one address parser, and the agreement it buys: what the contract, the settings and the renderer accept."""

from __future__ import annotations

from email import message_from_bytes
from email.headerregistry import Address
from email.policy import default

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import contracts as c
from orderflow.mailaddr import _PLAIN, AddressError, addr_spec, mailbox
from orderflow.settings import SettingsError, load_settings
from services.notify import render

GOOD = ["a@b.co", "a+tag@b.co", "O'Neil@b.co", "first.last@sub.example.com", "-@_.example", "x@localhost"]
BAD = ["owner:shop@x.com", "Ada <a@b.co>", "a@b.co, c@d.co", "a..b@x.com", '"john doe"@x.com', "a@[1.2.3.4]",
       "josé@example.com", "a@b@c.co", "a(c)@b.co", "a @b.co", "", "a@b.co\r\nBcc: x@y", "@b.co", "a@", "a@.b.co",
       "a@b.co;c@d.co", "no-at-sign", "a" * 65 + "@b.co", "a@" + "b" * 250 + ".co"]


@pytest.mark.parametrize("value", GOOD)
def test_plain_addresses_are_accepted_unchanged(value: str) -> None:
    assert addr_spec(value).addr_spec == value


@pytest.mark.parametrize("value", BAD)
def test_anything_but_one_plain_address_is_refused(value: str) -> None:
    with pytest.raises(AddressError):
        addr_spec(value)


def test_an_internationalised_domain_is_sent_in_its_idna_form() -> None:
    assert addr_spec("a@exämple.com").addr_spec == "a@xn--exmple-cua.com"


def test_the_contract_also_wants_a_dot_in_the_domain() -> None:
    assert addr_spec("x@localhost").domain == "localhost"
    with pytest.raises(AddressError, match="no dot"):
        addr_spec("x@localhost", require_dot=True)


_ATEXT = "abcXYZ019!#$%&'*+-/=?^_`{|}~"


@given(st.lists(st.text(_ATEXT, min_size=1, max_size=8), min_size=1, max_size=3),
       st.lists(st.text(_ATEXT, min_size=1, max_size=8), min_size=1, max_size=3))
def test_the_fast_path_agrees_with_the_standard_library_parser(local: list[str], domain: list[str]) -> None:
    value = f"{'.'.join(local)}@{'.'.join(domain)}"
    assert _PLAIN.fullmatch(value)
    parsed = Address(addr_spec=value)  # the full parser, which the fast path skips
    assert parsed.addr_spec == value
    assert (parsed.username, parsed.domain) == (addr_spec(value).username, addr_spec(value).domain)


@pytest.mark.parametrize(("value", "name", "address"), [
    ("Shop <orders@shop.example>", "Shop", "orders@shop.example"),
    ("orders@shop.example", "", "orders@shop.example"),
    ('"Chez, Ada" <a@b.co>', "Chez, Ada", "a@b.co"),
    ("<a@b.co>", "", "a@b.co"),
])
def test_a_sender_may_have_a_display_name(value: str, name: str, address: str) -> None:
    parsed = mailbox(value)
    assert (parsed.display_name, parsed.addr_spec) == (name, address)


@pytest.mark.parametrize("value", ["Shop <orders@shop.example", "a@b.co, c@d.co", "Shop", "g: a@b.co;",
                                   "Shop <owner:x@b.co>", "", "Shop\r\nBcc: x@y.z <a@b.co>"])
def test_a_sender_is_exactly_one_address(value: str) -> None:
    with pytest.raises(AddressError):
        mailbox(value)


# --- the agreement ---------------------------------------------------------------------------------------------

def _shop(email: str) -> c.ShopSettings:
    return c.ShopSettings(event_id=c.new_event_id(), occurred_at=c.now(), shop_id="s", name="S",
                          merchant_email=email)


@pytest.mark.parametrize("value", BAD + ["x@localhost"])
def test_the_contract_refuses_what_the_renderer_would_refuse(value: str) -> None:
    with pytest.raises(ValidationError, match="merchant_email"):
        _shop(value)


@pytest.mark.parametrize("value", [g for g in GOOD if g != "x@localhost"])
def test_what_the_contract_accepts_the_renderer_sends_to(value: str) -> None:
    shop = _shop(value)
    out = render.render("processed", {"order_id": "o", "customer_name": "A", "items": [], "total": "1.00 EUR",
                                      "payment_status": "Paid", "payment_method": "manual",
                                      "payment_provider": "x", "reason": ""}, "S")
    msg = render.build_message(out, to_addr=shop.merchant_email, from_addr="Shop <orders@shop.example>",
                               from_name="S", message_id="<m@orderflow>")
    assert message_from_bytes(msg.as_bytes(), policy=default)["To"].addresses[0].addr_spec == value


def _settings(**env: str):
    return load_settings("notify", "NOTIFY_HTTP_PORT", 8104, env)


def test_mail_from_with_a_display_name_is_a_valid_setting() -> None:
    assert _settings(MAIL_FROM="Shop <orders@shop.example>").mail_from == "Shop <orders@shop.example>"
    assert _settings().mail_from == "orderflow@localhost"


@pytest.mark.parametrize(("env", "names"), [
    ({"MAIL_FROM": "owner:shop@x.com"}, "MAIL_FROM"),
    ({"MAIL_FROM": "a@b.co, c@d.co"}, "MAIL_FROM"),
    ({"SMTP_HOST": ""}, "SMTP_HOST"),
    ({"SMTP_HOST": "  "}, "SMTP_HOST"),
    ({"SMTP_TLS": "maybe"}, "SMTP_TLS"),
    ({"SMTP_CA_FILE": "/nonexistent/ca.pem"}, "SMTP_CA_FILE"),
    ({"SMTP_USERNAME": "u"}, "SMTP_PASSWORD"),
    ({"MAIL_RETRY_MAX_SECONDS": "0"}, "MAIL_RETRY_MAX_SECONDS"),
])
def test_a_bad_mail_setting_is_one_line_naming_it(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names) as info:
        _settings(**env)
    assert "\n" not in str(info.value)


def test_tls_modes() -> None:
    assert _settings().smtp_tls == "starttls"
    assert _settings(SMTP_TLS="IMPLICIT").smtp_tls == "implicit"
    assert _settings(SMTP_STARTTLS="true").smtp_tls == "required"  # the older setting asked for STARTTLS
    assert _settings(SMTP_STARTTLS="false").smtp_tls == "starttls"  # and no longer turns the upgrade off
    assert _settings(SMTP_TLS="none", SMTP_USERNAME="u", SMTP_PASSWORD="p").smtp_tls == "none"


def test_put_shops_refuses_an_address_the_mailer_cannot_send_to() -> None:
    """The back office's body model uses the contract's Email type: read_json answers 400 naming the field."""
    from services.orders.api import ShopBody

    with pytest.raises(ValidationError, match="merchant_email"):
        ShopBody.model_validate({"name": "Shop", "merchant_email": "owner:shop@x.com"})
    assert ShopBody.model_validate({"name": "Shop", "merchant_email": "owner@x.com"}).merchant_email == "owner@x.com"
