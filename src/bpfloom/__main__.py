"""``python -m bpfloom`` and the ``bpfloom`` console script.

``entry`` imports the command line itself, so that a Ctrl-C while Python is still
importing it (numpy, pyelftools, the tools) ends the program quietly with status 130
instead of a traceback; from then on the CLI handles signals (``bpfloom.cli.entry``).
"""

from __future__ import annotations

import sys


def entry() -> None:
    try:
        from .cli import entry as cli_entry
    except KeyboardInterrupt:
        sys.exit(130)
    cli_entry()


if __name__ == "__main__":
    entry()
