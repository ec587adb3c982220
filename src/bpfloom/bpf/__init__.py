"""bpfloom's own BPF programs: the ``*.bpf.c`` sources here are built by ``make bpf``
into ``*.bpf.o`` beside them (the project's build; no binary objects are committed)."""

from __future__ import annotations

from pathlib import Path

from .._exceptions import ObjectFileError

HERE = Path(__file__).resolve().parent


def object_path(name: str) -> Path:
    """Path of the built object ``name`` (e.g. ``"exec"`` → ``exec.bpf.o``)."""
    path = HERE / f"{name}.bpf.o"
    if not path.exists():
        if not (HERE / f"{name}.bpf.c").exists():
            raise ObjectFileError(f"bpfloom has no built-in BPF program {name!r}")
        raise ObjectFileError(
            f"the built-in BPF object {path.name} is not built; run `make bpf` in the "
            "bpfloom source tree"
        )
    return path
