"""A BPF object file: open → set globals → load (verifier) → attach → read events.

``BpfObject`` follows libbpf's life cycle. Opening parses the ELF (no kernel
involved); globals of ``.rodata``/``.data``/``.bss`` can then be set by name with
Python values typed from BTF; ``load()`` hands everything to the verifier;
programs are attached by their ``SEC()`` name (``attach_all``) or explicitly with
run-time targets (``Program.attach_tracepoint``/``attach_uprobe``/``attach_xdp``/
``attach_tc``). Objects, links and readers are context managers whose ``close()`` is
idempotent; closing the object closes every link and reader made from it, so nothing
of ours stays in the kernel. An object that failed to load or was closed refuses
further use with ``ClosedError``; a loaded-only method on an opened object raises
``NotLoadedError``, a set-up method on a loaded one ``AlreadyLoadedError``; a name that
is not there (program, map, global) ``NotFoundError``.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _env, _libbpf
from ._exceptions import (
    AlreadyLoadedError,
    AttachError,
    BpfPermissionError,
    ClosedError,
    GlobalError,
    LoadError,
    NotFoundError,
    NotLoadedError,
    ObjectFileError,
    TypeInfoError,
)
from ._poller import DEFAULT_POLL_INTERVAL
from .btf import Btf, parse_btf
from .decode import STRING_POLICIES, Decoder, encode
from .maps import Map
from .typeinfo import TypeInfo
from .types import Datasec, Struct, Type, Var, describe, sizeof, strip

if TYPE_CHECKING:
    from .perfbuf import PerfBuffer
    from .ringbuf import RingBuffer
    from .targets import AttachTargets

ELF_MAGIC = b"\x7fELF"
EM_BPF = 247
DROPS_MAP = "bpfloom_drops"
WAKEUP_FLAGS_GLOBAL = "bpfloom_wakeup_flags"
BPF_RB_NO_WAKEUP = 1
BPF_RB_FORCE_WAKEUP = 2
_KPROBES = ("kprobe/", "kretprobe/", "ksyscall/", "kretsyscall/", "kprobe.multi/")
_NO_TRAMPOLINE = ("fentry/", "fexit/", "fmod_ret/", "fentry.s/", "fexit.s/", "lsm/")


class Link:
    """An attached program. ``close()`` detaches it (idempotent)."""

    def __init__(self, obj: BpfObject, ptr: int, program: str, hook: str) -> None:
        self._obj = obj
        self._ptr: int | None = ptr
        self.program = program
        self.hook = hook

    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else "attached"
        return f"<Link {self.program} -> {self.hook} ({state})>"

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            _libbpf.link_destroy(ptr)
            self._obj._forget(self)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcLink(Link):
    """A tc (clsact) filter: detached on close, and the clsact qdisc removed if we
    created it and no other filter of this object still sits on it."""

    def __init__(
        self,
        obj: BpfObject,
        program: str,
        hook: str,
        tc_hook: _libbpf.TcHook,
        opts: _libbpf.TcOpts,
        created_qdisc: bool,
    ) -> None:
        super().__init__(obj, 1, program, hook)
        self._tc_hook = tc_hook
        self._opts = opts
        self._created_qdisc = created_qdisc

    def close(self) -> None:
        if self._ptr is None:
            return
        self._ptr = None
        detach = _libbpf.tc_opts(handle=self._opts.handle, priority=self._opts.priority)
        _libbpf.tc_detach(_libbpf.byref(self._tc_hook), _libbpf.byref(detach))
        if self._created_qdisc:
            heir = next(
                (
                    link
                    for link in self._obj.links
                    if isinstance(link, TcLink)
                    and not link.closed
                    and link._tc_hook.ifindex == self._tc_hook.ifindex
                ),
                None,
            )
            if heir is not None:
                # Another filter of ours still sits on this clsact qdisc (the other
                # direction, or another program): the last one out removes it.
                heir._created_qdisc = True
            else:
                whole = _libbpf.tc_hook(
                    self._tc_hook.ifindex, _libbpf.BPF_TC_INGRESS | _libbpf.BPF_TC_EGRESS
                )
                _libbpf.tc_hook_destroy(_libbpf.byref(whole))
        self._obj._forget(self)


class XdpLink(Link):
    """An XDP program attached to an interface through a BPF link we created with
    ``bpf_link_create`` (to pass the mode flags): closing the link's fd detaches it."""

    def __init__(self, obj: BpfObject, fd: int, program: str, hook: str) -> None:
        super().__init__(obj, 1, program, hook)
        self.fd = fd

    def close(self) -> None:
        if self._ptr is None:
            return
        self._ptr = None
        os.close(self.fd)
        self._obj._forget(self)


class TcxLink(XdpLink):
    """A tc program attached through tcx (Linux 6.6+): a BPF link, no qdisc and no
    filter; closing its fd detaches it, and so does the end of the process, however it
    ends."""


# --xdp-mode names -> XDP_FLAGS_*_MODE (auto: 0, the kernel picks native if the driver
# has it, else generic)
XDP_MODES = {
    "auto": 0,
    "skb": _libbpf.XDP_FLAGS_SKB_MODE,
    "native": _libbpf.XDP_FLAGS_DRV_MODE,
    "offload": _libbpf.XDP_FLAGS_HW_MODE,
}


