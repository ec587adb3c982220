"""execsnoop: every execve()/execveat() with its full argv, its parent and its result.

Columns and options as libbpf-tools' execsnoop: ``[TIME] [UID] PCOMM PID PPID RET ARGS``.
As there, the PCOMM column is the *process's* name (after a successful exec, the new
program's; for a failed exec, the caller's); RET is 0 or a negative errno (failed
execs only with ``-x``); ARGS is the argv, ending with `` ...`` when it was cut, each
argument in double quotes with ``-q``. Control characters in arguments show as escapes
(``\\n``) in the table, so that one exec stays one line; JSON has them as they are.

The JSON record (and the library's records) keeps the detection engine's keys:
``event`` ("exec"), ``time`` (unix seconds), ``pid``, ``ppid``, ``uid`` (real uid),
``comm`` and ``pcomm`` (both the process's name — the PCOMM column), ``parent_comm``
(its **parent's** name),
``path`` (the file name given to exec, as given: relative to the caller's directory,
or for execveat to its dirfd, "" for fexecve), ``args`` (the argv, a list of str),
``args_truncated``, ``ret`` and ``cgroup`` (path below the cgroup2 mount).

Limits, as libbpf-tools': at most ``--max-args`` argv entries (default 20, at most 60)
and 127 bytes per argument; a cut argv sets ``args_truncated`` (so does an argument
the kernel could not read: it reads user memory without faulting pages in). ``path`` is
cut beyond 255 bytes. The per-thread state of an exec in flight (~8 KiB) lives in a
hash map allocated on demand, not preallocated as libbpf-tools' (~80 MiB).

Filters run in the kernel: ``-u`` (real uid) and ``-c`` (cgroup) before anything is
copied, ``-n`` on the name at exit — a substring match as libbpf-tools' ``-n``, on
the 15-byte comm — and failed execs. ``-c`` takes a cgroup v2 directory (or a path
as the ``cgroup`` field shows it, relative to the cgroup2 mount) and matches tasks in
it or any cgroup below it, as libbpf-tools does (``BPF_MAP_TYPE_CGROUP_ARRAY`` holding
the directory, ``bpf_current_task_under_cgroup``). libbpf-tools' ``-l`` (an argument
contains a string) is left out: it would be a user-space filter.

Hooks: tracepoints syscalls/sys_{enter,exit}_execve{,at}, and sched/sched_process_exec
so that an exec from a non-leader thread (whose thread id changes) is not lost.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._exceptions import BpfloomError, MapError
from .cgroups import CgroupPaths, cgroup2_mount
from .paths import norm_path
from .tool import Column, Record, Tool, wall_time

if TYPE_CHECKING:
    from ..rules._prefilter import KernelFilter

DEFAULT_MAX_ARGS = 20  # libbpf-tools' DEFAULT_MAXARGS
TOTAL_MAX_ARGS = 60  # argv slots of the BPF record (TOTAL_MAX_ARGS in execsnoop.bpf.c)
COMM_LEN = 15  # bytes of a task's comm, without the NUL
ANY_UID = 0xFFFFFFFF  # (u32)-1: every user


def format_args(args: list[str], truncated: bool, quote: bool = False) -> str:
    """The ARGS cell: the argv joined by spaces (each in double quotes with ``"``
    escaped when ``quote``, as libbpf-tools' ``-q``), `` ...`` when it was cut."""
    if quote:
        args = ['"' + a.replace('"', '\\"') + '"' for a in args]
    text = " ".join(args)  # the printer escapes every cell
    return text + " ..." if truncated else text


def cgroup_dir(path: str) -> str:
    """The directory ``path`` names: as given, or else relative to the cgroup2 mount
    (as records show cgroups). Whether it is a cgroup v2 directory is the kernel's to
    say (when the filter map is set). Raises ``BpfloomError`` when there is none."""
    if os.path.isdir(path):
        return path
    mount = cgroup2_mount()
    if mount is not None:
        below = os.path.join(mount, path.lstrip("/"))
        if os.path.isdir(below):
            return below
    where = f" (nor below the cgroup2 mount {mount})" if mount else ""
    raise BpfloomError(f"cgroup {path!r}: no such directory{where}")


def _open_dir(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise BpfloomError(f"cgroup {path!r}: {exc.strerror}", errno=exc.errno) from exc


class ExecSnoop(Tool):
    """Traces execs with their argv. Filters run in the kernel: ``uid`` (real uid),
    ``comm`` (a substring of the name at exit, at most 15 bytes), ``cgroup`` (a
    cgroup v2 directory; its tasks and those of cgroups below it), failed execs unless
    ``include_failed``. ``max_args`` bounds the argv entries copied (1-60).
    ``resolve_paths`` asks the kernel which file each exec ran and gives records a
    ``norm_path`` (``bpfloom.tools.paths``), as ``bpfloom detect`` needs, and
    ``prefilter`` (``bpfloom detect``) leaves out in the kernel the execs no rule can
    match.

    Raises ``ValueError`` for out-of-range arguments, ``BpfloomError`` when the cgroup
    is not a cgroup v2 directory (and for load errors, as any tool).
    """

    name = "execsnoop"
    object_name = "execsnoop"
    event_type = "event"

    def __init__(
        self,
        *,
        uid: int | None = None,
        comm: str = "",
        cgroup: str | None = None,
        include_failed: bool = False,
        max_args: int = DEFAULT_MAX_ARGS,
        timestamps: bool = False,
        print_uid: bool = False,
        quote: bool = False,
        resolve_paths: bool = False,
        prefilter: KernelFilter | None = None,
    ) -> None:
        self.prefilter = prefilter
        if not 1 <= max_args <= TOTAL_MAX_ARGS:
            raise ValueError(f"max_args must be 1 to {TOTAL_MAX_ARGS}, not {max_args}")
        if uid is not None and not 0 <= uid < ANY_UID:
            raise ValueError(f"uid {uid} is not a valid uid")
        if len(comm.encode()) > COMM_LEN:
            raise ValueError(f"comm {comm!r} is longer than {COMM_LEN} bytes")
        self.uid, self.comm = uid, comm
        self.include_failed, self.max_args = include_failed, max_args
        self.resolve_paths = resolve_paths
        self.cgroups = CgroupPaths()
        self.columns = (
            *((Column("TIME", 8),) if timestamps else ()),
            *((Column("UID", 6),) if print_uid else ()),
            Column("PCOMM", 16, key="comm"),
            Column("PID", 6),
            Column("PPID", 6),
            Column("RET", 3, right=True),
            Column(
                "ARGS",
                0,
                text=lambda r: format_args(r["args"], r["args_truncated"], quote),
            ),
        )
        self.cgroup = None if cgroup is None else cgroup_dir(cgroup)
        # Opened before loading, so that a bad directory fails fast; the kernel takes
        # its own reference to the cgroup when the map is set, so the fd is closed then.
        cgroup_fd = None if self.cgroup is None else _open_dir(self.cgroup)
        try:
            super().__init__()
            if cgroup_fd is not None:
                self._filter_cgroup(cgroup_fd)
        finally:
            if cgroup_fd is not None:
                os.close(cgroup_fd)

    def _filter_cgroup(self, fd: int) -> None:
        """Point the kernel's cgroup filter at directory ``fd`` (after load)."""
        try:
            self.obj.maps["cgroup_map"].update(0, fd)
        except MapError as exc:
            self.close()
            raise BpfloomError(
                f"cgroup {self.cgroup!r}: not a cgroup v2 directory ({exc})", errno=exc.errno
            ) from exc

    def configure(self) -> None:
        g = self.obj.globals
        g["targ_uid"] = ANY_UID if self.uid is None else self.uid
        g["targ_comm"] = self.comm
        g["ignore_failed"] = not self.include_failed
        g["max_args"] = self.max_args
        g["filter_cg"] = self.cgroup is not None
        g["resolve_paths"] = self.resolve_paths

    def record(self, event: Any) -> Record:
        record: Record = {
            "event": "exec",
            "time": wall_time(event.ts_ns),
            "pid": event.pid,
            "ppid": event.ppid,
            "uid": event.uid,
            "comm": event.comm,
            "pcomm": event.comm,
            "parent_comm": event.parent_comm,
            "path": event.path,
            "args": event.args[: event.args_count],
            "args_truncated": event.args_truncated,
            "ret": event.ret,
            "cgroup": self.cgroups.path(event.cgroup_id),
        }
        if self.resolve_paths:
            record["norm_path"] = norm_path(
                event.path, event.fs_path, event.fs_path_kind, event.fs_path_cut
            )
        return record
