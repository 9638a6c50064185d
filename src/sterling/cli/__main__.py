"""`python -m sterling.cli` runs the `sterling` command."""

from sterling.cli.app import main

main()
