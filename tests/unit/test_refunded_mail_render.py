"""The customer's "refunded" mail (issue 17 item 3): one per refund_id, carried by the refund's order.status."""

from __future__ import annotations

from babel import Locale

import contracts as c
from services.notify import core as notify
from services.notify.render import render
from services.orders import core as orders
from tests.examples import example

PAID = orders.OrderState(c.OrderStatus.PENDING, c.PaymentStatus.PAID)


def test_an_accepted_refund_s_change_names_its_refund_and_amount() -> None:
    decided = orders.refund(PAID, 4500, "EUR", 0, 1250, "EUR", c.ChangedBy.SYSTEM, "re_1")
    [change] = decided.decision.changes
    assert (change.refund_id, change.refund_cents) == ("re_1", 1250)
    assert change.after.payment_status == c.PaymentStatus.PARTIALLY_REFUNDED


def test_a_refused_refund_changes_nothing_so_mails_nothing() -> None:
    decided = orders.refund(PAID, 4500, "EUR", 4000, 1250, "EUR", c.ChangedBy.MERCHANT, "re_2")
    assert decided.decision.changes == () and decided.decision.refused


def refund_status(
    refund_id: str,
    refund_cents: int,
    refunded_cents: int,
    payment: c.PaymentStatus = c.PaymentStatus.PARTIALLY_REFUNDED,
    **fields: object,
) -> c.OrderStatusChanged:
    return example(
        c.OrderStatusChanged,
        status=c.OrderStatus.PENDING,
        previous_status=c.OrderStatus.PENDING,
        payment_status=payment,
        previous_payment_status=c.PaymentStatus.PAID,
        changed_by="system",
        refund_id=refund_id,
        refund_cents=refund_cents,
        refunded_cents=refunded_cents,
        **fields,
    )


def test_each_refund_is_one_customer_mail_keyed_by_its_refund_id() -> None:
    partial = refund_status("re_1", 1250, 1250, order_id="1001", shop_id="shop-a")
    full = refund_status("re_2", 3250, 4500, c.PaymentStatus.REFUNDED, order_id="1001", shop_id="shop-a")
    [first] = notify.mails_for_status(partial)
    [second] = notify.mails_for_status(full)
    assert (first.kind, first.audience, first.template, first.to_addr) == (
        "refunded:re_1",
        "customer",
        "refunded",
        "ada@example.com",
    )
    assert first.ref == second.ref == "shop-a/1001" and second.kind == "refunded:re_2"
    assert notify.mails_for_status(partial) == [first]  # redelivered or replayed: the same key, inserted once


def test_a_status_change_without_a_refund_sends_no_refunded_mail() -> None:
    canceled = example(
        c.OrderStatusChanged,
        status=c.OrderStatus.CANCELED,
        previous_status=c.OrderStatus.PENDING,
        payment_status=c.PaymentStatus.PARTIALLY_REFUNDED,
        refunded_cents=1250,
    )
    assert [m.kind for m in notify.mails_for_status(canceled)] == ["canceled"]


def test_the_refunded_mail_in_french_and_in_english() -> None:
    event = refund_status("re_1", 1250, 1250, total_cents=4500, currency="EUR", locale="fr-FR")
    [mail] = notify.mails_for_status(event)
    french = render("refunded", mail.context, "Boutique", notify.mail_locale("customer", event.locale, "en"))
    assert "Nous vous avons remboursé 12,50\u00a0€ pour votre commande" in french.text
    assert "Remboursé à ce jour : 12,50\u00a0€ sur 45,00\u00a0€." in french.text
    assert french.subject == f"Boutique : un remboursement pour votre commande {event.order_id}"
    english = render("refunded", mail.context, "Mugs", Locale.parse("en"))
    assert f"We have refunded €12.50 for your order {event.order_id} at Mugs." in english.text
    assert "<strong>€12.50</strong>" in english.html
