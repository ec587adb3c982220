"""One spelling per file: detection rules see through the ways a path can be spelled.

`//etc/shadow`, `/etc//shadow`, `/etc/./shadow`, a relative `shadow` opened in /etc,
`//tmp/x`, `/./tmp/x`, `/usr/../tmp/x` and a relative `./x` run inside /tmp all used
to pass the default rules, which matched the path as the program passed it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bpfloom.tools.paths import FS_PATH_DIR, FS_PATH_FILE, FS_PATH_NONE, lexical, norm_path
from toolrun import run_tool_cli

SHADOW_RULE = "Read of shadow password file"
TMP_RULE = "Execution from a temporary directory"


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/etc/shadow", "/etc/shadow"),
        ("//etc/shadow", "/etc/shadow"),
        ("/etc//shadow", "/etc/shadow"),
        ("/etc/./shadow", "/etc/shadow"),
        ("/usr/../etc/shadow", "/etc/shadow"),
        ("/../../etc/shadow", "/etc/shadow"),
        ("///", "/"),
        ("a/./b/../c", "a/c"),
        ("../x", "../x"),
        ("./", "."),
        ("", ""),
    ],
)
def test_lexical(path: str, normal: str) -> None:
    assert lexical(path) == normal


@pytest.mark.parametrize(
    ("path", "fs_path", "kind", "cut", "normal"),
    [
        ("shadow", "/etc/shadow", FS_PATH_FILE, 0, "/etc/shadow"),  # opened: the kernel's
        ("/tmp/link", "/etc/shadow", FS_PATH_FILE, 0, "/etc/shadow"),  # a symlink
        ("shadow", "/etc", FS_PATH_DIR, 0, "/etc/shadow"),  # failed, relative
        ("../etc/./shadow", "/usr", FS_PATH_DIR, 0, "/etc/shadow"),
        ("//etc/shadow", "", FS_PATH_NONE, 0, "/etc/shadow"),  # failed, absolute
        ("x/y", "deep/ends", FS_PATH_DIR, 1, "x/y"),  # the walk was cut: as given
        ("x/y", "", FS_PATH_FILE, -1, "x/y"),  # unreadable
    ],
)
def test_norm_path(path: str, fs_path: str, kind: int, cut: int, normal: str) -> None:
    assert norm_path(path, fs_path, kind, cut) == normal


# --- the default rules on real activity ---------------------------------------------

OPEN_AS = """
import os, sys
os.chdir(sys.argv[1])
try:
    os.close(os.open(sys.argv[2], os.O_RDONLY))
except OSError:
    pass
"""


def _alerts(result_lines: list[dict[str, Any]], rule: str) -> dict[int, dict[str, Any]]:
    return {a["fields"]["pid"]: a for a in result_lines if a["rule"] == rule}


@pytest.mark.kernel
def test_default_rules_see_every_spelling(start_tool: Any, tmp_path: Path) -> None:
    run = start_tool("detect", "--json")
    opens = {}
    for cwd, spelling, file in [
        ("/", "//etc/shadow", "/etc/shadow"),
        ("/", "/etc//shadow", "/etc/shadow"),
        ("/", "/etc/./shadow", "/etc/shadow"),
        ("/etc", "shadow", "/etc/shadow"),
        ("/usr", "../etc/gshadow", "/etc/gshadow"),
    ]:
        child = subprocess.Popen([sys.executable, "-c", OPEN_AS, cwd, spelling])
        assert child.wait() == 0
        opens[child.pid] = (spelling, file)
    program = tmp_path / "dropped"
    shutil.copy("/usr/bin/true", program)
    rel = os.path.relpath(program, "/tmp")
    execs = {}
    for cwd, spelling in [
        ("/", "/" + str(program)),  # //tmp/...
        ("/", "/." + str(program)),  # /./tmp/...
        ("/", "/usr/.." + str(program)),
        (str(program.parent), "./dropped"),
        ("/tmp", "./" + rel),
    ]:
        proc = subprocess.Popen([spelling], cwd=cwd, executable=spelling)
        assert proc.wait() == 0
        execs[proc.pid] = spelling
    for pid in [*opens, *execs]:
        run.wait_output(f'"pid": {pid}')
    result = run.stop()
    assert result.returncode == 0, result.stderr
    alerts = result.json_lines()
    read = _alerts(alerts, SHADOW_RULE)
    assert set(opens) <= set(read), (opens, read)
    for pid, (spelling, file) in opens.items():
        assert read[pid]["fields"]["path"] == spelling
        assert read[pid]["fields"]["norm_path"] == file
    fired = _alerts(alerts, TMP_RULE)
    assert set(execs) <= set(fired), (execs, fired)
    for pid, spelling in execs.items():
        assert fired[pid]["fields"]["path"] == spelling
        assert fired[pid]["fields"]["norm_path"] == str(program)


@pytest.mark.kernel
def test_opensnoop_full_path(start_tool: Any, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "file")
    child_code = f"""
import os
os.chdir({str(tmp_path)!r})
for p in ("sub/../sub/file", "link", "missing/./x"):
    try:
        os.close(os.open(p, os.O_RDONLY))
    except OSError:
        pass
"""
    run = start_tool("opensnoop", "-F", "--json", "-n", "python")
    child = subprocess.Popen([sys.executable, "-c", child_code])
    assert child.wait() == 0
    run.wait_output("missing/./x")
    result = run.stop()
    got = {r["path"]: r["norm_path"] for r in result.json_lines() if r["pid"] == child.pid}
    assert got["sub/../sub/file"] == str(tmp_path / "sub" / "file")
    assert got["link"] == str(tmp_path / "sub" / "file")  # opened: the kernel's file
    assert got["missing/./x"] == str(tmp_path / "missing" / "x")  # failed: lexical
    table = run_tool_cli("opensnoop", "--help").stdout
    assert "-F, --full-path" in table
