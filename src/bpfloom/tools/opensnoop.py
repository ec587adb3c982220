"""opensnoop: every open(2), openat(2) and openat2(2) with its result.

Columns and options as libbpf-tools' opensnoop: ``[TIME] [UID] PID COMM FD ERR [FLAGS]
PATH``. FD is the new descriptor or -1, ERR 0 or the errno of a failed open, FLAGS
(``-e``) the open flags in octal as libbpf-tools prints them (for openat2, ``how->flags``
of its ``struct open_how``).

The JSON record (and the library's records) has the detection engine's keys: ``event``
("open"), ``time`` (unix seconds), ``pid`` (the process, thread group id), ``tid``,
``uid`` (real uid), ``comm``, ``fd``, ``err``, ``flags`` (an int) and ``path`` (as the
caller gave it: relative paths stay relative to its directory or dirfd).

Paths are copied up to 255 bytes (libbpf-tools' NAME_MAX buffer); a longer path is cut
there and ends with ``...`` in the table and in ``path``. The table shows control
characters of a path as escapes (``\\n``), so a file name cannot fake a row.

Filters run in the kernel, when the call enters: ``-p`` (process), ``-t`` (thread),
``-u`` (real uid) and ``-n`` — a substring of the 15-byte comm, as libbpf-tools' ``-n``
(which matches it in user space) — and ``-x`` (failed opens only) when it returns.

Hooks: tracepoints syscalls/sys_{enter,exit}_{open,openat,openat2}. A call this kernel
has no tracepoint for (arm64 has no ``open``; openat2 is Linux 5.6+) is left out: its
programs are not loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .. import _env
from .._exceptions import AttachError
from .paths import norm_path
from .tool import Column, Record, Tool, wall_time

if TYPE_CHECKING:
    from ..rules._prefilter import KernelFilter

COMM_LEN = 15  # bytes of a task's comm, without the NUL
ANY_UID = 0xFFFFFFFF  # (u32)-1 is no user id
SYSCALLS = ("open", "openat", "openat2")


def syscall_tracepoints() -> list[str]:
    """The calls of ``SYSCALLS`` this kernel has tracepoints for (tracefs
    ``events/syscalls/sys_{enter,exit}_NAME``); mounts tracefs if needed."""
    _env.prepare()
    roots = (_env.TRACEFS, "/sys/kernel/debug/tracing")

    def exists(event: str) -> bool:
        return any(os.path.isdir(f"{root}/events/syscalls/{event}") for root in roots)

    return [n for n in SYSCALLS if exists(f"sys_enter_{n}") and exists(f"sys_exit_{n}")]


class OpenSnoop(Tool):
    """Traces file opens. Filters run in the kernel: ``pid`` (thread group), ``tid``,
    ``uid`` (real uid; None: any), ``comm`` (a substring of the name, at most 15
    bytes), ``failed_only``. ``extended`` adds the FLAGS column, ``timestamps`` TIME,
    ``print_uid`` UID (the records always carry every key). ``full_path`` asks the
    kernel where each opened file is (``bpfloom_path.h``: a dentry walk per open) and
    gives records a ``norm_path`` (``bpfloom.tools.paths``), shown in PATH.
    ``prefilter`` (``bpfloom detect``) leaves out in the kernel the opens no rule can
    match.

    Raises ``ValueError`` for out-of-range arguments, ``AttachError`` when the kernel
    has none of the open tracepoints (and load errors, as any tool).
    """

    name = "opensnoop"
    object_name = "opensnoop"
    event_type = "open_event"

    def __init__(
        self,
        *,
        pid: int = 0,
        tid: int = 0,
        uid: int | None = None,
        comm: str = "",
        failed_only: bool = False,
        extended: bool = False,
        timestamps: bool = False,
        print_uid: bool = False,
        full_path: bool = False,
        prefilter: KernelFilter | None = None,
    ) -> None:
        self.prefilter = prefilter
        if pid < 0 or tid < 0:
            raise ValueError("pid and tid must be positive (0: any)")
        if uid is not None and not 0 <= uid < ANY_UID:
            raise ValueError(f"uid {uid} is not a valid uid")
        if len(comm.encode()) > COMM_LEN:
            raise ValueError(f"comm {comm!r} is longer than {COMM_LEN} bytes")
        self.pid, self.tid, self.uid, self.comm = pid, tid, uid, comm
        self.failed_only = failed_only
        self.full_path = full_path
        self.columns = (
            *((Column("TIME", 8),) if timestamps else ()),
            *((Column("UID", 7),) if print_uid else ()),
            Column("PID", 6),
            Column("COMM", 16),
            Column("FD", 3, right=True),
            Column("ERR", 3, right=True),
            *((Column("FLAGS", 8, text=lambda r: f"{r['flags']:08o}"),) if extended else ()),
            Column("PATH", 0, key="norm_path" if full_path else ""),
        )
        super().__init__()

    def configure(self) -> None:
        found = syscall_tracepoints()
        if not found:
            raise AttachError(
                "this kernel has no tracepoints syscalls/sys_enter_open, sys_enter_openat "
                "or sys_enter_openat2 (built without CONFIG_FTRACE_SYSCALLS?)",
                hook="tracepoint/syscalls/sys_enter_openat",
            )
        for name in SYSCALLS:
            if name not in found:
                self.obj.programs[f"enter_{name}"].autoload = False
                self.obj.programs[f"exit_{name}"].autoload = False
        self.syscalls = found
        g = self.obj.globals
        g["targ_tgid"] = self.pid
        g["targ_tid"] = self.tid
        g["filter_uid"] = self.uid is not None
        g["targ_uid"] = self.uid or 0
        g["targ_comm"] = self.comm
        g["targ_failed"] = self.failed_only
        g["resolve_paths"] = self.full_path

    def record(self, event: Any) -> Record:
        ret = event.ret
        record: Record = {
            "event": "open",
            "time": wall_time(event.ts_ns),
            "pid": event.pid,
            "tid": event.tid,
            "uid": event.uid,
            "comm": event.comm,
            "fd": ret if ret >= 0 else -1,
            "err": -ret if ret < 0 else 0,
            "flags": event.flags,
            "path": event.path + "..." if event.path_truncated else event.path,
        }
        if self.full_path:
            record["norm_path"] = norm_path(
                event.path, event.fs_path, event.fs_path_kind, event.fs_path_cut
            )
        return record
