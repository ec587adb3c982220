"""``bpfloom doctor``: what this host can do with BPF, and what to do about the rest.

The checks are ``bpfloom.doctor``'s; this prints them, one line each with the fix under
a failing one, or as one JSON document (``--json``). It reads no events, so it has
``--json`` only of the output options. Exit status 0 when bpfloom's tools can run here,
1 when a check they need failed.
"""

from __future__ import annotations

import sys

import click

from .._terminal import escape_control, json_line
from ._app import main

_MARKS = {"ok": "ok", "info": "info", "warn": "warn", "fail": "FAIL", "skip": "skip"}


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
def doctor_command(as_json: bool) -> None:
    """Check what this host can do: kernel, BTF, JIT, capabilities, mounts, lockdown,
    which program kinds load and attach, ring and perf buffers, libbpf.

    Exit status 0 when bpfloom's tools can run here, 1 otherwise; every failing line
    says what to do.
    """
    from ..doctor import diagnose

    report = diagnose()
    if as_json:
        click.echo(json_line(report.as_dict()))
    else:
        width = max(len(c.name) for c in report.checks)
        for check in report.checks:
            mark = _MARKS[check.status]
            click.echo(f"{mark:<5} {check.name:<{width}}  {escape_control(check.detail)}")
            if check.fix and check.status in ("fail", "warn"):
                click.echo(f"{'':<5} {'':<{width}}  fix: {escape_control(check.fix)}")
        if report.can_run:
            click.echo("bpfloom can run here.")
        else:
            failed = ", ".join(c.name for c in report.checks if c.status == "fail")
            click.echo(f"bpfloom cannot run here: {failed} failed (see the fixes above).")
    sys.exit(0 if report.can_run else 1)
