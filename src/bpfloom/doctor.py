"""What this host can do with BPF, and why not: the checks behind ``bpfloom doctor``.

Each check is one line: a name, a status, what was found, and for a problem what to do.
Facts are read from the kernel's own files (``/proc/sys``, ``/proc/self/status``,
``/proc/self/mounts``, ``/sys/kernel/btf``, securityfs); what a kernel can *run* is
found by trying: ``libbpf_probe_bpf_prog_type`` for the program type, then the tiny
programs of ``bpf/doctor.bpf.c`` loaded one at a time and attached where loading alone
does not tell (a kprobe program loads on a kernel without kprobes; an fentry program
needs trampolines only at load of a real target), and a record sent through a ring
buffer and a perf buffer (``bpf/doctor_buffers.bpf.c``) and read back with bpfloom's
own readers.

Which kinds are *needed* is read from the built-in objects' section names, so the
verdict follows the tools: a missing kind that no built-in tool uses is a warning, one
that a tool uses fails the check. ``Report.can_run`` is true when nothing failed.

Running it as root may mount tracefs and bpffs, as every tool does; the mount lines
say what was there before.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _env, _libbpf, _syscalls
from ._exceptions import BpfloomError

OK, INFO, WARN, FAIL, SKIP = "ok", "info", "warn", "fail", "skip"

BTF_PATH = "/sys/kernel/btf/vmlinux"
DEBUGFS = "/sys/kernel/debug"
_SYSCTL = "/proc/sys"
CAP_NAMES = {
    _env.CAP_BPF: "CAP_BPF",
    _env.CAP_PERFMON: "CAP_PERFMON",
    _env.CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    _env.CAP_NET_ADMIN: "CAP_NET_ADMIN",
}

# enum bpf_prog_type and enum bpf_map_type (include/uapi/linux/bpf.h)
_PROG_TYPES = {
    "tracepoint": 5,  # BPF_PROG_TYPE_TRACEPOINT
    "raw_tp": 17,  # BPF_PROG_TYPE_RAW_TRACEPOINT
    "tp_btf": 26,  # BPF_PROG_TYPE_TRACING
    "kprobe": 2,  # BPF_PROG_TYPE_KPROBE
    "fentry": 26,  # BPF_PROG_TYPE_TRACING
    "uprobe": 2,  # BPF_PROG_TYPE_KPROBE
    "perf_event": 7,  # BPF_PROG_TYPE_PERF_EVENT
    "xdp": 6,  # BPF_PROG_TYPE_XDP
    "tc": 3,  # BPF_PROG_TYPE_SCHED_CLS
    "cgroup": 8,  # BPF_PROG_TYPE_CGROUP_SKB
}
KINDS = tuple(_PROG_TYPES)
_MAP_RINGBUF = 27
_MAP_PERF_EVENT_ARRAY = 4

# Section names (libbpf's section_defs, up to the first "/" or ".") → the kind of hook.
_SECTION_KINDS = {
    **dict.fromkeys(("tracepoint", "tp"), "tracepoint"),
    **dict.fromkeys(("raw_tp", "raw_tracepoint"), "raw_tp"),
    "tp_btf": "tp_btf",
    **dict.fromkeys(("kprobe", "kretprobe", "ksyscall", "kretsyscall"), "kprobe"),
    **dict.fromkeys(("fentry", "fexit", "fmod_ret", "lsm"), "fentry"),
    **dict.fromkeys(("uprobe", "uretprobe", "usdt"), "uprobe"),
    "perf_event": "perf_event",
    "xdp": "xdp",
    **dict.fromkeys(("tc", "classifier", "action"), "tc"),
}

# Kernel functions that are in every recent kernel's BTF and harmless to probe briefly.
_PROBE_FUNCTIONS = ("do_nanosleep", "hrtimer_nanosleep", "vfs_getattr", "vfs_read")

# What to do when a kind does not work, by kind.
_KIND_FIX = {
    "tracepoint": "a kernel with CONFIG_TRACEPOINTS and CONFIG_FTRACE_SYSCALLS, and tracefs "
    "mounted (see the tracefs line)",
    "raw_tp": "Linux 4.17 or later",
    "tp_btf": "Linux 5.5 or later with BTF (CONFIG_DEBUG_INFO_BTF=y)",
    "kprobe": "a kernel with CONFIG_KPROBES and CONFIG_KPROBE_EVENTS; meanwhile use "
    'SEC("tracepoint/...") or SEC("tp_btf/...") in objects you run',
    "fentry": "a kernel with BPF trampolines (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS, x86-64 "
    'or arm64, Linux 5.5+); meanwhile use SEC("tp_btf/...") for typed arguments',
    "uprobe": "a kernel with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS",
    "perf_event": "a kernel with CONFIG_PERF_EVENTS, and CAP_PERFMON (or "
    "kernel.perf_event_paranoid <= 0)",
    "xdp": "a kernel with CONFIG_NET and XDP; attaching needs CAP_NET_ADMIN",
    "tc": "a kernel with CONFIG_NET_CLS_BPF and CONFIG_NET_SCH_INGRESS; attaching needs "
    "CAP_NET_ADMIN",
    "cgroup": "a kernel with CONFIG_CGROUP_BPF; attaching needs cgroup v2",
}
_PRIVILEGE_FIX = (
    "run as root (sudo bpfloom ...), or give the process CAP_BPF and CAP_PERFMON "
    "(e.g. sudo setpriv --inh-caps=+bpf,+perfmon --ambient-caps=+bpf,+perfmon bpfloom ...)"
)


@dataclass
class Check:
    """One line of the report: ``status`` is ok, info, warn (missing, but nothing built
    in needs it), fail (something built in needs it) or skip (could not be tried)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class Report:
    """Every check, and for each built-in program (tool) the kinds of hook it needs and
    whether they all work here."""

    checks: list[Check] = field(default_factory=list)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def can_run(self) -> bool:
        """Whether bpfloom's tools can run here: no check failed."""
        return all(c.status != FAIL for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "can_run": self.can_run,
            "kernel": platform.release(),
            "machine": platform.machine(),
            "checks": [c.as_dict() for c in self.checks],
            "tools": self.tools,
        }


