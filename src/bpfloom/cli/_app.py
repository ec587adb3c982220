"""The ``bpfloom`` click group; each command module adds its commands to it."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpfloom")
def main() -> None:
    """bpfloom: run precompiled CO-RE eBPF objects and read their events from Python.

    Errors are one line on stderr. Exit status: 0 done (Ctrl-C and SIGTERM included),
    1 the run failed, 2 the command line is wrong.
    """
