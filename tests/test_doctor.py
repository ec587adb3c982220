"""``bpfloom doctor`` on this machine, for real: as root it finds every kind the tools
need and says that kprobes and fentry are missing here (and that no tool needs them),
exit 0; as nobody it says what to do about privileges, exit 1. The JSON report's shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bpfloom import doctor
from bpfloom.doctor import Check, Report, object_kinds, section_kind
from conftest import ROOT
from toolrun import run_tool_cli

NOBODY = 65534
STATUSES = {"ok", "info", "warn", "fail", "skip"}
NAMES = [
    "kernel", "btf", "jit", "capabilities", "unprivileged_bpf", "tracefs", "bpffs", "debugfs",
    "lockdown", "libbpf", "objects", "tracepoint", "raw_tp", "tp_btf", "kprobe", "fentry",
    "uprobe", "perf_event", "xdp", "tc", "cgroup", "ring_buffer", "perf_buffer",
]  # fmt: skip
TOOLS = {
    "biolatency", "exec", "execsnoop", "exitsnoop", "flows", "goroutines", "hardirqs",
    "opensnoop", "runqlat", "softirqs", "syscount", "tcpretrans", "tcprtt", "tcpstate",
    "tcptop",
}  # fmt: skip


@pytest.mark.parametrize(
    ("section", "kind"),
    [
        ("tracepoint/syscalls/sys_enter_openat", "tracepoint"),
        ("tp/sched/sched_process_exec", "tracepoint"),
        ("raw_tp/sys_enter", "raw_tp"),
        ("raw_tracepoint/sched_switch", "raw_tp"),
        ("raw_tp.w/sys_enter", "raw_tp"),
        ("tp_btf/sched_switch", "tp_btf"),
        ("kprobe/do_unlinkat", "kprobe"),
        ("kretprobe/do_unlinkat", "kprobe"),
        ("kprobe.multi/vfs_*", "kprobe"),
        ("ksyscall/openat", "kprobe"),
        ("fentry/do_unlinkat", "fentry"),
        ("fexit.s/do_unlinkat", "fentry"),
        ("lsm/file_open", "fentry"),
        ("uprobe", "uprobe"),
        ("uretprobe//bin/bash:readline", "uprobe"),
        ("usdt", "uprobe"),
        ("perf_event", "perf_event"),
        ("xdp", "xdp"),
        ("xdp.frags", "xdp"),
        ("tc", "tc"),
        ("classifier", "tc"),
        ("cgroup_skb/ingress", "cgroup"),
        ("cgroup/connect4", "cgroup"),
        ("syscall", None),
        ("socket", None),
        ("tcx/ingress", None),
        ("tracing", None),
    ],
)
def test_section_kind(section: str, kind: str | None) -> None:
    assert section_kind(section) == kind


def test_the_kinds_each_builtin_object_needs() -> None:
    bpf = ROOT / "src" / "bpfloom" / "bpf"
    assert object_kinds(bpf / "execsnoop.bpf.o") == ["tracepoint"]
    assert object_kinds(bpf / "runqlat.bpf.o") == ["tp_btf"]
    assert object_kinds(bpf / "goroutines.bpf.o") == ["tracepoint", "uprobe"]
    assert object_kinds(bpf / "doctor.bpf.o") == list(doctor.KINDS)
    assert set(doctor.builtin_objects()) == TOOLS


def test_can_run_is_false_only_when_a_check_failed() -> None:
    report = Report([Check("a", "ok", ""), Check("b", "warn", "", "x"), Check("c", "skip", "")])
    assert report.can_run
    report.checks.append(Check("d", "fail", "gone", "fix it"))
    assert not report.can_run
    assert report.as_dict()["checks"][-1] == {
        "name": "d",
        "status": "fail",
        "detail": "gone",
        "fix": "fix it",
    }


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in report["checks"]}


def _check_shape(report: dict[str, Any]) -> None:
    assert set(report) == {"can_run", "kernel", "machine", "checks", "tools"}
    assert report["kernel"] == os.uname().release
    assert report["machine"] == os.uname().machine
    names = [c["name"] for c in report["checks"]]
    assert names[: len(NAMES)] == NAMES
    for check in report["checks"]:
        assert set(check) == {"name", "status", "detail", "fix"}
        assert check["status"] in STATUSES
        assert check["detail"]
        if check["status"] in ("fail", "warn"):
            assert check["fix"], check
    assert set(report["tools"]) == TOOLS
    for tool in report["tools"].values():
        assert set(tool) == {"kinds", "runs"}
    assert report["can_run"] == all(c["status"] != "fail" for c in report["checks"])


@pytest.mark.kernel
def test_doctor_as_root_on_this_machine() -> None:
    result = run_tool_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    report = json.loads(result.stdout)
    _check_shape(report)
    checks = _by_name(report)
    assert report["can_run"] is True
    for name in ("btf", "capabilities", "tracefs", "bpffs", "libbpf", "objects", "tools"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["capabilities"]["detail"].startswith("root: CAP_BPF yes, CAP_PERFMON yes")
    # What this kernel has, found by loading and attaching.
    for kind in ("tracepoint", "raw_tp", "tp_btf", "uprobe", "perf_event"):
        assert checks[kind]["status"] == "ok", checks[kind]
        assert checks[kind]["detail"].startswith("loads and attaches"), checks[kind]
    for kind in ("xdp", "tc", "cgroup"):
        assert checks[kind]["status"] == "ok", checks[kind]
        assert checks[kind]["detail"].startswith("loads ("), checks[kind]
    assert "used by goroutines" in checks["uprobe"]["detail"]
    assert "used by" in checks["tp_btf"]["detail"] and "runqlat" in checks["tp_btf"]["detail"]
    # What it lacks: said, with what to do, and not fatal, since no tool needs them.
    kprobe, fentry = checks["kprobe"], checks["fentry"]
    assert kprobe["status"] == "warn"
    assert kprobe["detail"].startswith("loads, but does not attach: this kernel has no kprobes")
    assert "no built-in tool needs it" in kprobe["detail"]
    assert "CONFIG_KPROBE_EVENTS" in kprobe["fix"] and "tracepoint" in kprobe["fix"]
    assert fentry["status"] == "warn"
    assert fentry["detail"].startswith("does not load: this kernel has no BPF trampolines")
    assert 'SEC("tp_btf/...")' in fentry["fix"]
    # Records really came back through both buffers.
    assert checks["ring_buffer"] == {
        "name": "ring_buffer",
        "status": "ok",
        "detail": "a record written by a program came back (the python walker)",
        "fix": "",
    }
    assert checks["perf_buffer"]["status"] == "ok"
    assert all(t["runs"] for t in report["tools"].values())
    assert report["tools"]["goroutines"]["kinds"] == ["tracepoint", "uprobe"]


@pytest.mark.kernel
def test_doctor_text_report_says_what_to_do() -> None:
    result = run_tool_cli("doctor")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "bpfloom can run here."
    kprobe = next(i for i, line in enumerate(lines) if line.split()[:2] == ["warn", "kprobe"])
    assert "this kernel has no kprobes" in lines[kprobe]
    assert lines[kprobe + 1].split()[0] == "fix:"
    ok = [line.split()[1] for line in lines if line.startswith("ok ")]
    assert {"tracepoint", "tp_btf", "uprobe", "ring_buffer", "perf_buffer"} <= set(ok)


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """``bpfloom doctor ARGS`` as uid 65534, run by Debian's python3 (the venv's lives
    under /root, which nobody cannot read) over this clone's src and the venv's
    packages (same Python minor version, same ABI)."""
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{ROOT / 'src'}:{site / 'site-packages'}",
        "LC_ALL": "C.UTF-8",
    }
    result = subprocess.run(
        ["/usr/bin/python3", "-m", "bpfloom", "doctor", *args],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.mark.kernel
def test_doctor_as_nobody_says_what_privileges_to_get() -> None:
    result = _as_nobody("--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    _check_shape(report)
    checks = _by_name(report)
    assert report["can_run"] is False
    caps = checks["capabilities"]
    assert caps["status"] == "fail"
    assert caps["detail"].startswith(f"uid {NOBODY}: CAP_BPF no, CAP_PERFMON no")
    assert "CAP_BPF and CAP_PERFMON" in caps["fix"] and "root" in caps["fix"]
    # Nothing is tried without privileges, and each probe says why.
    for kind in (*doctor.KINDS, "ring_buffer", "perf_buffer"):
        assert checks[kind]["status"] == "skip", checks[kind]
        assert checks[kind]["detail"].startswith("not tried: loading programs needs privileges")
    # The facts that need no privileges are still there.
    assert checks["btf"]["status"] == "ok" and checks["objects"]["status"] == "ok"
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == ["capabilities"]
    assert not any(t["runs"] for t in report["tools"].values())

    text = _as_nobody()
    assert text.returncode == 1
    assert text.stdout.splitlines()[-1] == (
        "bpfloom cannot run here: capabilities failed (see the fixes above)."
    )


def test_doctor_in_a_tree_whose_objects_are_not_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fresh clone before `make bpf`: the objects line fails and says so; nothing is
    tried, and the reason is the missing build, not privileges."""
    import bpfloom.bpf

    for source in (ROOT / "src" / "bpfloom" / "bpf").glob("*.bpf.c"):
        (tmp_path / source.name).write_text(source.read_text())
    monkeypatch.setattr(bpfloom.bpf, "HERE", tmp_path)
    monkeypatch.setattr(doctor, "can_load", lambda: True)
    report = doctor.diagnose()
    assert not report.can_run
    objects = report.check("objects")
    assert objects.status == "fail"
    assert objects.detail.startswith("not built: biolatency, exec, execsnoop")
    assert "make bpf" in objects.fix and "wheel" in objects.fix
    assert report.check("probes").status == "fail"
    for kind in (*doctor.KINDS, "ring_buffer", "perf_buffer"):
        assert report.check(kind).status == "skip"
        assert "doctor.bpf.o, doctor_buffers.bpf.o) are not built" in report.check(kind).detail
    assert report.tools["execsnoop"] == {"kinds": [], "runs": False}
