"""The platform HTTP API (``/api/v1``)."""
