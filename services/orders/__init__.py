"""Orders: the order lifecycle, the back office and order.status."""
