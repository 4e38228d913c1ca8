"""``python -m dlmbench`` (also what ``torchrun -m dlmbench`` runs)."""

from dlmbench.cli import main

main()
