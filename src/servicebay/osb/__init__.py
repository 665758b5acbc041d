"""servicebay.osb."""