class Program:
    """One program of an object (``SEC()`` function)."""

    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name = _libbpf.cstr(_libbpf.program_name(ptr))
        self.section = _libbpf.cstr(_libbpf.program_section_name(ptr))
        #: Whether the program calls bpf_trace_printk/bpf_trace_vprintk (bpf_printk):
        #: its output then goes to tracefs' trace_pipe. Read from the instructions at
        #: open; libbpf may drop them once the object is loaded.
        self.uses_trace_printk = _calls_helper(ptr, TRACE_PRINTK_HELPERS)

    def __repr__(self) -> str:
        return f"<Program {self.name} SEC({self.section!r})>"

    @property
    def prog_type(self) -> int:
        """The kernel's ``enum bpf_prog_type`` value libbpf chose from the SEC()."""
        return int(_libbpf.program_type(self._ptr))

    @property
    def expected_attach_type(self) -> int:
        """The kernel's ``enum bpf_attach_type`` value libbpf chose from the SEC()."""
        return int(_libbpf.program_expected_attach_type(self._ptr))

    @property
    def is_xdp(self) -> bool:
        """An XDP program for an interface (not a devmap/cpumap one)."""
        return self.prog_type == _libbpf.BPF_PROG_TYPE_XDP and self.expected_attach_type in (
            0,
            _libbpf.BPF_XDP,
        )

    @property
    def is_tc(self) -> bool:
        """A tc classifier (``SEC("tc")``, ``SEC("classifier")``)."""
        return self.prog_type == _libbpf.BPF_PROG_TYPE_SCHED_CLS

    @property
    def kind(self) -> tuple[str, str]:
        """libbpf's names of the program type and expected attach type
        (``("tracing", "trace_fentry")``, ``("xdp", "xdp")``…)."""
        prog_type = _libbpf.program_type(self._ptr)
        attach_type = _libbpf.program_expected_attach_type(self._ptr)
        return (
            _libbpf.cstr(_libbpf.prog_type_str(prog_type)) or f"type {prog_type}",
            _libbpf.cstr(_libbpf.attach_type_str(attach_type)) or f"type {attach_type}",
        )

    @property
    def fd(self) -> int:
        self._obj._require_loaded(f"program {self.name!r}")
        return int(_libbpf.program_fd(self._ptr))

    @property
    def autoload(self) -> bool:
        return bool(_libbpf.program_autoload(self._ptr))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        self._obj._require_open("set autoload")
        _libbpf.check(_libbpf.program_set_autoload(self._ptr, value), "set autoload")

    def _attach_with(self, hook: str, call: Callable[[], int | None]) -> Link:
        """Attach with ``call`` (a libbpf attach function returning a link pointer, or
        NULL with errno set, or raising ``OSError``) and track the link."""
        self._obj._require_loaded(f"attach {self.name!r}")
        mark = _libbpf.log_mark()
        try:
            ptr = _libbpf.check_ptr(call(), "attach")
        except OSError as exc:
            raise _attach_error(self, hook, exc.errno or 22, _libbpf.log_since(mark)) from None
        return self._obj._track(Link(self._obj, ptr, self.name, hook))

    def attach(self) -> Link:
        """Attach by the ``SEC()`` name (e.g. ``tracepoint/sched/sched_process_exec``)."""
        return self._attach_with(self.section, lambda: _libbpf.program_attach(self._ptr))

    def attach_kprobe(self, function: str, *, retprobe: bool = False) -> Link:
        """Attach a kprobe (or kretprobe) program to kernel function ``function``."""
        kind = "kretprobe" if retprobe else "kprobe"
        return self._attach_with(
            f"{kind}/{function}",
            lambda: _libbpf.program_attach_kprobe(self._ptr, retprobe, function.encode()),
        )

    def attach_perf_event(self, perf_fd: int) -> Link:
        """Attach a perf_event program to the perf event ``perf_fd``; the link owns that
        descriptor from then on (libbpf closes it when the link is closed)."""
        return self._attach_with(
            f"perf_event fd {perf_fd}",
            lambda: _libbpf.program_attach_perf_event(self._ptr, perf_fd),
        )

    def set_attach_target(self, function: str) -> None:
        """Before load: the kernel function a program without one in its ``SEC()``
        (``SEC("fentry")``, ``SEC("tp_btf")``...) attaches to, found in vmlinux BTF."""
        self._obj._require_open("set attach target")
        _libbpf.check(
            _libbpf.program_set_attach_target(self._ptr, 0, function.encode()),
            f"set attach target of {self.name!r} to {function!r}",
        )

    def attach_tracepoint(self, category: str, name: str) -> Link:
        """Attach to tracepoint ``category/name`` (see /sys/kernel/tracing/events)."""
        hook = f"tracepoint {category}/{name}"
        return self._attach_with(
            hook,
            lambda: _libbpf.program_attach_tracepoint(self._ptr, category.encode(), name.encode()),
        )

    def attach_raw_tracepoint(self, name: str) -> Link:
        return self._attach_with(
            f"raw_tracepoint {name}",
            lambda: _libbpf.program_attach_raw_tracepoint(self._ptr, name.encode()),
        )

    def attach_uprobe(
        self,
        binary: str,
        symbol: str | None = None,
        *,
        offset: int = 0,
        pid: int = -1,
        retprobe: bool = False,
    ) -> Link:
        """Attach a uprobe (or uretprobe) to ``symbol`` (+``offset``) or ``offset`` in
        ``binary``; ``pid`` limits it to one process (-1: every process)."""
        path = _resolve_binary(binary)
        where = f"{path}:{symbol}" if symbol else f"{path}:0x{offset:x}"
        if symbol and offset:
            where += f"+0x{offset:x}"
        hook = f"{'uretprobe' if retprobe else 'uprobe'} {where}"
        if not os.path.exists(path):
            raise AttachError(
                f"cannot attach {self.name!r} to {hook}: no such file {path!r}",
                program=self.name,
                hook=hook,
            )
        try:
            return self._attach_with(
                hook,
                lambda: _libbpf.attach_uprobe(self._ptr, pid, path, offset, symbol, retprobe),
            )
        except AttachError as exc:
            if exc.errno != 2 or not symbol:  # ENOENT: the file is there, not the symbol
                raise
            raise AttachError(
                f"cannot attach program {self.name!r} to {hook}: function {symbol!r} "
                f"not found in {path!r}",
                errno=2,
                program=self.name,
                hook=hook,
            ) from None

    def attach_usdt(self, binary: str, provider: str, name: str, pid: int = -1) -> Link:
        """Attach to USDT probe ``provider:name`` of ``binary`` (every call site);
        ``pid`` limits it to one process (-1: every process).

        The program must be written with libbpf's ``<bpf/usdt.bpf.h>`` (``BPF_USDT``,
        ``bpf_usdt_arg``): libbpf fills that header's maps with where each call site
        keeps its arguments. ``SEC("usdt/PATH:PROVIDER:NAME")`` programs are attached
        by ``attach()``/``attach_all()`` without this call.
        """
        path = _resolve_binary(binary)
        hook = f"usdt {path}:{provider}:{name}"
        if not os.path.exists(path):
            raise AttachError(
                f"cannot attach {self.name!r} to {hook}: no such file {path!r}",
                program=self.name,
                hook=hook,
            )
        return self._attach_with(
            hook, lambda: _libbpf.attach_usdt(self._ptr, pid, path, provider, name)
        )

    def attach_xdp(self, interface: str, mode: str = "auto") -> Link:
        """Attach an XDP program to a network interface (by name), as a BPF link.

        ``mode``: ``"auto"`` (the kernel picks native when the driver has it, else
        generic), ``"skb"`` (generic XDP, XDP_FLAGS_SKB_MODE: any interface),
        ``"native"`` (in the driver, XDP_FLAGS_DRV_MODE), or ``"offload"`` (on the NIC,
        XDP_FLAGS_HW_MODE: needs a NIC that runs BPF). Closing the link detaches it.
        Raises ``AttachError`` naming the interface and mode when the kernel refuses.
        """
        if mode not in XDP_MODES:
            raise AttachError(
                f"XDP mode must be one of {', '.join(XDP_MODES)}, not {mode!r}",
                program=self.name,
                hook="xdp",
            )
        hook = f"xdp {interface}" + ("" if mode == "auto" else f" ({mode} mode)")
        ifindex = _ifindex(self, interface, "xdp")
        prog_fd = self.fd
        try:
            fd = _libbpf.xdp_link_create(prog_fd, ifindex, XDP_MODES[mode])
        except OSError as exc:
            raise _xdp_error(self, hook, interface, mode, exc.errno or 22) from None
        return self._obj._track(XdpLink(self._obj, fd, self.name, hook))

    def attach_tc(
        self, interface: str, direction: str = "ingress", *, handle: int = 0, priority: int = 0
    ) -> Link:
        """Attach a tc (sched_cls) program to ``interface``'s clsact ingress or egress.

        The clsact qdisc is created when missing (and removed again when the last of
        our filters on it is closed). ``handle`` and ``priority`` (0: the kernel picks)
        place the filter as ``tc filter ... handle H pref P`` would; a filter already
        there with both raises ``AttachError``.
        """
        _check_direction(self, direction, "tc")
        hook_name = f"tc {interface} {direction}"
        if not 0 <= handle <= 0xFFFFFFFF or not 0 <= priority <= 0xFFFF:
            raise AttachError(
                f"cannot attach {self.name!r} to {hook_name}: a tc handle is 0..0xffffffff "
                f"and a priority 0..65535 (got handle {handle}, priority {priority})",
                program=self.name,
                hook=hook_name,
            )
        ifindex = _ifindex(self, interface, "tc")
        prog_fd = self.fd
        point = _libbpf.BPF_TC_INGRESS if direction == "ingress" else _libbpf.BPF_TC_EGRESS
        tc_hook = _libbpf.tc_hook(ifindex, point)
        ret = _libbpf.tc_hook_create(_libbpf.byref(tc_hook))
        if ret < 0 and ret != -17:  # EEXIST: the clsact qdisc is already there
            raise _attach_error(self, hook_name, -ret, [])
        opts = _libbpf.tc_opts(prog_fd=prog_fd, handle=handle, priority=priority)
        ret2 = _libbpf.tc_attach(_libbpf.byref(tc_hook), _libbpf.byref(opts))
        if ret2 < 0:
            if ret == 0:
                whole = _libbpf.tc_hook(ifindex, _libbpf.BPF_TC_INGRESS | _libbpf.BPF_TC_EGRESS)
                _libbpf.tc_hook_destroy(_libbpf.byref(whole))
            if ret2 == -17:
                raise AttachError(
                    f"cannot attach program {self.name!r} to {hook_name}: a tc filter with "
                    f"handle {handle} and priority {priority} is already there",
                    errno=17,
                    program=self.name,
                    hook=hook_name,
                )
            raise _attach_error(self, hook_name, -ret2, [])
        link = TcLink(self._obj, self.name, hook_name, tc_hook, opts, created_qdisc=ret == 0)
        return self._obj._track(link)

    def attach_tcx(self, interface: str, direction: str = "ingress") -> Link:
        """Attach a tc (sched_cls) program to ``interface``'s ingress or egress through
        tcx, as a BPF link (Linux 6.6+): no clsact qdisc, nothing that outlives the
        link, and less per-packet overhead than a clsact filter. A program returning
        TC_ACT_UNSPEC lets the next one (then any clsact filter) run. Raises
        ``AttachError``; errno EINVAL on a kernel without tcx (use ``attach_tc``)."""
        _check_direction(self, direction, "tcx")
        hook = f"tcx {interface} {direction}"
        ifindex = _ifindex(self, interface, "tc")
        prog_fd = self.fd
        kind = _libbpf.BPF_TCX_INGRESS if direction == "ingress" else _libbpf.BPF_TCX_EGRESS
        try:
            fd = _libbpf.tcx_link_create(prog_fd, ifindex, kind)
        except OSError as exc:
            raise _attach_error(self, hook, exc.errno or 22, []) from None
        return self._obj._track(TcxLink(self._obj, fd, self.name, hook))

    def test_run(self, ctx: bytes | None = None) -> int:
        """Run the program once with BPF_PROG_TEST_RUN (e.g. ``SEC("syscall")``)."""
        try:
            return _libbpf.test_run(self.fd, ctx)
        except OSError as exc:
            raise AttachError(
                f"test run of {self.name!r} failed: {exc.strerror}",
                errno=exc.errno,
                program=self.name,
                hook="test_run",
            ) from exc


