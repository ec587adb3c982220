"""Ready tools built on the runtime: each is a library class plus a CLI command.

Every module here that defines ``cli`` (a click command) is a ``bpfloom`` subcommand.
The shared life cycle, output records and CLI run loop are in ``tool``.
"""

from __future__ import annotations

import importlib
import pkgutil

import click


def commands() -> list[click.Command]:
    """The CLI commands of every tool module, by module name."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in ("tool", "cgroups"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "cli", None)
        if isinstance(command, click.Command):
            found.append(command)
    return found
