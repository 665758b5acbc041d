"""servicebay.client."""
