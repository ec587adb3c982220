"""Shared test helpers.

``compile_bpf`` builds a BPF object from C source with the project's clang flags, so
tests exercise real compiler output (BTF, DWARF) instead of hand-made fixtures.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

CLANG = "clang-16"
BPF_CFLAGS = (
    "-g",
    "-O2",
    "-target",
    "bpf",
    "-D__TARGET_ARCH_x86",
    "-I/usr/include/x86_64-linux-gnu",
)


def compile_bpf(
    source: str,
    tmp_path: Path,
    *,
    name: str = "prog",
    headers: Mapping[str, str] | None = None,
    extra_flags: Sequence[str] = (),
    debug: bool = True,
) -> Path:
    """Compile ``source`` to ``tmp_path/<name>.bpf.o`` and return that path.

    ``headers`` are written next to the source first (``{"shapes.h": "..."}``), so the
    source can ``#include "shapes.h"``. ``extra_flags`` go after the standard flags
    (e.g. ``-gdwarf-4``); ``debug=False`` drops ``-g`` (no BTF, no DWARF). Fails the
    test with the compiler's message if clang rejects the source.
    """
    tmp_path = Path(tmp_path)
    for header, text in (headers or {}).items():
        (tmp_path / header).write_text(text)
    src = tmp_path / f"{name}.bpf.c"
    obj = tmp_path / f"{name}.bpf.o"
    src.write_text(source)
    flags = [f for f in BPF_CFLAGS if debug or f != "-g"]
    cmd = [CLANG, *flags, *extra_flags, "-c", str(src), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr}", pytrace=False)
    return obj


@pytest.fixture(name="compile_bpf")
def _compile_bpf_fixture() -> Callable[..., Path]:
    """The ``compile_bpf`` function, for tests that prefer a fixture to an import."""
    return compile_bpf


# --- kernel tests -----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TESTS_BPF = ROOT / "tests" / "bpf"


def _kernel_unavailable() -> str | None:
    """Why real BPF cannot run here, or None when it can."""
    import os

    if os.geteuid() != 0:
        return "kernel tests need root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if not (TESTS_BPF / "shapes.bpf.o").exists():
        return "test BPF objects are not built (run `make bpf`)"
    return None


@pytest.fixture(autouse=True)
def _require_kernel(request: pytest.FixtureRequest) -> None:
    """Tests marked ``kernel`` need root and BPF. Where BPFLOOM_REQUIRE_KERNEL is set
    (CI), a missing kernel fails them instead of skipping them."""
    import os

    if request.node.get_closest_marker("kernel") is None:
        return
    reason = _kernel_unavailable()
    if reason is None:
        return
    if os.environ.get("BPFLOOM_REQUIRE_KERNEL"):
        pytest.fail(f"BPF is required here (BPFLOOM_REQUIRE_KERNEL is set): {reason}")
    pytest.skip(reason)


def bpf_object(name: str) -> Path:
    """Path of a test object built by `make bpf` (``"shapes"`` → tests/bpf/shapes.bpf.o,
    ``"ecli/execsnoop"`` → tests/bpf/ecli/execsnoop.bpf.o)."""
    return TESTS_BPF / f"{name}.bpf.o"


def kernel_prog_ids() -> set[int]:
    """Ids of every BPF program loaded in the kernel now (bpftool)."""
    import json

    out = subprocess.run(
        ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


def kernel_link_ids() -> set[int]:
    """Ids of every BPF link in the kernel now (bpftool)."""
    import json

    out = subprocess.run(
        ["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


def kernel_map_ids() -> set[int]:
    """Ids of every BPF map in the kernel now (bpftool)."""
    import json

    out = subprocess.run(
        ["bpftool", "-j", "map", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}
