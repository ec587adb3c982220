"""bpfloom detect on real activity: the default rules fire on what they describe and
stay silent on ordinary behaviour; custom rules, rate limits, bad rule files.

The machine may run other things meanwhile, so every assertion is about processes
this test started (by pid), never about the whole alert stream.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bpfloom.rules import Alert, RuleSet
from bpfloom.tools.detect import Detector
from conftest import assert_gone_from_kernel, new_ids, own_bpf_ids
from toolrun import run_tool_cli

pytestmark = pytest.mark.kernel

# A child that fails to open `n` missing files as fast as it can.
FAILED_OPENS = """
import os, sys
for i in range(int(sys.argv[1])):
    try:
        os.open(f"/nonexistent-bpfloom-test/{i}", os.O_RDONLY)
    except FileNotFoundError:
        pass
"""


def _alerts_for(alerts: list[dict[str, Any]], rule: str, pid: int) -> list[dict[str, Any]]:
    return [a for a in alerts if a["rule"] == rule and a["fields"]["pid"] == pid]


def _inner_shell_pid() -> int:
    """Runs a shell from a shell (ordinary behaviour); the inner shell's pid."""
    out = subprocess.run(
        ["/bin/sh", "-c", "/bin/sh -c 'echo $$'"], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_default_rules_fire_on_real_behaviour_and_stay_silent_otherwise(
    start_tool: Any, tmp_path: Path
) -> None:
    run = start_tool("detect", "--json")
    # A shell started by python (this test): fires. A shell started by a shell: silent.
    shell = subprocess.Popen(["/bin/sh", "-c", "true"])
    shell.wait()
    quiet_shell = _inner_shell_pid()
    # /etc/shadow read by cat: fires; /etc/passwd: silent.
    shadow = subprocess.Popen(["cat", "/etc/shadow"], stdout=subprocess.DEVNULL)
    passwd = subprocess.Popen(["cat", "/etc/passwd"], stdout=subprocess.DEVNULL)
    # A program run from /tmp: fires; the same program from /usr/bin: silent.
    dropped = tmp_path / "dropped"
    shutil.copy("/usr/bin/true", dropped)
    assert str(dropped).startswith("/tmp/")
    from_tmp = subprocess.Popen([str(dropped)])
    from_usr = subprocess.Popen(["/usr/bin/true"])
    # 2000 failed opens at once: fires (threshold 500/s); 100: silent.
    burst = subprocess.Popen([sys.executable, "-c", FAILED_OPENS, "2000"])
    few = subprocess.Popen([sys.executable, "-c", FAILED_OPENS, "100"])
    for p in (shadow, passwd, from_tmp, from_usr, burst, few):
        assert p.wait() == 0
    for pid in (shell.pid, shadow.pid, from_tmp.pid, burst.pid):
        run.wait_output(f'"pid": {pid}')
    result = run.stop()
    assert result.returncode == 0, result.stderr
    alerts = result.json_lines()

    fired = _alerts_for(alerts, "Shell spawned by a non-shell program", shell.pid)
    assert len(fired) == 1
    assert fired[0]["fields"]["comm"] == "sh"
    assert fired[0]["fields"]["parent_comm"] == Path("/proc/self/comm").read_text().strip()
    assert fired[0]["priority"] == "NOTICE"
    assert fired[0]["output"].startswith(f"shell sh (pid {shell.pid}, uid 0) started by ")
    assert not [a for a in alerts if a["fields"]["pid"] == quiet_shell]

    fired = _alerts_for(alerts, "Read of shadow password file", shadow.pid)
    assert len(fired) == 1 and fired[0]["fields"]["path"] == "/etc/shadow"
    assert fired[0]["priority"] == "WARNING" and "credentials" in fired[0]["tags"]
    assert not [a for a in alerts if a["fields"]["pid"] == passwd.pid]

    fired = _alerts_for(alerts, "Execution from a temporary directory", from_tmp.pid)
    assert len(fired) == 1 and fired[0]["fields"]["path"] == str(dropped)
    assert fired[0]["output"].startswith(f"{dropped} executed from a temporary directory")
    assert not [a for a in alerts if a["fields"]["pid"] == from_usr.pid]

    fired = _alerts_for(alerts, "Burst of failed opens", burst.pid)
    assert len(fired) >= 1
    assert fired[0]["fields"]["err"] == 2 and fired[0]["fields"]["fd"] == -1
    # (Not "no alert at all": run from a clone under /tmp, python itself is in /tmp.)
    assert not _alerts_for(alerts, "Burst of failed opens", few.pid)

    for alert in alerts:
        assert {"rule", "priority", "time", "output", "tags", "fields"} <= alert.keys()
        assert abs(alert["time"] - time.time()) < 120
    assert "alerts:" in result.stderr and "lost 0 in the kernel" in result.stderr


CUSTOM_RULES = """
- list: markers
  items: ["{tmp}/a", "{tmp}/b"]

- macro: marker_open
  condition: event == open and path startswith "{tmp}/"

- rule: Marker opened
  condition: marker_open and not path endswith .ok
  output: "%comm opened %path (fd %fd)"
  priority: notice
  tags: [test]
  rate_limit: 3/m
  exceptions:
    - name: allowed
      fields: [path]
      values: [["{tmp}/allowed"]]

- rule: Listed marker exec
  condition: event == exec and path in (markers)
  output: "ran %path"
  priority: INFORMATIONAL
"""


def test_custom_rules_exceptions_and_rate_limit(start_tool: Any, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(CUSTOM_RULES.replace("{tmp}", str(tmp_path)))
    run = start_tool("detect", "--rules", str(rules))
    names = ["one", "two", "three", "four", "five", "x.ok", "allowed"]
    for name in names:
        (tmp_path / name).write_text("")  # write_text opens the file: an open event
    shutil.copy("/usr/bin/true", tmp_path / "a")
    os.chmod(tmp_path / "a", 0o755)
    subprocess.run([str(tmp_path / "a")], check=True)
    run.wait_output(f"ran {tmp_path}/a")
    result = run.stop()
    lines = result.stdout.splitlines()
    marker = [line for line in lines if " Marker opened: " in line]
    # Five opens match; the rate limit lets 3 through; x.ok and allowed never match.
    assert len(marker) == 3, lines
    assert all(line.split()[1] == "NOTICE" for line in marker)
    assert all(f"opened {tmp_path}/" in line for line in marker)
    assert not [line for line in lines if "x.ok" in line or "allowed" in line]
    assert [line for line in lines if f"INFORMATIONAL Listed marker exec: ran {tmp_path}/a" in line]
    assert "suppressed by rate limits" in result.stderr


def test_library_detector_with_process_alerts(tmp_path: Path) -> None:
    target = tmp_path / "target"
    rules = RuleSet.from_text(
        f"""
- rule: Target exited badly
  condition: event == exit and comm == sh and exit_code == 9
  output: "%comm %pid exited with %exit_code"
  priority: ERROR
- rule: Target opened
  condition: event == open and path == "{target}"
  output: "%comm opened %path"
  priority: WARNING
"""
    )
    alerts: list[Alert] = []
    lock = threading.Lock()

    def collect(alert: Alert) -> None:
        with lock:
            alerts.append(alert)

    before = own_bpf_ids()
    with Detector(rules, collect) as detector:
        assert detector.kinds == ["exit", "open"]  # exec is never loaded: no rule needs it
        detector.start()
        ours = new_ids(before)
        assert ours["prog"] and ours["map"] and ours["link"]
        child = subprocess.Popen(["sh", "-c", f": > {target}; exit 9"])
        child.wait()
        deadline = time.monotonic() + 30
        while len({a.rule for a in alerts}) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = detector.stop()
    assert_gone_from_kernel(ours)
    mine = [a for a in alerts if a.fields["pid"] == child.pid]
    assert {a.rule for a in mine} == {"Target exited badly", "Target opened"}
    exited = next(a for a in mine if a.rule == "Target exited badly")
    assert exited.output == f"sh {child.pid} exited with 9" and exited.priority == "ERROR"
    assert stats["handled"] + stats["dropped_kernel"] + stats["dropped_queue"] == stats["produced"]


BAD_RULES = [
    ("- rule: x\n  condition: event == exec and\n  output: o\n  priority: NOTICE\n", ":2:"),
    ("- rule: x\n  condition: nosuchfield == 1\n  output: o\n  priority: NOTICE\n", ":2:"),
    ("- rule: x\n  condition: event == exec\n  output: o\n  priority: LOUD\n", ":4:"),
    ("- list: a\n  items: [x\n- rule: y\n", ":3:"),
]


@pytest.mark.parametrize(("text", "where"), BAD_RULES)
def test_bad_rule_file_names_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run_tool_cli("detect", "--rules", str(path), "--duration", "1")
    assert result.returncode == 1
    assert f"{path}{where}" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_rule_file_and_list() -> None:
    result = run_tool_cli("detect", "--rules", "/nonexistent/rules.yaml")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "/nonexistent/rules.yaml" in result.stderr
    result = run_tool_cli("detect", "--list")
    assert result.returncode == 0
    assert "Read of shadow password file" in result.stdout
    assert "WARNING" in result.stdout


def test_detector_refuses_the_process_executor() -> None:
    rules = RuleSet.from_text(
        "- rule: r\n  condition: event == exit\n  output: o\n  priority: DEBUG\n"
    )
    with pytest.raises(ValueError, match="not processes"):
        Detector(rules, print, executor="process")
