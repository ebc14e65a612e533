"""``python -m infratool`` runs the CLI."""

from infratool.cli import main

main()
