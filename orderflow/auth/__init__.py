"""Per-shop credentials shared by the services (schema "auth"); see `credentials.py`."""