_INSN = np.dtype([("code", "u1"), ("regs", "u1"), ("off", "<i2"), ("imm", "<i4")])
BPF_CALL = 0x85  # BPF_JMP | BPF_CALL
# bpf_trace_printk and bpf_trace_vprintk (include/uapi/linux/bpf.h's helper ids)
TRACE_PRINTK_HELPERS = (6, 177)


def _calls_helper(prog: int, helpers: tuple[int, ...]) -> bool:
    """Whether program ``prog`` calls one of the kernel ``helpers`` (by helper id)."""
    count = int(_libbpf.program_insn_cnt(prog))
    address = _libbpf.program_insns(prog)
    if not count or not address:
        return False
    insns = np.frombuffer(_libbpf.bytes_at(address, count * _INSN.itemsize), dtype=_INSN)
    # A helper call has src_reg 0 (1 is a BPF-to-BPF call, 2 a kfunc).
    calls = insns[(insns["code"] == BPF_CALL) & (insns["regs"] >> 4 == 0)]
    return bool(np.isin(calls["imm"], helpers).any())


def _xdp_error(prog: Program, hook: str, interface: str, mode: str, err: int) -> AttachError:
    """Why the kernel refused an XDP link, in terms of modes (net/core/dev.c:
    ``dev_xdp_attach``)."""
    if mode == "offload" and err in (22, 95):  # EINVAL, EOPNOTSUPP
        reason = (
            f"offload mode needs a NIC that runs XDP programs itself, and {interface!r} "
            "cannot (use mode native, skb or auto)"
        )
    elif mode == "native" and err == 95:
        reason = f"the driver of {interface!r} has no native XDP (use mode skb or auto)"
    elif err == 16:  # EBUSY
        reason = f"{interface!r} already has an XDP program attached"
    elif err == 17:  # EEXIST
        reason = (
            f"{interface!r} already has an XDP program in another mode (native and generic "
            "XDP cannot be active at the same time)"
        )
    else:
        reason = os.strerror(err)
    return AttachError(
        f"cannot attach program {prog.name!r} to {hook}: {reason}",
        errno=err,
        program=prog.name,
        hook=hook,
    )


