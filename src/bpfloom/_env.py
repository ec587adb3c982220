"""The kernel interfaces bpfloom needs, checked (and mounted when root) before use.

A fresh machine may have neither tracefs (tracepoint ids live there) nor bpffs. As
root we mount them where libbpf looks; otherwise we say exactly what to run. Both stay
mounted when bpfloom exits, as they would after a boot that mounted them: other tools
(bpftool, systemd) expect them there. bpffs is mounted with mode 0700, as systemd
mounts it, so that only root can pin objects there; tracefs with its default mode
(0700). Missing privileges are reported up front, before libbpf fails with a bare
EPERM.
"""

from __future__ import annotations

import os
import threading

from . import _syscalls
from ._exceptions import BpfPermissionError, EnvironmentSetupError

TRACEFS = "/sys/kernel/tracing"
BPFFS = "/sys/fs/bpf"
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_lock = threading.Lock()
_ready = False


def _mounted_types() -> dict[str, str]:
    """Mount point → filesystem type, from /proc/self/mounts."""
    out: dict[str, str] = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[1]] = parts[2]
    return out


def effective_capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def kprobes_available() -> bool:
    """Whether this kernel can attach kprobes (its "kprobe" perf PMU, which libbpf
    uses, or tracefs' kprobe_events exists)."""
    return os.path.exists("/sys/bus/event_source/devices/kprobe") or os.path.exists(
        os.path.join(TRACEFS, "kprobe_events")
    )


def lockdown_mode() -> str | None:
    """The kernel's lockdown mode (``none``, ``integrity``, ``confidentiality``), or
    None when securityfs does not say."""
    try:
        with open("/sys/kernel/security/lockdown") as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def check_privileges() -> None:
    """Raise ``BpfPermissionError`` unless we may load BPF and open perf events."""
    caps = effective_capabilities()

    def has(cap: int) -> bool:
        return bool(caps & (1 << cap))

    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        return
    raise BpfPermissionError(
        "loading eBPF programs needs root, or the capabilities CAP_BPF and CAP_PERFMON "
        "(e.g. run with sudo)"
    )


def _ensure_mount(target: str, fstype: str, hint: str) -> None:
    mounts = _mounted_types()
    if mounts.get(target) == fstype:
        return
    if fstype == "tracefs" and mounts.get("/sys/kernel/debug/tracing") == "tracefs":
        return
    if os.geteuid() != 0:
        raise EnvironmentSetupError(f"{fstype} is not mounted at {target}; run as root: {hint}")
    try:
        os.makedirs(target, exist_ok=True)
        if fstype == "tracefs":
            _syscalls.mount("nodev", target, fstype)
        else:
            _syscalls.mount("bpf", target, fstype, "mode=0700")
    except OSError as exc:
        raise EnvironmentSetupError(
            f"{fstype} is not mounted at {target} and mounting it failed ({exc.strerror}); "
            f"run: {hint}",
            errno=exc.errno,
        ) from exc


def prepare() -> None:
    """Check privileges and mount tracefs and bpffs if needed (once per process)."""
    global _ready
    with _lock:
        if _ready:
            return
        check_privileges()
        _ensure_mount(TRACEFS, "tracefs", f"mount -t tracefs nodev {TRACEFS}")
        _ensure_mount(BPFFS, "bpf", f"mount -t bpf -o mode=0700 bpf {BPFFS}")
        _ready = True
