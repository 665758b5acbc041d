"""servicebay.examples."""
