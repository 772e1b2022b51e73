"""orderflow's event contracts (v1.1): the models of every topic, the topic catalogue, the codec and a producer."""

from contracts.base import Event, derived_event_id, new_event_id, now
from contracts.codec import ContractError, decode, decode_for, encode
from contracts.events import (
    COMMITTED_STATUSES,
    EXPIRED_REASON,
    VERSION,
    Address,
    CartCustomer,
    CartItem,
    CartUpdated,
    ChangedBy,
    CheckoutAbandoned,
    CheckoutStarted,
    Customer,
    CustomerMessageRequested,
    DeductionKind,
    DeductionLine,
    InventoryDeduction,
    InventoryLevel,
    MailState,
    MailStatusChanged,
    OrderCancelRequested,
    OrderFlag,
    OrderFlagged,
    OrderItem,
    OrderPlaced,
    OrderStatus,
    OrderStatusChanged,
    Payment,
    PaymentConfirmed,
    PaymentRefunded,
    PaymentStatus,
    ShippingChoice,
    ShopSettings,
    StockAdjusted,
)
from contracts.topics import ALL, BY_NAME, INPUTS, MAX_EVENT_BYTES, OUTPUTS, TopicSpec, spec_for

__all__ = [
    "COMMITTED_STATUSES", "EXPIRED_REASON", "OrderFlag", "OrderFlagged",
    "ALL", "BY_NAME", "INPUTS", "MAX_EVENT_BYTES", "OUTPUTS", "VERSION", "Address", "CartCustomer", "CartItem",
    "CartUpdated", "ChangedBy", "CheckoutAbandoned", "CheckoutStarted", "ContractError", "Customer",
    "CustomerMessageRequested", "DeductionKind", "DeductionLine", "Event", "InventoryDeduction", "InventoryLevel",
    "MailState", "MailStatusChanged", "OrderCancelRequested", "OrderItem", "OrderPlaced", "OrderStatus",
    "OrderStatusChanged", "Payment",
    "PaymentConfirmed", "PaymentRefunded", "PaymentStatus", "ShippingChoice", "ShopSettings", "StockAdjusted",
    "TopicSpec", "decode", "decode_for", "derived_event_id", "encode", "new_event_id", "now", "spec_for",
]
