"""servicebay.platform."""
