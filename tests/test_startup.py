"""What `bpfloom run` loads before its first event: only the command it runs (the
command modules are imported on demand, ``cli/_app.py: COMMANDS``), none of the
machinery of other commands or executors, and — the second time an object runs — no
DWARF reader (``bpfloom.typecache``). Checked by what Python imported (the keys of
``sys.modules`` at exit), never by how long it took."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpfloom.cli import _app
from conftest import bpf_object
from toolrun import BPFLOOM, TIMEOUT

# What `run` must not import: other commands' machinery, the executors it does not
# use, and (with the type cache warm) the DWARF reader.
NOT_FOR_RUN = (
    "bpfloom.rules",
    "bpfloom.export",
    "bpfloom.sinks.prometheus",
    "bpfloom.sinks.parquet",
    "bpfloom.tools.detect",
    "bpfloom.cli.detect",
    "bpfloom.cli.export",
    "bpfloom.cli.metrics",
    "bpfloom.cli.tools",
    "bpfloom._async_runner",
    "asyncio",
    "multiprocessing",
    "yaml",
    "http.server",
)
DWARF_READER = ("bpfloom.dwarf", "elftools.dwarf.dwarfinfo")


# Runs `python -m bpfloom ARGS` and writes the names in sys.modules at exit to OUT.
MODULES_AT_EXIT = (
    "import atexit, runpy, sys; out = sys.argv.pop(1); "
    "atexit.register(lambda: open(out, 'w').write('\\n'.join(sorted(sys.modules)))); "
    "sys.argv[0] = 'bpfloom'; runpy.run_module('bpfloom', run_name='__main__', alter_sys=True)"
)


def imported(args: list[str], env: dict[str, str], tmp_path: Path) -> set[str]:
    """The modules a `bpfloom` command had imported when it exited (status 0)."""
    out = tmp_path / "modules.txt"
    proc = subprocess.run(
        [sys.executable, "-c", MODULES_AT_EXIT, str(out), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(out.read_text().split())


def test_every_command_is_in_the_table_under_its_module() -> None:
    """``COMMANDS`` names every command and the module that defines it: importing all
    command modules registers exactly those commands, each from its module."""
    for module in set(_app.COMMANDS.values()):
        importlib.import_module(f"bpfloom.cli.{module}")
    commands = _app.main.commands
    assert set(commands) == set(_app.COMMANDS)
    for name, command in commands.items():
        assert command.callback is not None
        assert command.callback.__module__ == f"bpfloom.cli.{_app.COMMANDS[name]}", name


def test_help_lists_every_command() -> None:
    proc = subprocess.run(
        [*BPFLOOM, "--help"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0
    listed = {
        line.split()[0]
        for line in proc.stdout.split("Commands:", 1)[1].splitlines()
        if line.strip()
    }
    assert listed == set(_app.COMMANDS)


@pytest.mark.kernel
def test_run_imports_only_what_it_needs_and_no_dwarf_the_second_time(tmp_path: Path) -> None:
    """`bpfloom run` on an object whose event struct is only in DWARF: the first run
    reads the DWARF and caches what it needs; the second reads no DWARF; neither
    imports other commands' machinery or other executors."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ["run", str(bpf_object("ecli/exitsnoop")), "--json", "--duration", "0.2"]
    first = imported(args, env, tmp_path)
    assert set(DWARF_READER) <= first
    assert list((tmp_path / "cache" / "bpfloom" / "dwarf").glob("*.json"))
    second = imported(args, env, tmp_path)
    assert "bpfloom.cli.run" in second and "bpfloom.typecache" in second
    for module in (*NOT_FOR_RUN, *DWARF_READER):
        assert module not in second, f"`bpfloom run` imported {module}"
    for module in NOT_FOR_RUN:
        assert module not in first, f"`bpfloom run` imported {module}"
