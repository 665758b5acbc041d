"""servicebay.chat."""
