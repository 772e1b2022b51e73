"""Mails in the shop's (or the customer's) language: gettext catalogs and money per currency and locale (issue 17)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from babel import Locale

import contracts as c
from orderflow import i18n
from services.notify import core
from services.notify.render import SUBJECTS, render
from tests.examples import example

FR = Locale.parse("fr_FR")
EUR_12_50 = "12,50\u00a0€"  # CLDR writes a no-break space between the amount and the sign in French


def test_every_text_of_the_sources_has_a_french_translation() -> None:
    """A `_()` or `N_()` text added without its translation fails here (`python -m orderflow.i18n` lists them)."""
    messages = i18n.extract()
    assert len(messages) > 40  # the extraction found the templates and the subjects
    assert i18n.untranslated("fr", messages) == []


def test_the_french_catalog_keeps_each_placeholder() -> None:
    """A translation that dropped or renamed a %(name)s would fail at render time; Babel's checkers say which."""
    errors = [(message.id, [str(e) for e in errs]) for message, errs in i18n.load("fr").check()]
    assert errors == []


@pytest.mark.parametrize(
    ("cents", "currency", "locale", "written"),
    [
        (1200, "JPY", "en", "¥1,200"),
        (1250, "EUR", "fr", EUR_12_50),
        (1250, "EUR", "en", "€12.50"),
        (123456, "EUR", "fr_FR", "1\u202f234,56\u00a0€"),
        (1200, "JPY", "fr", "1\u202f200\u00a0JPY"),
        (5, "USD", "en_US", "$0.05"),
    ],
)
def test_money_is_written_per_currency_and_locale(cents: int, currency: str, locale: str, written: str) -> None:
    assert i18n.format_money(cents, currency, locale) == written


def test_a_moment_is_written_the_locale_s_way_in_utc() -> None:
    moment = datetime(2026, 12, 1, 18, 5, tzinfo=UTC)
    assert i18n.format_when(moment, "en") == "Dec 1, 2026, 18:05 UTC"
    assert i18n.format_when(moment, "fr") == "1 déc. 2026, 18:05 UTC"
    assert i18n.format_when(None, "fr") == ""


def test_the_first_tag_with_a_catalog_is_chosen_else_english() -> None:
    assert str(i18n.choose("fr-FR")) == "fr_FR"
    assert str(i18n.choose("de-DE", "fr")) == "fr"  # German has no catalog: the shop's French
    assert str(i18n.choose(None, "fr-CA")) == "fr_CA"
    assert str(i18n.choose(None, "zz-bogus", "de")) == "en"


def test_a_customer_reads_the_order_s_locale_and_the_merchant_the_shop_s() -> None:
    assert str(core.mail_locale("customer", "fr-BE", "en")) == "fr_BE"
    assert str(core.mail_locale("customer", None, "fr")) == "fr"
    assert str(core.mail_locale("merchant", "fr-BE", "en")) == "en"
    assert str(core.mail_locale("merchant", None, "fr-FR")) == "fr_FR"


def _status(status: c.OrderStatus, previous: c.OrderStatus | None, **fields: object) -> c.OrderStatusChanged:
    items = [c.OrderItem(sku="MUG-1", name="Tasse", quantity=1, unit_price_cents=1250)]
    base: dict[str, object] = {
        "status": status,
        "previous_status": previous,
        "items": items,
        "total_cents": 1250,
        "currency": "EUR",
        "customer": c.Customer(email="lea@example.fr", name="Léa"),
    }
    return example(c.OrderStatusChanged, **{**base, **fields})


def french_mails() -> dict[str, tuple[dict, list[str]]]:
    """Each mail kind's context, decided from an event by notify's core, and texts its French rendering shows."""
    placed = core.mails_for_status(_status(c.OrderStatus.PENDING, None, reason=None))
    by_kind = {m.kind: m.context for m in placed}
    for status, previous in (
        (c.OrderStatus.PROCESSED, c.OrderStatus.PENDING),
        (c.OrderStatus.DELIVERED, c.OrderStatus.PROCESSED),
        (c.OrderStatus.CANCELED, c.OrderStatus.PENDING),
    ):
        [mail] = core.mails_for_status(_status(status, previous, reason="rupture"))
        by_kind[mail.kind] = mail.context
    [shortfall] = core.mails_for_deduction(example(c.InventoryDeduction))
    [recovery] = core.mails_for_abandoned(example(c.CheckoutAbandoned))
    [message] = core.mails_for_message(example(c.CustomerMessageRequested))
    return {
        "new_order": (by_kind["new_order"], ["nouvelle commande", "Statut du paiement", f"Total : {EUR_12_50}"]),
        "confirmation": (by_kind["confirmation"], ["Bonjour Léa", "Merci pour votre commande", EUR_12_50, "Payé"]),
        "processed": (by_kind["processed"], ["remise au transporteur"]),
        "delivered": (by_kind["delivered"], ["a été livrée"]),
        "canceled": (by_kind["canceled"], ["a été annulée", "Motif : rupture"]),
        "shortfall": (shortfall.context, ["Articles manquants", "demandé 2, déduit 1, manquant 1"]),
        "recovery": (recovery.context, ["Vous avez laissé ces articles", "Reprendre votre commande"]),
        "message": (message.context, ["Un message de Boutique"]),
    }


