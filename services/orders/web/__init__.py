"""The merchant's back-office web pages, served by the orders service under /backoffice."""

from services.orders.web.pages import add_routes

__all__ = ["add_routes"]
