"""arm64 on an x86 machine: what bpfloom's BPF programs and tables assume about arm64,
checked against the sources those facts come from — arm64's uapi headers (Debian's
linux-libc-dev-arm64-cross, installed by scripts/setup.sh) and the Go toolchain's own
ABI description and register tables (golang-go's GOROOT). ``make bpf-check-arm64``
compiles every object for arm64; the syscall table's generator reads arm64's
``asm/unistd.h`` (tests/test_syscount.py checks the committed table is its output)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bpfloom.tools.syscalls import SYSCALLS
from conftest import BPF_CFLAGS, CLANG, ROOT

ARM64_INCLUDE = Path("/usr/aarch64-linux-gnu/include")
BPF_DIR = ROOT / "src" / "bpfloom" / "bpf"
NOT_SYSCALLS = ("__NR_syscalls", "__NR_arch_specific_syscall")


def _arm64_header(name: str) -> Path:
    path = ARM64_INCLUDE / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install linux-libc-dev-arm64-cross (scripts/setup.sh)")
    return path


def _struct_members(text: str, name: str) -> list[tuple[str, str]]:
    """(type, declarator) of each member of ``struct name { ... }`` in C ``text``."""
    found = re.search(rf"struct {name} \{{(.*?)\}}", text, re.DOTALL)
    assert found, f"no struct {name}"
    members = []
    for decl in found.group(1).split(";"):
        words = decl.split()
        if words:
            members.append((" ".join(words[:-1]), words[-1]))
    return members


def test_user_pt_regs_of_bpfloom_h_is_arm64s() -> None:
    """bpfloom.h declares arm64's ``struct user_pt_regs`` when the vmlinux.h is another
    architecture's; it must be the uapi header's layout, member for member."""
    uapi = _struct_members(_arm64_header("asm/ptrace.h").read_text(), "user_pt_regs")
    ours = _struct_members((BPF_DIR / "bpfloom.h").read_text(), "user_pt_regs")
    assert ours == uapi
    assert uapi[0] == ("__u64", "regs[31]")  # x0..x30: regs[i] is register Xi (Go's Ri)


def _go_root() -> Path:
    out = subprocess.run(["go", "env", "GOROOT"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def _go_param_registers(goarch: str) -> list[str]:
    """Go's integer argument registers for ``goarch``, in order, from the compiler's own
    register table (``ParamIntRegNames`` in cmd/compile/internal/ssa/{gen,_gen}/*Ops.go),
    cross-checked with the ABI document (cmd/compile/abi-internal.md)."""
    root = _go_root() / "src" / "cmd" / "compile"
    ops_name = {"amd64": "AMD64Ops.go", "arm64": "ARM64Ops.go"}[goarch]
    ops = [p for d in ("gen", "_gen") if (p := root / "internal" / "ssa" / d / ops_name).exists()]
    assert ops, f"no {ops_name} under {root}"
    found = re.search(r'ParamIntRegNames:\s*"([^"]+)"', ops[0].read_text())
    assert found, f"no ParamIntRegNames in {ops[0]}"
    registers = found.group(1).split()

    doc = (root / "abi-internal.md").read_text()
    if goarch == "amd64":
        listed = re.search(
            r"amd64 architecture uses the following sequence[^\n]*\n[^\n]*\n\n\s+(.+)\n", doc
        )
        assert listed
        assert [r.strip().removeprefix("R") for r in listed.group(1).split(",")][:3] == [
            r.removeprefix("R") for r in registers[:3]
        ]
    else:
        listed = re.search(r"arm64 architecture uses R0 \W+ R(\d+) for integer arguments", doc)
        assert listed
        assert registers == [f"R{i}" for i in range(int(listed.group(1)) + 1)]
    return registers


def _register_reads(arch: str) -> dict[str, str]:
    """What goroutines.bpf.c assigns to gp, oldval and newval from the registers (the
    register ABI branch), and to sp, preprocessed for ``arch`` as clang sees it."""
    flags = [f for f in BPF_CFLAGS if not f.startswith("-D__TARGET_ARCH_")]
    cmd = [CLANG, *flags, f"-D__TARGET_ARCH_{arch}", "-DBPFLOOM_FOREIGN_VMLINUX", "-E", "-P"]
    cmd += [f"-I{ROOT / 'build'}", f"-I{BPF_DIR}", str(BPF_DIR / "goroutines.bpf.c")]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    body = out[out.index("int casgstatus(") :]
    body = body[: body.index("bpf_probe_read_user(&goid")]
    register_branch = body[body.index("} else {") :]
    reads = {}
    for name in ("gp", "oldval", "newval"):
        found = re.search(rf"\b{name} = (?:\(__u32\))?(.+?);", register_branch)
        assert found, f"{name} is not read from a register"
        reads[name] = found.group(1)
    found = re.search(r"__u64 sp = (.+?), states;", body)
    assert found
    reads["sp"] = found.group(1)
    return reads


def test_goroutine_register_reads_on_arm64_are_gos_first_three_argument_registers() -> None:
    reads = _register_reads("arm64")
    pattern = re.compile(r"\(\(\(const struct user_pt_regs \*\)\(ctx\)\)->regs\[(\d+)\]\)")
    regs = [pattern.fullmatch(reads[name]) for name in ("gp", "oldval", "newval")]
    assert all(regs), reads
    read = [f"R{int(m.group(1))}" for m in regs if m]
    assert read == _go_param_registers("arm64")[:3]  # casgstatus(gp, oldval, newval)
    assert reads["sp"] == "(((const struct user_pt_regs *)(ctx))->sp)"


def test_goroutine_register_reads_on_amd64_are_gos_first_three_argument_registers() -> None:
    reads = _register_reads("x86")
    read = [reads[name].removeprefix("ctx->").upper() for name in ("gp", "oldval", "newval")]
    assert read == _go_param_registers("amd64")[:3]


def test_syscall_table_of_aarch64_is_arm64s_unistd_h() -> None:
    """The aarch64 table holds every call arm64's own asm/unistd.h defines, by the
    numbers it gives (the calls newer than the headers come on top)."""
    header = _arm64_header("asm/unistd.h")
    out = subprocess.run(
        ["gcc", "-E", "-dM", "-nostdinc", f"-I{ARM64_INCLUDE}", str(header)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    values = dict(re.findall(r"^#define (__NR\w+) (\w+)$", out, re.MULTILINE))
    defined = {}
    for macro, value in values.items():
        if macro.startswith("__NR_") and macro not in NOT_SYSCALLS:
            defined[int(values.get(value, value))] = macro.removeprefix("__NR_")
    assert len(defined) > 300
    table = SYSCALLS["aarch64"]
    assert {nr: table[nr] for nr in defined} == defined
    assert all(nr > max(defined) for nr in set(table) - set(defined))
