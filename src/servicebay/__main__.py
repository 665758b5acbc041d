"""`python -m servicebay` is `bay`."""

from servicebay.cli.main import main

main()
