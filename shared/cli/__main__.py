"""``python -m shared.cli`` runs ``rlq``."""

from shared.cli import main

main()
