"""servicebay.brokers."""
