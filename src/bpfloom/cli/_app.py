"""The ``bpfloom`` click group; each command module adds its commands to it.

Command modules are imported when one of their commands is asked for (``COMMANDS``),
not at start-up: ``bpfloom run`` does not pay for importing the rule engine of
``detect`` or the HTTP server of ``export``. A module imported by other means (an
import line in ``cli/__init__.py``) still adds its commands as before.
"""

from __future__ import annotations

from importlib import import_module

import click

#: Command name -> the module of ``bpfloom.cli`` that defines it.
COMMANDS = {
    "run": "run",
    "demo": "run",
    "execsnoop": "tools",
    "opensnoop": "tools",
    "exitsnoop": "tools",
    "goroutines": "tools",
    "syscount": "tools",
    "runqlat": "metrics",
    "biolatency": "metrics",
    "hardirqs": "metrics",
    "softirqs": "metrics",
    "detect": "detect",
    "export": "export",
    "collect": "collect",
    "tcplife": "tcp",
    "tcpstates": "tcp",
    "tcpconnect": "tcp",
    "tcpconnlat": "tcp",
    "tcpaccept": "tcp",
    "tcpretrans": "tcpstats",
    "tcprtt": "tcpstats",
    "tcptop": "tcpstats",
    "flows": "flows",
    "doctor": "doctor",
}


class _LazyGroup(click.Group):
    """A group that imports a command's module on first use (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if cmd_name not in self.commands and module is not None:
            import_module(f"{__package__}.{module}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bpfloom")
def main() -> None:
    """bpfloom: run precompiled CO-RE eBPF objects and read their events from Python.

    Errors are one line on stderr. Exit status: 0 done (Ctrl-C and SIGTERM included),
    1 the run failed, 2 the command line is wrong.
    """
