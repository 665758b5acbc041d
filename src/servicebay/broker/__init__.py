"""servicebay.broker."""
