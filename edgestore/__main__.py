"""`python -m edgestore` runs the CLI."""

from edgestore.cli.main import main

main()
