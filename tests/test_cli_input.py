"""Bad input to every command, and signals at awkward moments: one error line and the
documented status (2 for a wrong command line), never a traceback or a run that cannot
end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import bpf_object
from toolrun import run_tool_cli

OBJECT = str(bpf_object("ecli/sigsnoop"))


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400"])
@pytest.mark.parametrize(
    "command",
    [
        ["run", OBJECT, "--duration"],
        ["run", OBJECT, "--interval"],
        ["run", OBJECT, "--max-latency"],
        ["execsnoop", "--duration"],
        ["opensnoop", "--duration"],
        ["exitsnoop", "--duration"],
        ["syscount", "--interval"],
        ["detect", "--duration"],
        ["demo", "--duration"],
    ],
    ids=lambda c: " ".join(c[:1] + c[-1:]) if isinstance(c, list) else c,
)
def test_non_finite_seconds_are_refused(command: list[str], value: str) -> None:
    """A run of nan or infinite seconds would never end (and an interval of nan would
    tick at once forever)."""
    result = run_tool_cli(*command, value)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpfloom: error: "), result.stderr
    assert command[-1] in lines[0]
    assert result.stdout == ""


def _wait_for_mapping(pid: int, needle: str) -> None:
    """Wait until process ``pid`` has a file whose path contains ``needle`` mapped."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/maps") as f:
                if needle in f.read():
                    return
        except FileNotFoundError:
            pytest.fail(f"process {pid} ended before mapping {needle}")
        time.sleep(0.001)
    pytest.fail(f"process {pid} never mapped {needle}")


@pytest.mark.kernel
@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.3, 0.5, 0.8])
def test_ctrl_c_while_starting_up_never_prints_a_traceback(delay: float) -> None:
    """SIGINT lands somewhere in bpfloom's start-up — the imports (numpy is loading:
    the interpreter itself has started), opening and loading the object, attaching —
    or in the run, depending on the delay: wherever it lands, the program ends quietly,
    130 before the run took signals over, 0 once it stops cleanly."""
    script = str(Path(sys.executable).with_name("bpfloom"))
    proc = subprocess.Popen(
        [script, "run", OBJECT, "--duration", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_mapping(proc.pid, "numpy")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err + out, err
    assert proc.returncode in (0, 130), (proc.returncode, err)


@pytest.mark.parametrize(
    "args",
    [
        ["--event-type", "event", OBJECT],
        ["--event-type=event", OBJECT],
        ["--json", "--duration", "event", OBJECT],
        ["--", OBJECT],
    ],
)
def test_object_is_chosen_by_the_grammar_not_the_file_system(
    args: list[str], tmp_path: Path
) -> None:
    """A file in the current directory named like an option's value (`./event`) is never
    loaded as the object: OBJECT is the first argument that is no option or value."""
    (tmp_path / "event").write_bytes(b"\x7fELF not what the user asked for")
    proc = subprocess.run(
        [sys.executable, "-m", "bpfloom", "run", *args, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: bpfloom run {OBJECT}"), proc.stdout[:200]


def test_globals_before_object_are_a_usage_error() -> None:
    result = run_tool_cli("run", "--target_signal", "10", OBJECT)
    assert result.returncode == 2
    assert result.stderr == (
        "bpfloom: error: option '--target_signal' before OBJECT is not an option of run; "
        "the object's globals go after it: bpfloom run OBJECT --target_signal ...\n"
    )