# --- reading the host ----------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _sysctl(name: str) -> str | None:
    return _read(os.path.join(_SYSCTL, *name.split(".")))


def section_kind(section: str) -> str | None:
    """The kind of hook a program's ``SEC()`` name attaches to (None: not a hook, e.g.
    ``syscall``)."""
    if section.startswith("cgroup"):
        return "cgroup"
    return _SECTION_KINDS.get(section.split("/", 1)[0].split(".", 1)[0])


def builtin_objects() -> dict[str, Path | None]:
    """Every built-in BPF program by name (``execsnoop``), with its built object or None
    when it is not built; the doctor's own probes left out."""
    from .bpf import HERE

    names = sorted(p.name.removesuffix(".bpf.c") for p in HERE.glob("*.bpf.c"))
    out: dict[str, Path | None] = {}
    for name in names:
        if name.startswith("doctor"):
            continue
        built = HERE / f"{name}.bpf.o"
        out[name] = built if built.exists() else None
    return out


def object_kinds(path: Path) -> list[str]:
    """The kinds of hook the programs of object ``path`` attach to (from its ELF section
    names: the code sections)."""
    from elftools.elf.elffile import ELFFile

    kinds: set[str] = set()
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if section["sh_flags"] & 0x4 and section.name != ".text":  # SHF_EXECINSTR
                kind = section_kind(section.name)
                if kind:
                    kinds.add(kind)
    return sorted(kinds, key=KINDS.index)


# --- the checks ----------------------------------------------------------------------


def _kernel() -> Check:
    release = platform.release()
    return Check("kernel", OK, f"Linux {release} ({platform.machine()})")


def _btf() -> Check:
    try:
        size = os.path.getsize(BTF_PATH)
    except OSError:
        return Check(
            "btf",
            FAIL,
            f"no kernel BTF ({BTF_PATH} is missing): CO-RE objects cannot be relocated",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distributions since 2020)",
        )
    return Check("btf", OK, f"{BTF_PATH} ({size / 1e6:.1f} MB)")


def _jit() -> Check:
    value = _sysctl("net.core.bpf_jit_enable")
    if value is None:
        return Check(
            "jit",
            WARN,
            "net.core.bpf_jit_enable cannot be read: no JIT, programs are interpreted",
            "a kernel with CONFIG_BPF_JIT runs programs several times faster",
        )
    if value == "0":
        return Check(
            "jit",
            WARN,
            "net.core.bpf_jit_enable = 0: programs are interpreted (slower)",
            "sysctl -w net.core.bpf_jit_enable=1",
        )
    mode = "enabled" if value == "1" else f"enabled, debug level {value}"
    return Check("jit", OK, f"{mode} (net.core.bpf_jit_enable = {value})")


def held_capabilities() -> list[str]:
    """Which of CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_NET_ADMIN the caller holds."""
    caps = _env.effective_capabilities()
    return [name for cap, name in CAP_NAMES.items() if caps & (1 << cap)]