def _resolve_binary(binary: str) -> str:
    if "/" in binary:
        return os.path.abspath(binary)
    for d in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = os.path.join(d, binary)
        if os.path.isfile(candidate):
            return candidate
    return binary


def _check_direction(prog: Program, direction: str, kind: str) -> None:
    """``AttachError`` unless ``direction`` is ingress or egress (of a ``kind`` hook)."""
    if direction not in ("ingress", "egress"):
        raise AttachError(
            f"{kind} direction must be 'ingress' or 'egress', not {direction!r}",
            program=prog.name,
            hook=kind,
        )


def _ifindex(prog: Program, interface: str, kind: str) -> int:
    try:
        return socket.if_nametoindex(interface)
    except OSError as exc:
        raise AttachError(
            f"cannot attach {prog.name!r} to {kind} on {interface!r}: no such network interface",
            program=prog.name,
            hook=f"{kind} {interface}",
        ) from exc


def _attach_error(prog: Program, hook: str, err: int, log: list[str]) -> AttachError:
    """An AttachError that says why, in the terms of this kernel's missing hooks."""
    reason = os.strerror(err)
    section = prog.section
    kprobe = section.startswith(_KPROBES) or hook.startswith(_KPROBES)
    if kprobe and not _env.kprobes_available():
        reason = (
            "this kernel has no kprobes (CONFIG_KPROBES is off); use a tracepoint instead, "
            'e.g. SEC("tracepoint/syscalls/sys_enter_<name>") or a raw tracepoint'
        )
    elif section.startswith(_NO_TRAMPOLINE):
        reason = (
            "this kernel has no fentry/fexit (BPF trampolines); use a tracepoint or "
            "raw tracepoint instead"
        )
    elif hook.startswith("tracepoint") and err == 2:
        reason = "no such tracepoint (see /sys/kernel/tracing/events)"
    elif hook.startswith(("uprobe", "uretprobe")) and err == 2:
        reason = "symbol or binary not found"
    elif hook.startswith("usdt") and err == 2:
        reason = "USDT probe or binary not found"
    elif hook.startswith(("uprobe", "uretprobe", "usdt")) and err == 3:  # ESRCH
        reason = "no such process"
    elif err == 17:  # EEXIST
        reason = "the program is already attached to this hook"
    elif err == 95:  # EOPNOTSUPP
        reason = f"SEC({section!r}) names no attach target; attach it explicitly"
    detail = [line.removeprefix("libbpf: ") for line in log if "libbpf:" in line][-2:]
    msg = f"cannot attach program {prog.name!r} to {hook}: {reason}"
    if detail and err != 95:
        msg += " (" + "; ".join(d.strip() for d in detail) + ")"
    return AttachError(msg, errno=err, program=prog.name, hook=hook)


# Program types that run through a BPF trampoline (kernel/bpf/trampoline.c); a kernel
# built without them (no DYNAMIC_FTRACE_WITH_DIRECT_CALLS) refuses them with EPERM at load.
_TRAMPOLINE_PROG_TYPES = frozenset(("lsm", "ext", "struct_ops"))
_TRAMPOLINE_ATTACH_TYPES = frozenset(("trace_fentry", "trace_fexit", "modify_return"))
# Program types the kernel allows only with CAP_NET_ADMIN (or CAP_SYS_ADMIN).
_NET_PROG_TYPES = frozenset(
    (
        "sched_cls",
        "sched_act",
        "xdp",
        "cgroup_skb",
        "cgroup_sock",
        "lwt_in",
        "lwt_out",
        "lwt_xmit",
        "lwt_seg6local",
        "sock_ops",
        "sk_skb",
        "sk_msg",
        "cgroup_device",
        "cgroup_sock_addr",
        "cgroup_sysctl",
        "cgroup_sockopt",
        "sk_reuseport",
        "flow_dissector",
        "sk_lookup",
        "netfilter",
    )
)
_FAILED_PROG = re.compile(r"prog '([^']+)': (?:BPF program load failed|failed to load)")
_CAP_NAMES = {
    _env.CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    _env.CAP_NET_ADMIN: "CAP_NET_ADMIN",
    _env.CAP_PERFMON: "CAP_PERFMON",
    _env.CAP_BPF: "CAP_BPF",
}


