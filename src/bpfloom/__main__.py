"""``python -m bpfloom`` runs the command line."""

from .cli import entry

entry()