def can_load() -> bool:
    """Whether the caller's capabilities let it load programs and open perf events."""
    held = set(held_capabilities())
    return "CAP_SYS_ADMIN" in held or {"CAP_BPF", "CAP_PERFMON"} <= held


def _capabilities() -> Check:
    held = held_capabilities()
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    listed = ", ".join(f"{name} {'yes' if name in held else 'no'}" for name in CAP_NAMES.values())
    last_cap = _read("/proc/sys/kernel/cap_last_cap")
    if not can_load():
        detail = f"{who}: {listed}; loading programs needs CAP_BPF and CAP_PERFMON"
        if last_cap is not None and int(last_cap) < _env.CAP_BPF:
            detail += " (this kernel predates them: CAP_SYS_ADMIN)"
        return Check("capabilities", FAIL, detail, _PRIVILEGE_FIX)
    if "CAP_NET_ADMIN" not in held and "CAP_SYS_ADMIN" not in held:
        return Check(
            "capabilities",
            WARN,
            f"{who}: {listed}; XDP and tc programs (bpfloom run) need CAP_NET_ADMIN",
            "add CAP_NET_ADMIN to attach networking programs",
        )
    return Check("capabilities", OK, f"{who}: {listed}")


def _unprivileged() -> Check:
    value = _sysctl("kernel.unprivileged_bpf_disabled")
    meaning = {
        "0": "allowed: any user may load socket filters",
        "1": "disabled until reboot",
        "2": "disabled (an administrator may re-enable it)",
    }
    if value is None:
        return Check("unprivileged_bpf", INFO, "kernel.unprivileged_bpf_disabled cannot be read")
    return Check(
        "unprivileged_bpf",
        INFO,
        f"kernel.unprivileged_bpf_disabled = {value}: {meaning.get(value, 'unknown value')}; "
        "bpfloom's tools need CAP_BPF and CAP_PERFMON either way",
    )


def _mounts() -> list[Check]:
    mounts = _env._mounted_types()
    root = os.geteuid() == 0
    checks = []
    for name, fstype, target, command in (
        ("tracefs", "tracefs", _env.TRACEFS, f"mount -t tracefs nodev {_env.TRACEFS}"),
        ("bpffs", "bpf", _env.BPFFS, f"mount -t bpf -o mode=0700 bpf {_env.BPFFS}"),
    ):
        where = [p for p, t in mounts.items() if t == fstype]
        if target in where or (fstype == "tracefs" and f"{DEBUGFS}/tracing" in where):
            at = target if target in where else f"{DEBUGFS}/tracing"
            checks.append(Check(name, OK, f"mounted at {at}"))
        elif root:
            checks.append(
                Check(name, OK, f"not mounted at {target}; bpfloom mounts it there as root")
            )
        else:
            checks.append(Check(name, FAIL, f"not mounted at {target}", f"as root: {command}"))
    if mounts.get(DEBUGFS) == "debugfs":
        checks.append(Check("debugfs", OK, f"mounted at {DEBUGFS}"))
    else:
        checks.append(
            Check(
                "debugfs",
                INFO,
                f"not mounted at {DEBUGFS}; bpfloom does not need it (tracefs has its own "
                "mount), older tools look for /sys/kernel/debug/tracing",
                f"for those: mount -t debugfs none {DEBUGFS}",
            )
        )
    return checks


def _lockdown() -> Check:
    mode = _env.lockdown_mode()
    if mode is None:
        return Check(
            "lockdown",
            INFO,
            "unknown (/sys/kernel/security/lockdown cannot be read; securityfs not mounted, "
            "or no lockdown LSM)",
        )
    if mode == "confidentiality":
        return Check(
            "lockdown",
            FAIL,
            "confidentiality: the kernel refuses BPF programs that read kernel memory",
            "boot with lockdown=integrity or none (or turn Secure Boot's lockdown off)",
        )
    if mode == "integrity":
        return Check("lockdown", OK, "integrity: tracing works; bpf_probe_write_user is refused")
    return Check("lockdown", OK, mode)


def _libbpf_check() -> Check:
    version = _libbpf.cstr(_libbpf.version_string())
    where = _libbpf.library_path() or "libbpf.so.1"
    return Check("libbpf", OK, f"{version} ({where})")


def _objects(objects: dict[str, Path | None]) -> Check:
    missing = [name for name, path in objects.items() if path is None]
    from .bpf import HERE

    if missing:
        return Check(
            "objects",
            FAIL,
            f"not built: {', '.join(missing)} (in {HERE})",
            "in a source tree run `make bpf`; or install the bpfloom wheel, which has them",
        )
    return Check("objects", OK, f"{len(objects)} built-in programs in {HERE}")