@pytest.mark.parametrize("template", sorted(french_mails()))
def test_each_mail_kind_is_written_in_french_for_a_french_shop(template: str) -> None:
    context, shown = french_mails()[template]
    mail = render(template, context, "Boutique", FR)
    for text in shown:
        assert text in mail.text, (template, text, mail.text)
    assert '<html lang="fr">' in mail.html and "Envoyé par Boutique." in mail.html
    assert mail.subject.startswith("Boutique : ")
    for english in ("Hello", "Thank you", "Payment status", "Sent by", "Total:"):
        assert english not in mail.text + mail.html, (template, english)


def test_the_same_mail_for_an_english_shop_stays_english() -> None:
    context, _ = french_mails()["confirmation"]
    mail = render("confirmation", {**context, "locale": None}, "Mugs", Locale.parse("en"))
    assert "Hello Léa," in mail.text and "Total: €12.50" in mail.text and "Payment status: Paid" in mail.text


def test_a_yen_order_shows_no_decimals_in_either_language() -> None:
    event = _status(
        c.OrderStatus.PENDING,
        None,
        currency="JPY",
        total_cents=1200,
        items=[c.OrderItem(sku="CHA", name="Thé", quantity=1, unit_price_cents=1200)],
    )
    context = next(m.context for m in core.mails_for_status(event) if m.kind == "confirmation")
    english = render("confirmation", context, "Ochaya", Locale.parse("en"))
    assert "Total: ¥1,200" in english.text and "12.00" not in english.text
    french = render("confirmation", context, "Ochaya", FR)
    assert "Total : 1\u202f200\u00a0JPY" in french.text and ",00" not in french.text


def test_a_mail_stored_before_the_locale_change_renders_as_stored() -> None:
    """Rows written by the previous version hold amounts already written out and a payment label."""
    old = {
        "order_id": "o-1",
        "customer_name": "Ada",
        "customer_email": "ada@example.com",
        "reason": "",
        "items": [{"sku": "M", "name": "Mug", "quantity": 2, "unit_price": "12.50 EUR", "line_total": "25.00 EUR"}],
        "total": "25.00 EUR",
        "payment_status": "Paid",
        "payment_method": "gateway",
        "payment_provider": "paypal",
    }
    mail = render("confirmation", old, "Mugs", FR)
    assert "Total : 25.00 EUR" in mail.text and "Statut du paiement : Payé" in mail.text


def test_every_subject_has_a_french_translation() -> None:
    french = i18n.translations("fr")
    for template, subject in SUBJECTS.items():
        assert french.gettext(subject) != subject, template


def test_the_back_office_writes_money_dates_and_texts_in_the_shop_s_language() -> None:
    from services.orders.web.pages import _environment

    french = _environment("fr")
    moment = datetime(2026, 12, 1, 18, 5, tzinfo=UTC)
    line = french.from_string("{{ 1250 | money('EUR') }} · {{ 1200 | money('JPY') }} · {{ at | when }}")
    assert line.render(locale=FR, at=moment) == "12,50\u00a0€ · 1\u202f200\u00a0JPY · 1 déc. 2026, 18:05 UTC"
    english = _environment("en").from_string("{{ 1250 | money('EUR') }} · {{ 1200 | money('JPY') }}")
    assert english.render(locale=Locale.parse("en")) == "€12.50 · ¥1,200"
    page = french.get_template("login.html").render(
        session=None, section="login", merchant_shop=None, locale=FR, language="fr", error=None, prefix="/backoffice"
    )
    assert '<html lang="fr">' in page and "<h1>Se connecter</h1>" in page and "Sign in" not in page


def test_money_is_written_alike_from_the_first_call_to_the_remembered_ones() -> None:
    first = [i18n.format_money(c, cur, loc) for c, cur, loc in ((1250, "EUR", "fr"), (1200, "JPY", Locale.parse("en")))]
    again = [i18n.format_money(c, cur, loc) for c, cur, loc in ((1250, "EUR", "fr"), (1200, "JPY", Locale.parse("en")))]
    assert first == again == ["12,50\xa0€", "¥1,200"]
