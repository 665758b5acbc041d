"""servicebay.bindings."""