# --- trying program kinds ----------------------------------------------------------------


def _probe_function() -> str | None:
    """A kernel function of this kernel's BTF for the kprobe and fentry probes."""
    btf = _libbpf.load_vmlinux_btf()
    if btf is None:
        return None
    try:
        for name in _PROBE_FUNCTIONS:
            if _libbpf.btf_find_by_name_kind(btf, name.encode(), 12) > 0:  # BTF_KIND_FUNC
                return name
    finally:
        _libbpf.btf_free(btf)
    return None


def _libc_path() -> str | None:
    """The C library this process mapped (a binary every system has, for the uprobe)."""
    maps = _read("/proc/self/maps") or ""
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if len(line.split()) >= 6 else ""
        if "/libc.so" in path or "/libc-" in path:
            return path
    return None


@contextlib.contextmanager
def _probe_object(program: str) -> Iterator[Any]:
    """doctor.bpf.o opened with only ``program`` to be loaded."""
    from .bpf import object_path
    from .object import BpfObject

    with BpfObject(object_path("doctor")) as obj:
        for prog in obj.programs.values():
            prog.autoload = prog.name == program
        yield obj


def _try_kind(kind: str, function: str | None) -> tuple[bool, str]:
    """Load (and where that does not tell, attach) the probe of ``kind``: whether it
    works, and what happened."""
    # libbpf's probe loads a type's smallest program; for tracing programs it reads a
    # verifier message that differs between kernels, so only a real load decides.
    known = _libbpf.probe_prog_type(_PROG_TYPES[kind], None) == 1
    tracing = _PROG_TYPES[kind] == _PROG_TYPES["fentry"]
    unknown = "" if known or tracing else " (libbpf's probe finds no such program type)"
    program = f"probe_{kind}"
    with _probe_object(program) as obj:
        prog = obj.program(program)
        if kind in ("kprobe", "fentry"):
            if function is None:
                return False, "no probe function found in this kernel's BTF"
            if kind == "fentry":
                prog.set_attach_target(function)
        try:
            obj.load()
        except BpfloomError as exc:
            return False, f"does not load: {_reason(exc)}{unknown}"
        attach: Callable[[], Any] | None = {
            "tracepoint": prog.attach,
            "raw_tp": prog.attach,
            "tp_btf": prog.attach,
            "fentry": prog.attach,
            "kprobe": lambda: prog.attach_kprobe(function or ""),
            "uprobe": lambda: _attach_uprobe(prog),
            "perf_event": lambda: _attach_perf_event(prog),
        }.get(kind)
        if attach is None:
            target = "a cgroup" if kind == "cgroup" else "a network interface"
            return True, f"loads (attaching needs {target}: not tried)"
        try:
            link = attach()
        except (BpfloomError, OSError) as exc:
            return False, f"loads, but does not attach: {_reason(exc)}"
        hook = link.hook
        link.close()
        return True, f"loads and attaches ({hook})"


def _attach_perf_event(prog: Any) -> Any:
    """On a cpu-clock event of CPU 0; the link owns the event's fd once attached."""
    fd = _syscalls.perf_event_open_cpu_clock(0)
    try:
        return prog.attach_perf_event(fd)
    except BaseException:
        os.close(fd)
        raise


def _attach_uprobe(prog: Any) -> Any:
    libc = _libc_path()
    if libc is None:
        raise BpfloomError("no C library mapped in this process to attach to")
    return prog.attach_uprobe(libc, "getpid", pid=os.getpid())


