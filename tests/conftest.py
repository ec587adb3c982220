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
