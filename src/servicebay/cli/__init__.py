"""servicebay.cli."""
