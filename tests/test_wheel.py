"""The wheel, for real: ``make dist`` builds an sdist and, from it, a wheel holding the
compiled CO-RE objects; installed into a fresh virtual environment and run with neither
clang nor bpftool on PATH, from a directory outside this clone, its tools trace real
activity. The sdist without a compiler says what is missing."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from conftest import ROOT

pytestmark = pytest.mark.kernel

TIMEOUT = 600  # building and installing; far above the ~30 s they take
MACHINE = os.uname().machine
WHEEL_TAG = f"py3-none-manylinux_2_17_{MACHINE}.manylinux2014_{MACHINE}"
SOURCES = sorted(p.name for p in (ROOT / "src" / "bpfloom" / "bpf").glob("*.bpf.c"))
EM_BPF = "EM_BPF"
HIDDEN = ("clang", "clang-16", "bpftool", "gcc", "cc")


@dataclass
class Dist:
    sdist: Path
    wheel: Path
    venv: Path
    env: dict[str, str]
    outside: Path  # a working directory outside the source tree


def _run(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """``make dist`` into a temporary folder, and the wheel installed in a new venv."""
    out = tmp_path_factory.mktemp("dist")
    made = _run(["make", "-s", "dist", f"DIST={out}", f"VENV={Path(sys.prefix)}"], cwd=ROOT)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    sdists = list(out.glob("*.tar.gz"))
    wheels = list(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())

    venv = tmp_path_factory.mktemp("venv") / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)])
    assert created.returncode == 0, created.stderr
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])])
    assert installed.returncode == 0, installed.stderr[-3000:]

    # Only the venv on PATH: no compiler, no bpftool, nothing of this clone.
    env = {"PATH": str(venv / "bin"), "LC_ALL": "C.UTF-8", "HOME": str(venv)}
    outside = tmp_path_factory.mktemp("elsewhere")
    return Dist(sdists[0], wheels[0], venv, env, outside)


def test_the_wheel_is_tagged_for_this_architecture_on_linux(dist: Dist) -> None:
    assert dist.wheel.name == f"bpfloom-0.1.0-{WHEEL_TAG}.whl"
    with zipfile.ZipFile(dist.wheel) as whl:
        meta = whl.read("bpfloom-0.1.0.dist-info/WHEEL").decode()
    assert "Root-Is-Purelib: false" in meta
    tags = re.findall(r"^Tag: (.+)$", meta, re.MULTILINE)
    assert tags == [f"py3-none-manylinux_2_17_{MACHINE}", f"py3-none-manylinux2014_{MACHINE}"]


def test_the_wheel_holds_every_built_in_object_compiled_for_co_re(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
        objects = sorted(n for n in names if n.endswith(".bpf.o"))
        assert objects == [f"bpfloom/bpf/{s.replace('.bpf.c', '.bpf.o')}" for s in SOURCES]
        for name in objects:
            with whl.open(name) as f:
                elf = ELFFile(f)
                assert elf["e_machine"] == EM_BPF, name
                sections = {s.name for s in elf.iter_sections()}
                # .BTF.ext carries the CO-RE relocations that make the object portable.
                assert {".BTF", ".BTF.ext"} <= sections, name
    assert "bpfloom/py.typed" in names
    assert "bpfloom/rules/default.yaml" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_the_sdist_is_sources_only(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert "setup.py" in names and "pyproject.toml" in names
    assert {f"src/bpfloom/bpf/{s}" for s in SOURCES} <= names
    assert "src/bpfloom/bpf/bpfloom.h" in names
    assert not [n for n in names if n.endswith(".bpf.o")]


def test_the_installed_package_is_the_wheels_and_no_toolchain_is_on_path(dist: Dist) -> None:
    for tool in HIDDEN:
        assert shutil.which(tool, path=dist.env["PATH"]) is None, tool
    where = _run(
        ["python", "-c", "import bpfloom; print(bpfloom.__file__)"],
        env=dist.env,
        cwd=dist.outside,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(dist.venv)


def _tool_with_activity(dist: Dist, args: list[str], argv: list[str]) -> tuple[str, set[int]]:
    """``bpfloom ARGS`` (which ends by itself: --duration) from the wheel's venv; once it
    traces, ``argv`` is run over and over until the tool exits. Its stdout and the pids
    of the runs."""
    out = dist.outside / f"out.{uuid.uuid4().hex}"
    err = dist.outside / f"err.{uuid.uuid4().hex}"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            ["bpfloom", *args],
            env=dist.env,
            cwd=dist.outside,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while ": tracing" not in err.read_text():
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.02)
        while proc.poll() is None and time.monotonic() < deadline:
            child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
            child.wait()
            pids.add(child.pid)
            time.sleep(0.05)
        assert proc.wait(timeout=60) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err.read_text()
    assert pids, "the tool ended before any activity"
    return out.read_text(), pids


def test_execsnoop_from_the_wheel_traces_real_execs(dist: Dist) -> None:
    mark = f"wheel-{uuid.uuid4().hex[:12]}"
    stdout, pids = _tool_with_activity(
        dist, ["execsnoop", "--duration", "1", "--json"], ["/bin/true", mark]
    )
    records = [json.loads(line) for line in stdout.splitlines()]
    ours = [r for r in records if r["args"] == ["/bin/true", mark]]
    assert ours, f"no exec of /bin/true {mark} in {len(records)} records"
    for record in ours:
        assert record["pid"] in pids
        assert record["ppid"] == os.getpid()
        assert record["comm"] == "true"
        assert record["path"] == "/bin/true"
        assert record["ret"] == 0


def test_detect_from_the_wheel_alerts_on_a_program_run_from_tmp(dist: Dist) -> None:
    dropped = dist.outside / f"dropped-{uuid.uuid4().hex[:8]}"
    shutil.copy("/usr/bin/true", dropped)
    assert str(dropped).startswith("/tmp/")
    stdout, pids = _tool_with_activity(dist, ["detect", "--duration", "1"], [str(dropped)])
    alerts = [
        line
        for line in stdout.splitlines()
        if f"{dropped} executed from a temporary directory" in line
    ]
    assert alerts, stdout
    alerted = {int(m.group(1)) for a in alerts if (m := re.search(r"\(pid (\d+),", a))}
    assert alerted and alerted <= pids
    assert all("WARNING  Execution from a temporary directory: " in a for a in alerts)


def test_the_sdist_without_a_compiler_says_what_is_missing(dist: Dist, tmp_path: Path) -> None:
    """pip building the wheel from the sdist, with neither clang nor bpftool on PATH."""
    pip = [str(dist.venv / "bin" / "python"), "-m", "pip"]
    built = _run(
        [*pip, "wheel", "--no-deps", "-w", str(tmp_path), str(dist.sdist)],
        env=dist.env,
        cwd=dist.outside,
    )
    assert built.returncode != 0
    output = built.stdout + built.stderr
    assert (
        "bpfloom: building the BPF objects from source needs clang (Debian: clang-16; or set "
        "CLANG=/path/to/clang); bpftool (Debian: bpftool; or set BPFTOOL=/path/to/bpftool). "
        "Or install bpfloom's wheel, which has them built." in output
    ), output[-3000:]
    assert not list(tmp_path.glob("*.whl"))


def test_setup_py_compiles_with_the_makefiles_flags() -> None:
    """setup.py's BPF_CFLAGS are the Makefile's, less what each sets up itself (the
    target architecture and the include folders)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    ours = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "BPF_CFLAGS" for t in node.targets)
    )
    line = next(
        line
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("BPF_CFLAGS :=")
    )
    makes = [
        f for f in line.split(":=", 1)[1].split() if not f.startswith(("-I", "-D__TARGET_ARCH_"))
    ]
    assert ours == makes