def _reason(exc: BaseException) -> str:
    """Why a load or attach failed, short: the first line of the error, without our
    own 'cannot attach program ... to HOOK:' lead, libbpf's parenthesised details or
    the advice that the line's fix gives anyway."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if text.startswith("the kernel refused to load") and "): " in text:
        text = text.split("): ", 1)[1]  # after "(SEC '...': program type ..., attach type ...)"
    elif text.startswith(("cannot attach program", "the kernel refused to load")):
        text = text.split(": ", 1)[-1]
    for cut in ("; use ", ". Use ", " (failed ", " (libbpf", " (as do ", "; not a permission"):
        text = text.split(cut, 1)[0]
    return text


def _kinds(needed: dict[str, set[str]], skip: str | None) -> list[Check]:
    """A line per kind of program: tried, or not (``skip`` says why)."""
    checks = []
    function = _probe_function() if skip is None else None
    for kind in KINDS:
        users = sorted(needed.get(kind, ()))
        used_by = f"; used by {', '.join(users)}" if users else ""
        if skip is not None:
            checks.append(Check(kind, SKIP, f"not tried: {skip}{used_by}"))
            continue
        works, detail = _try_kind(kind, function)
        if works:
            checks.append(Check(kind, OK, detail + used_by))
        else:
            status = FAIL if users else WARN
            fix = _KIND_FIX[kind]
            if not users:
                detail += "; no built-in tool needs it"
            checks.append(Check(kind, status, detail + used_by, fix))
    return checks


def _buffers(skip: str | None, tracepoints: bool) -> list[Check]:
    """A record through a ring buffer and one through a perf buffer, read back."""
    names = (("ring_buffer", "ring", _MAP_RINGBUF), ("perf_buffer", "perf", _MAP_PERF_EVENT_ARRAY))
    if skip is not None or not tracepoints:
        why = skip or "tracepoints do not work"
        return [Check(name, SKIP, f"not tried: {why}") for name, _, _ in names]
    checks: dict[str, Check] = {}
    for name, _, map_type in names:
        if _libbpf.probe_map_type(map_type, None) == 0:
            fix = "Linux 5.8 or later" if name == "ring_buffer" else "CONFIG_PERF_EVENTS"
            checks[name] = Check(name, FAIL, "this kernel has no such map type", fix)
    if checks:
        return [checks.get(name) or Check(name, SKIP, "not tried") for name, _, _ in names]
    from .bpf import object_path
    from .object import BpfObject

    out = []
    with BpfObject(object_path("doctor_buffers")) as obj:
        obj.globals["target_tgid"] = os.getpid()
        try:
            obj.load()
            obj.attach_all()
            ring = obj.ring_buffer("ring")
            readers: dict[str, Any] = {"ring": ring, "perf": obj.perf_buffer("perf", pages=1)}
        except BpfloomError as exc:
            return [Check(n, FAIL, _reason(exc), "see the lines above") for n, _, _ in names]
        os.getppid()
        for name, buffer, _ in names:
            reader = readers[buffer]
            batch = reader.read(timeout=5)
            records = [r for r in batch if r.magic == 0x646F63746F72 and r.tgid == os.getpid()]
            if len(records) == 1:
                how = f" (the {ring.consumer} walker)" if buffer == "ring" else ""
                out.append(Check(name, OK, f"a record written by a program came back{how}"))
            else:
                out.append(
                    Check(
                        name,
                        FAIL,
                        f"a program's record did not come back ({len(batch)} records read)",
                        "report this: the kernel accepted the buffer but nothing arrived",
                    )
                )
    return out


def _tools(objects: dict[str, Path | None], checks: list[Check]) -> dict[str, dict[str, Any]]:
    working = {c.name for c in checks if c.status == OK}
    tools: dict[str, dict[str, Any]] = {}
    for name, path in objects.items():
        kinds = object_kinds(path) if path is not None else []
        missing = [k for k in kinds if k not in working]
        tools[name] = {"kinds": kinds, "runs": path is not None and not missing}
    return tools


def diagnose() -> Report:
    """Every check, in order; never raises for what the host lacks (that is a line)."""
    report = Report()
    checks = report.checks
    checks += [_kernel(), _btf(), _jit(), _capabilities(), _unprivileged()]
    checks += _mounts()
    checks += [_lockdown(), _libbpf_check()]
    objects = builtin_objects()
    checks.append(_objects(objects))
    needed: dict[str, set[str]] = {}
    for name, path in objects.items():
        for kind in object_kinds(path) if path is not None else []:
            needed.setdefault(kind, set()).add(name)
    from .bpf import HERE

    skip = None
    if not can_load():
        skip = "loading programs needs privileges"
    elif not all((HERE / f"{name}.bpf.o").exists() for name in ("doctor", "doctor_buffers")):
        skip = "the doctor's own probes (doctor.bpf.o, doctor_buffers.bpf.o) are not built"
        checks.append(Check("probes", FAIL, skip, "in a source tree run `make bpf`"))
    checks += _kinds(needed, skip)
    tracepoints = any(c.name == "tracepoint" and c.status == OK for c in checks)
    checks += _buffers(skip, tracepoints)
    report.tools = _tools(objects, checks)
    if skip is None:
        cannot = [name for name, t in report.tools.items() if not t["runs"]]
        if cannot:
            checks.append(
                Check("tools", FAIL, f"cannot run here: {', '.join(cannot)}", "see the lines above")
            )
        else:
            checks.append(Check("tools", OK, f"all {len(report.tools)} built-in programs can run"))
    return report