def _refused_eperm(obj: BpfObject, log: list[str]) -> LoadError | BpfPermissionError:
    """Why the kernel answered EPERM to a load, in the caller's terms.

    ``prepare()`` has already checked CAP_BPF/CAP_PERFMON (or CAP_SYS_ADMIN), so EPERM
    is rarely about those: the failing program (named in libbpf's log) may need a BPF
    trampoline this kernel lacks (fentry/fexit/fmod_ret/lsm/freplace/struct_ops), or
    CAP_NET_ADMIN (networking types), or a lockdown mode forbids it.
    """
    names = [m.group(1) for line in log if (m := _FAILED_PROG.search(line))]
    prog = obj.programs.get(names[-1]) if names else None
    caps = _env.effective_capabilities()
    held = [name for cap, name in _CAP_NAMES.items() if caps & (1 << cap)]
    has_caps = ", ".join(held) or "no BPF capabilities"
    if prog is None:
        return BpfPermissionError(
            f"the kernel refused to load {obj.path}: operation not permitted "
            f"(the caller has {has_caps})",
            errno=1,
        )
    prog_type, attach_type = prog.kind
    what = (
        f"the kernel refused to load program {prog.name!r} of {obj.path} "
        f"(SEC {prog.section!r}: program type {prog_type}, attach type {attach_type})"
    )
    if prog_type in _TRAMPOLINE_PROG_TYPES or attach_type in _TRAMPOLINE_ATTACH_TYPES:
        return LoadError(
            f"{what}: this kernel has no BPF trampolines, which {prog_type}/{attach_type} "
            "programs need (as do all fentry, fexit, fmod_ret, lsm, freplace and struct_ops "
            f"programs); not a permission problem, the caller has {has_caps}. Use "
            'SEC("tp_btf/<tracepoint>") (typed arguments, as fentry has), '
            'SEC("raw_tp/<tracepoint>") or SEC("tracepoint/<category>/<name>") instead',
            errno=1,
        )
    net_ok = caps & ((1 << _env.CAP_NET_ADMIN) | (1 << _env.CAP_SYS_ADMIN))
    if prog_type in _NET_PROG_TYPES and not net_ok:
        return BpfPermissionError(
            f"{what}: operation not permitted; {prog_type} programs need CAP_NET_ADMIN "
            f"(the caller has {has_caps})",
            errno=1,
        )
    lockdown = _env.lockdown_mode()
    hint = (
        f"the kernel is in lockdown mode {lockdown!r} (/sys/kernel/security/lockdown)"
        if lockdown not in (None, "none")
        else "a security module (SELinux, AppArmor, BPF LSM) or a sysctl may forbid it"
    )
    return BpfPermissionError(
        f"{what}: operation not permitted although the caller has {has_caps}; {hint}",
        errno=1,
    )


@dataclass(frozen=True)
class GlobalVar:
    """A global variable of the object: where it lives and its type."""

    name: str
    section: str
    offset: int
    size: int
    type: Type
    readonly_after_load: bool

    @property
    def c_type(self) -> str:
        return describe(self.type)


class Globals(Mapping[str, Any]):
    """The object's global variables by name, read and written as Python values.

    Before ``load()`` every global can be set; afterwards ``.rodata`` ones are frozen
    (the verifier relied on them) and ``.data``/``.bss`` ones read and write the live
    values the programs see, through libbpf's memory mapping.
    """

    def __init__(self, obj: BpfObject, variables: dict[str, tuple[GlobalVar, int]]) -> None:
        self._obj = obj
        self._vars = variables  # name -> (info, map pointer)
        self._decoders: dict[str, Decoder] = {}
        self._references: dict[str, set[int]] | None = None

    def info(self) -> list[GlobalVar]:
        return [v for v, _ in self._vars.values()]

    def referenced(self, name: str) -> bool:
        """Whether any program instruction refers to global ``name``.

        False means no program reads or writes it: typically a plain ``const`` whose
        value clang folded into the code, so setting it changes nothing (declare it
        ``const volatile``). The object file's relocations are scanned on first use.
        """
        var, _ = self._lookup(name)
        if self._references is None:
            from .relocations import data_references  # pyelftools: imported when used

            self._references = data_references(self._obj.image, self._obj.path)
        return any(
            var.offset <= at < var.offset + max(var.size, 1)
            for at in self._references.get(var.section, ())
        )

    def __len__(self) -> int:
        return len(self._vars)

    def __iter__(self) -> Iterator[str]:
        return iter(self._vars)

    def __contains__(self, name: object) -> bool:
        # Mapping's version looks the name up and expects KeyError; ours raises
        # GlobalError (with the valid names) instead.
        return name in self._vars

    def _lookup(self, name: str) -> tuple[GlobalVar, int]:
        try:
            return self._vars[name]
        except KeyError:
            valid = ", ".join(sorted(self._vars)) or "none"
            raise NotFoundError(f"unknown global {name!r}; valid globals: {valid}") from None

    def _memory(self, var: GlobalVar, map_ptr: int) -> int:
        self._obj._require_usable("globals")
        addr, size = _libbpf.map_initial_bytes(map_ptr)
        if not addr or var.offset + var.size > size:
            raise GlobalError(f"global {var.name!r} is not accessible")
        return addr + var.offset

    def __getitem__(self, name: str) -> Any:
        var, map_ptr = self._lookup(name)
        data = _libbpf.bytes_at(self._memory(var, map_ptr), var.size)
        dec = self._decoders.get(name)
        if dec is None:
            dec = self._decoders[name] = Decoder(var.type, strings=self._obj.strings)
        return dec.decode(data)

    def __setitem__(self, name: str, value: Any) -> None:
        var, map_ptr = self._lookup(name)
        if self._obj.loaded and var.readonly_after_load:
            raise GlobalError(
                f"global {name!r} is in {var.section} and is read-only once the object is "
                "loaded; set it before load()"
            )
        try:
            data = encode(var.type, value)
        except TypeInfoError as exc:
            raise GlobalError(f"global {name!r} ({var.c_type}): {exc}") from exc
        buf = _libbpf.buffer_at(self._memory(var, map_ptr), var.size)
        buf[: len(data)] = data

    def update(self, values: Mapping[str, Any]) -> None:
        for k, v in values.items():
            self[k] = v


