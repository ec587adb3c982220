"""The package's layering holds: the library never imports the command line."""

from __future__ import annotations

import subprocess
import sys

LIBRARY = [
    "bpfloom",
    "bpfloom.object",
    "bpfloom.pipeline",
    "bpfloom.sinks.table",
    "bpfloom.sinks.jsonl",
    "bpfloom.mapdump",
    "bpfloom.export",
    "bpfloom.rules",
    "bpfloom.tools.execsnoop",
    "bpfloom.tools.opensnoop",
    "bpfloom.tools.exitsnoop",
    "bpfloom.tools.syscount",
    "bpfloom.tools.goroutines",
    "bpfloom.tools.detect",
    "bpfloom.tools.runqlat",
    "bpfloom.tools.biolatency",
    "bpfloom.tools.hardirqs",
    "bpfloom.tools.softirqs",
]


def test_the_library_does_not_import_click() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {LIBRARY!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'click' or m.startswith(('click.', "
        "'bpfloom.cli'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
