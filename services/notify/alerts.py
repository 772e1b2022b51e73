"""The merchant's alert mails for order flags (topic `order.flagged`): one per (order, flag), keyed
`alert_<flag>`, the way an inventory shortfall is one `shortfall` mail per order.

Pure: the orders service raises each flag once per order (its order.flagged event id is derived from shop, order and
flag), and the mail key (ref, `alert_<flag>`) makes a duplicate, a replay or a restart insert nothing again. The
template (`alert`) says what each flag means, in the shop's language; amounts stay minor units with the currency,
written at render time (`render.localized`: `total`, and `refund` for the refund due).
"""

from __future__ import annotations

from typing import Any

from contracts import OrderFlag, OrderFlagged
from services.notify.core import MailIntent, order_ref

TEMPLATE = "alert"


def kind_for(flag: OrderFlag) -> str:
    return f"alert_{flag.value}"


def mails_for_flag(e: OrderFlagged) -> list[MailIntent]:
    """One alert to the merchant (the shop's merchant address) per (order, flag)."""
    ctx: dict[str, Any] = {
        "order_id": e.order_id,
        "flag": e.flag.value,
        "detail": e.detail or "",
        "customer_name": e.customer.name or "",
        "customer_email": e.customer.email,
        "currency": e.currency,
        "total_cents": e.total_cents,
    }
    if e.refund_due_cents:
        ctx["refund_cents"] = e.refund_due_cents
    ref = order_ref(e.shop_id, e.order_id)
    return [MailIntent(ref, kind_for(e.flag), e.shop_id, "merchant", TEMPLATE, None, ctx)]