class BpfObject:
    """A BPF object file opened with libbpf. Use as a context manager.

    Raises ``ObjectFileError`` for a missing, non-ELF, truncated or program-less file.
    Not thread-safe; readers made from it may be used from other threads.
    """

    def __init__(self, path: str | os.PathLike[str], *, strings: str = "replace") -> None:
        if strings not in STRING_POLICIES:
            raise TypeInfoError(f"strings must be one of {', '.join(STRING_POLICIES)}")
        self.path = os.fspath(path)
        #: How every decoder of this object turns ``char`` arrays into ``str``:
        #: "replace" (invalid UTF-8 → U+FFFD) or "surrogateescape" (lossless; see
        #: ``bpfloom.decode.STRING_POLICIES``). The tools and the CLI use the latter.
        self.strings = strings
        self._ptr: int | None = None
        self.loaded = False
        self._failed = False
        self._links: list[Link] = []
        self._readers: list[RingBuffer | PerfBuffer] = []
        #: The object file's bytes, read once (``read_object_file``); libbpf works on
        #: them in place, so they live as long as the object.
        self.image = read_object_file(self.path)
        self._name = os.path.basename(self.path)
        mark = _libbpf.log_mark()
        try:
            self._ptr, self._image_buffer = _libbpf.open_mem(self.image, self._name)
        except OSError as exc:
            # The file was read: an errno here is libbpf's verdict on its contents
            # (ENOENT for a missing section, EINVAL for a bad one), not about the file.
            reason = _libbpf.strerror(exc.errno or 22)
            raise ObjectFileError(
                _with_log(
                    f"{self.path}: libbpf cannot use this object ({reason})",
                    _libbpf.log_since(mark),
                ),
                errno=exc.errno,
            ) from exc
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        assert self._ptr is not None
        self.name = os.path.basename(self.path).removesuffix(".o").removesuffix(".bpf")
        self.programs: dict[str, Program] = {}
        prog = _libbpf.object_next_program(self._ptr, None)
        while prog:
            p = Program(self, prog)
            self.programs[p.name] = p
            prog = _libbpf.object_next_program(self._ptr, prog)
        if not self.programs:
            raise ObjectFileError(f"{self.path} has no BPF programs (no SEC() functions)")
        btf_ptr = _libbpf.object_btf(self._ptr)
        self.btf: Btf | None = parse_btf(_libbpf.btf_raw(btf_ptr)) if btf_ptr else None
        self.types = TypeInfo(self.path, self.btf, self.image)
        self.maps: dict[str, Map] = {}
        variables: dict[str, tuple[GlobalVar, int]] = {}
        m = _libbpf.object_next_map(self._ptr, None)
        while m:
            key_t = self._btf_type(_libbpf.map_btf_key_type_id(m))
            value_t = self._btf_type(_libbpf.map_btf_value_type_id(m))
            if _libbpf.map_is_internal(m):
                if isinstance(value_t, Datasec):
                    for var in _datasec_globals(value_t):
                        variables.setdefault(var.name, (var, m))
            else:
                mp = Map(self, m, key_t, value_t)
                self.maps[mp.name] = mp
            m = _libbpf.object_next_map(self._ptr, m)
        self.globals = Globals(self, variables)
        self.possible_cpus = _libbpf.check(_libbpf.num_possible_cpus(), "num_possible_cpus")

    def _btf_type(self, type_id: int) -> Type | None:
        if not type_id or self.btf is None or type_id >= len(self.btf.types):
            return None
        return self.btf.types[type_id]

    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else ("loaded" if self.loaded else "open")
        return f"<BpfObject {self.path} ({state})>"

    # --- life cycle ------------------------------------------------------------------

    def _require_usable(self, what: str) -> None:
        if self._ptr is None:
            raise ClosedError(f"{what}: object {self.path} is closed")
        if self._failed:
            raise ClosedError(f"{what}: object {self.path} failed to load; open it again")

    def _require_open(self, what: str) -> None:
        self._require_usable(what)
        if self.loaded:
            raise AlreadyLoadedError(
                f"{what}: object {self.path} is already loaded (this is for before load())"
            )

    def _require_loaded(self, what: str) -> None:
        self._require_usable(what)
        if not self.loaded:
            raise NotLoadedError(f"{what}: object {self.path} is not loaded yet (call load())")

    def load(self) -> BpfObject:
        """Load every program and map into the kernel; raises ``LoadError`` with the
        verifier log's last lines when the kernel refuses."""
        self._require_open("load")
        assert self._ptr is not None
        _env.prepare()
        mark = _libbpf.log_mark()
        ret = _libbpf.object_load(self._ptr)
        if ret < 0:
            self._failed = True
            err = -ret
            log = _libbpf.log_since(mark)
            if err == 1:  # EPERM
                raise _refused_eperm(self, log)
            tail = _verifier_tail(log)
            msg = f"the kernel refused to load {self.path}: {os.strerror(err)}"
            if tail:
                msg += "\nverifier log (last lines):\n" + tail
            else:
                msg = _with_log(msg, log)
            raise LoadError(msg, errno=err, log_tail=tail)
        self.loaded = True
        # Globals of .data/.bss must read and write the kernel's memory from now on.
        m = _libbpf.object_next_map(self._ptr, None)
        while m:
            if _libbpf.map_is_internal(m):
                try:
                    _libbpf.remap_internal_map(m)
                except OSError as exc:
                    raise GlobalError(
                        f"cannot map the globals of {self.path}: {exc.strerror}", errno=exc.errno
                    ) from exc
            m = _libbpf.object_next_map(self._ptr, m)
        return self

    def attach_all(self, targets: AttachTargets | None = None) -> list[Link]:
        """Attach every program where its ``SEC()`` name, or ``targets``, says; skip the
        others.

        Programs such as ``SEC("syscall")``, a bare ``SEC("uprobe")`` or ``SEC("usdt")``,
        or an XDP/tc program when ``targets`` give no interface, name no target and are
        skipped (``skipped_programs`` lists them); attach those explicitly.
        ``targets`` (``bpfloom.targets.AttachTargets``) put XDP and tc programs on an
        interface and retarget uprobe/USDT programs to another binary or one pid. A bad
        target, or any other failure, raises ``AttachError`` and detaches what this
        call attached.
        """
        from .targets import AttachTargets, plan

        self._require_loaded("attach")
        links: list[Link] = []
        self.skipped_programs: list[Program] = []
        try:
            for step in plan(self, targets or AttachTargets()):
                if step.attach is None:
                    self.skipped_programs.append(step.program)
                    continue
                try:
                    links.append(step.attach())
                except AttachError as exc:
                    if step.by_section and exc.errno == 95:  # EOPNOTSUPP: no target
                        self.skipped_programs.append(step.program)
                        continue
                    raise
        except BaseException:
            for link in links:
                link.close()
            raise
        return links

    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            valid = ", ".join(sorted(self.programs))
            raise NotFoundError(f"no program {name!r} in {self.path}; programs: {valid}") from None

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            valid = ", ".join(sorted(self.maps)) or "none"
            raise NotFoundError(f"no map {name!r} in {self.path}; maps: {valid}") from None

    @property
    def links(self) -> list[Link]:
        return list(self._links)

    def _track(self, link: Link) -> Link:
        self._links.append(link)
        return link

    def _forget(self, item: object) -> None:
        if item in self._links:
            self._links.remove(item)
        if item in self._readers:
            self._readers.remove(item)

    def close(self) -> None:
        """Close readers, detach links, unload everything. Idempotent."""
        for reader in list(self._readers):
            reader.close()
        for link in list(self._links):
            link.close()
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            _libbpf.object_close(ptr)

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_ptr", None) is not None:
            warnings.warn(f"BpfObject {self.path} was not closed", ResourceWarning, stacklevel=1)
            self.close()

    # --- events ----------------------------------------------------------------------

    def event_buffers(self) -> list[Map]:
        """The object's ring buffer and perf event array maps, in definition order."""
        return [m for m in self.maps.values() if m.type in ("ringbuf", "perf_event_array")]

    def record_type(self, map_name: str, event_type: str | None = None) -> Struct:
        """The struct each record of buffer ``map_name`` holds (named, or found)."""
        if event_type:
            t = strip(self.types.find(event_type))
            if not isinstance(t, Struct):
                raise TypeInfoError(f"{event_type!r} is not a struct")
            return t
        used_by_maps = set()
        for m in self.maps.values():
            for side in (m.key_type, m.value_type):
                s = strip(side)
                if isinstance(s, Struct) and s.name:
                    used_by_maps.add(s.name)
        return self.types.record_type(map_name, used_by_maps)

    def ring_buffer(
        self,
        map_name: str | None = None,
        event_type: str | None = None,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        consumer: str | None = None,
    ) -> RingBuffer:
        """A reader of ring buffer ``map_name`` (the only one when None).

        ``poll_interval`` bounds how long records wait when the program does not wake
        the reader (see ``use_polled_wakeups``); ``consumer`` picks the ring walker
        (``ringbuf.choose_consumer``).
        """
        from .ringbuf import RingBuffer

        m = self._buffer_map(map_name, "ringbuf")
        decoder = Decoder(self.record_type(m.name, event_type), strings=self.strings)
        reader = RingBuffer(
            m.fd,
            m.max_entries,
            decoder,
            name=m.name,
            owner=self,
            poll_interval=poll_interval,
            consumer=consumer,
        )
        self._readers.append(reader)
        return reader

    def perf_buffer(
        self,
        map_name: str | None = None,
        event_type: str | None = None,
        *,
        pages: int = 64,
        wakeup_events: int = 1,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> PerfBuffer:
        """A reader of perf event array ``map_name``: one ring of ``pages`` pages per CPU,
        waking the reader every ``wakeup_events`` samples (and polling every
        ``poll_interval`` seconds regardless)."""
        from .perfbuf import PerfBuffer

        m = self._buffer_map(map_name, "perf_event_array")
        decoder = Decoder(self.record_type(m.name, event_type), strings=self.strings)
        reader = PerfBuffer(
            m,
            decoder,
            pages=pages,
            wakeup_events=wakeup_events,
            owner=self,
            poll_interval=poll_interval,
        )
        self._readers.append(reader)
        return reader

    def open_reader(
        self,
        map_name: str | None = None,
        event_type: str | None = None,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
    ) -> RingBuffer | PerfBuffer:
        """A reader of either kind, chosen by the map's type."""
        m = self._buffer_map(map_name, None)
        if m.type == "ringbuf":
            return self.ring_buffer(m.name, event_type, poll_interval=poll_interval)
        return self.perf_buffer(m.name, event_type, poll_interval=poll_interval)

    def use_polled_wakeups(self) -> bool:
        """Trade latency for overhead: our programs stop waking the reader.

        By default (``bpfloom_wakeup_flags`` = 0) the kernel wakes the reader only when
        it had caught up — adaptive wakeups, as ``bpf_ringbuf_submit`` does with no
        flags. After this call (before ``load()``) programs built on bpfloom.h submit
        with ``BPF_RB_NO_WAKEUP`` and readers find records by polling every
        ``poll_interval``: no wakeup cost on the traced workload, up to
        ``poll_interval`` of extra latency. Returns False for objects that do not use
        bpfloom.h (their wakeups are the program's own choice).
        """
        self._require_open("use_polled_wakeups")
        if WAKEUP_FLAGS_GLOBAL not in self.globals:
            return False
        self.globals[WAKEUP_FLAGS_GLOBAL] = BPF_RB_NO_WAKEUP
        return True

    def _buffer_map(self, map_name: str | None, kind: str | None) -> Map:
        self._require_loaded("open a reader")
        buffers = [m for m in self.event_buffers() if kind is None or m.type == kind]
        if map_name is not None:
            m = self.map(map_name)
            if m not in buffers:
                raise TypeInfoError(
                    f"map {map_name!r} is a {m.type} map, not {kind or 'an event buffer'}"
                )
            return m
        if len(buffers) != 1:
            names = ", ".join(b.name for b in buffers) or "none"
            raise TypeInfoError(f"{self.path}: say which buffer to read (buffers: {names})")
        return buffers[0]

    def dropped_kernel(self) -> int:
        """Records our programs failed to reserve (``bpfloom_drops``, summed over CPUs);
        0 for objects that do not use bpfloom.h."""
        return self.counter_total(DROPS_MAP)

    def counter_total(self, name: str) -> int:
        """Slot 0 of the per-CPU (or plain) counter array ``name``, summed over CPUs;
        0 if the object has no such map or is not loaded."""
        m = self.maps.get(name)
        if m is None or not self.loaded or self.closed:
            return 0
        per_cpu = m.lookup(0, default=None)
        if per_cpu is None:
            return 0
        return int(sum(per_cpu)) if isinstance(per_cpu, list) else int(per_cpu)


def _datasec_globals(sec: Datasec) -> list[GlobalVar]:
    readonly = sec.name.startswith(".rodata")
    out = []
    for info in sec.vars:
        var = info.var
        if not isinstance(var, Var) or var.linkage == 2 or var.type is None:
            continue  # externs (.kconfig, ksyms) are libbpf's to fill
        try:
            size = sizeof(var.type)
        except ValueError:
            continue
        out.append(GlobalVar(var.name, sec.name, info.offset, size, var.type, readonly))
    return out


MAX_OBJECT_SIZE = 256 << 20  # far above any real object; bounds what a file makes us read


def read_object_file(path: str) -> bytes:
    """The bytes of the object file at ``path``, read once, after checks that it is a
    readable regular file holding a whole ELF header of a BPF object.

    Everything bpfloom learns from the object (libbpf's open, BTF, DWARF, relocations)
    is parsed from these bytes, so it all comes from one file even if ``path`` is
    replaced meanwhile. The file is opened non-blocking and checked with ``fstat``
    before anything is read: a FIFO or a device never blocks or streams forever.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ObjectFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise ObjectFileError(f"{path}: {exc.strerror}", errno=exc.errno) from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ObjectFileError(f"{path}: is a directory, not an object file")
        if not stat.S_ISREG(info.st_mode):
            raise ObjectFileError(
                f"{path}: not a regular file (a FIFO, socket or device), not an object file"
            )
        if info.st_size > MAX_OBJECT_SIZE:
            raise ObjectFileError(
                f"{path}: {info.st_size} bytes; BPF objects are far smaller "
                f"(bpfloom reads at most {MAX_OBJECT_SIZE})"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            image = f.read(MAX_OBJECT_SIZE + 1)
    except OSError as exc:
        raise ObjectFileError(f"{path}: {exc.strerror}", errno=exc.errno) from exc
    finally:
        os.close(fd)
    _check_elf(path, image)
    return image


def _check_elf(path: str, image: bytes) -> None:
    """Refuse what is not a whole ELF64 object for the BPF machine, with a reason."""
    head = image[:64]
    if head[:4] != ELF_MAGIC:
        raise ObjectFileError(f"{path}: not an ELF file (expected a compiled *.bpf.o)")
    if len(head) < 20:
        raise ObjectFileError(f"{path}: truncated ELF file")
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], order)
    if machine != EM_BPF:
        raise ObjectFileError(
            f"{path}: an ELF file for another machine (e_machine {machine}), not a BPF object"
        )
    # BPF objects are ELF64. libbpf reports a file cut short only as
    # LIBBPF_ERRNO__FORMAT (4001, "Unknown error 4001" to os.strerror): check first.
    if len(head) < 64:
        raise ObjectFileError(f"{path}: truncated ELF file ({len(head)} bytes, no full header)")
    shoff = int.from_bytes(head[0x28:0x30], order)
    shend = shoff + int.from_bytes(head[0x3A:0x3C], order) * int.from_bytes(head[0x3C:0x3E], order)
    if shend > len(image):
        raise ObjectFileError(
            f"{path}: truncated ELF file ({len(image)} bytes, but its section headers end at "
            f"byte {shend})"
        )


def _verifier_tail(log: list[str], lines: int = 15) -> str:
    """The last lines of the last program load log libbpf printed."""
    begin = end = None
    for i, line in enumerate(log):
        if "BEGIN PROG LOAD LOG" in line:
            begin, end = i, None
        elif "END PROG LOAD LOG" in line and begin is not None:
            end = i
    if begin is None:
        return ""
    body = [x for x in log[begin + 1 : end] if x.strip()]
    return "\n".join(body[-lines:])


def _with_log(msg: str, log: list[str]) -> str:
    detail = [line.removeprefix("libbpf: ").strip() for line in log if line.strip()][-3:]
    return msg + ("\nlibbpf: " + "\nlibbpf: ".join(detail) if detail else "")


def load(path: str | os.PathLike[str], globals: Mapping[str, Any] | None = None) -> BpfObject:
    """Open ``path``, set ``globals``, and load it; the object is closed on any error."""
    obj = BpfObject(path)
    try:
        if globals:
            obj.globals.update(globals)
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj
