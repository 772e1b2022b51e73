"""Inventory service: stock per shop and SKU, deducted once per order."""
