"""Build hooks of bpfloom's sdist and wheel; the metadata is in pyproject.toml.

Two setuptools commands are replaced:

- ``build_py`` also compiles ``src/bpfloom/bpf/*.bpf.c`` into ``*.bpf.o`` inside the
  build directory (never the source tree), so that a wheel carries the objects and
  needs no compiler where it is installed. Objects already built beside their sources
  by ``make bpf`` and newer than every source and header are taken as they are; the
  sdist has none (MANIFEST.in), so a wheel built from it compiles them all. Compiling
  needs clang (``$CLANG``, else the first of clang-16, clang, clang-19 ... clang-14 on
  PATH), libbpf's headers, and a vmlinux.h: ``$BPFLOOM_VMLINUX_H``, else one dumped
  from this kernel's BTF with bpftool (``$BPFTOOL``, else bpftool on PATH). What is
  missing is said in one error. Editable installs compile nothing: ``make bpf`` builds
  the objects in place there.
- ``bdist_wheel`` tags the wheel ``py3-none-manylinux_2_17_<arch>``, not ``any``: the
  objects are BPF bytecode, but compiled for one architecture's registers and structs
  (``-D__TARGET_ARCH_x86`` reads ``pt_regs`` as x86 lays it out), so the wheel only
  fits the architecture it was built on; and bpfloom runs on Linux only. There is no
  host machine code in it, so any manylinux tag holds; 2_17 (manylinux2014) is the
  oldest glibc baseline PyPI still takes, which lets every Linux with glibc install it
  (docs/packaging.md).

The flags are the Makefile's BPF_CFLAGS (tests/test_wheel.py checks that they agree).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

BPF_DIR = Path("src") / "bpfloom" / "bpf"
BPF_CFLAGS = ["-g", "-O2", "-target", "bpf", "-Wall", "-Wno-unused-function"]
BTF = "/sys/kernel/btf/vmlinux"
# platform.machine() → the __TARGET_ARCH_ of libbpf's bpf_tracing.h, and the wheel's.
TARGET_ARCH = {"x86_64": "x86", "aarch64": "arm64"}
CLANGS = ("clang-16", "clang", "clang-19", "clang-18", "clang-17", "clang-15", "clang-14")


def _machine() -> str:
    machine = platform.machine()
    if machine not in TARGET_ARCH:
        raise SetupError(
            f"bpfloom: no BPF build for {machine}: the objects are built for "
            f"{', '.join(TARGET_ARCH)} (the registers and structs their programs read)"
        )
    return machine


def _stale(obj: Path, sources: list[Path]) -> bool:
    return not obj.exists() or obj.stat().st_mtime < max(s.stat().st_mtime for s in sources)


class build_py_with_bpf(build_py):
    """``build_py``, then the BPF objects into the build directory."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        headers = sorted(BPF_DIR.glob("*.h"))
        out_dir = Path(self.build_lib) / "bpfloom" / "bpf"
        todo = [
            (source, out_dir / source.name.replace(".bpf.c", ".bpf.o"))
            for source in sorted(BPF_DIR.glob("*.bpf.c"))
        ]
        todo = [(s, o) for s, o in todo if _stale(o, [s, *headers])]
        if not todo:
            return
        clang, vmlinux_h, bpftool = self._toolchain()
        arch = TARGET_ARCH[_machine()]
        with tempfile.TemporaryDirectory(prefix="bpfloom-build-") as tmp:
            include = Path(tmp)
            if vmlinux_h:
                shutil.copy(vmlinux_h, include / "vmlinux.h")
            else:
                self._dump_vmlinux_h(bpftool, include / "vmlinux.h")
            for source, obj in todo:
                cmd = [
                    clang, *BPF_CFLAGS, f"-D__TARGET_ARCH_{arch}",
                    f"-I{include}", f"-I{BPF_DIR}", "-c", str(source), "-o", str(obj),
                ]  # fmt: skip
                self.announce(" ".join(cmd), level=2)
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    hint = ""
                    if "bpf/bpf_helpers.h" in proc.stderr and "not found" in proc.stderr:
                        hint = " (libbpf's headers are missing: Debian libbpf-dev)"
                    raise SetupError(
                        f"bpfloom: compiling {source} failed{hint}:\n{proc.stderr.strip()}"
                    )

    @staticmethod
    def _toolchain() -> tuple[str, str | None, str | None]:
        """clang, a given vmlinux.h, bpftool; one error naming everything missing."""
        missing = []
        clang = os.environ.get("CLANG") or next(filter(None, map(shutil.which, CLANGS)), None)
        if clang is None:
            missing.append("clang (Debian: clang-16; or set CLANG=/path/to/clang)")
        vmlinux_h = os.environ.get("BPFLOOM_VMLINUX_H")
        bpftool = os.environ.get("BPFTOOL") or shutil.which("bpftool")
        if vmlinux_h:
            if not os.path.exists(vmlinux_h):
                missing.append(f"BPFLOOM_VMLINUX_H={vmlinux_h} (no such file)")
        else:
            if bpftool is None:
                missing.append("bpftool (Debian: bpftool; or set BPFTOOL=/path/to/bpftool)")
            if not os.path.exists(BTF):
                missing.append(
                    f"this kernel's BTF ({BTF}); or set BPFLOOM_VMLINUX_H to a vmlinux.h"
                )
        if missing:
            raise SetupError(
                "bpfloom: building the BPF objects from source needs "
                + "; ".join(missing)
                + ". Or install bpfloom's wheel, which has them built."
            )
        assert clang is not None
        return clang, vmlinux_h, bpftool

    @staticmethod
    def _dump_vmlinux_h(bpftool: str | None, path: Path) -> None:
        assert bpftool is not None
        cmd = [bpftool, "btf", "dump", "file", BTF, "format", "c"]
        with open(path, "w") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            raise SetupError(f"bpfloom: {' '.join(cmd)} failed: {proc.stderr.strip()}")


class bdist_wheel_linux(bdist_wheel):
    """A wheel for this machine's architecture, on Linux, for any Python 3 (see above)."""

    def get_tag(self) -> tuple[str, str, str]:
        machine = _machine()
        return "py3", "none", f"manylinux_2_17_{machine}.manylinux2014_{machine}"


class PlatformDistribution(Distribution):
    """A distribution that is not pure: the wheel's files go to platlib, at its root
    (a pure one would put them under .data/purelib of a platform wheel)."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    distclass=PlatformDistribution,
    cmdclass={"build_py": build_py_with_bpf, "bdist_wheel": bdist_wheel_linux},
)
