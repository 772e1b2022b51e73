"""Contract v1.1's order details in the merchant's new-order mail (issue 17 item 2): built from order.status."""

from __future__ import annotations

import contracts as c
from services.notify import core
from services.notify.render import PAYMENT_LABELS, render
from tests.examples import example

SHIP_TO = c.Address(name="Léa Martin", line1="12 rue des Lilas", line2="Bâtiment B", postal_code="69003",
                    city="Lyon", country="FR", phone="+33 6 12 34 56 78")


def placed_status(**details: object) -> c.OrderStatusChanged:
    return example(c.OrderStatusChanged, status=c.OrderStatus.PENDING, payment_status=c.PaymentStatus.AWAITING,
                   previous_status=None, **details)


def new_order_mail(event: c.OrderStatusChanged) -> core.MailIntent:
    return next(m for m in core.mails_for_status(event) if m.kind == "new_order")


def test_the_merchant_mail_shows_the_address_as_a_label_and_the_delivery():
    event = placed_status(shipping_address=SHIP_TO,
                          shipping=c.ShippingChoice(method="Colissimo", carrier="La Poste", cost_cents=690),
                          discount_cents=500, tax_cents=417, note="Sonnez <b>deux</b> fois")
    mail = render("new_order", new_order_mail(event).context, "Boutique")
    label = "Léa Martin\n12 rue des Lilas\nBâtiment B\n69003 Lyon\nFR\nTel. +33 6 12 34 56 78"
    assert f"Ship to:\n{label}\n" in mail.text
    assert event.currency == "EUR"
    assert "Shipping: Colissimo (La Poste), €6.90" in mail.text  # the shop's locale: English by default
    assert "Discount: €5.00" in mail.text and "Tax: €4.17" in mail.text
    assert "Léa Martin<br>12 rue des Lilas<br>Bâtiment B<br>69003 Lyon<br>FR" in mail.html
    assert "Sonnez &lt;b&gt;deux&lt;/b&gt; fois" in mail.html  # the customer's text is escaped


def test_a_v1_order_mail_has_no_empty_address_block():
    mail = render("new_order", new_order_mail(placed_status()).context, "Boutique")
    assert "Ship to" not in mail.text and "Ship to" not in mail.html and "Shipping:" not in mail.text


def test_refund_payment_statuses_have_labels():
    for status in c.PaymentStatus:
        assert PAYMENT_LABELS[status.value]
