"""exitsnoop: process exits with their lifetime and exit code, or the killing signal.

Columns as libbpf-tools' exitsnoop: ``[TIME] PCOMM PID PPID TID AGE(s) EXIT_CODE``.
EXIT_CODE shows ``0``, ``code N``, or ``signal N (SIGNAME)``; the JSON record carries
``exit_code`` (the status, 0 when killed) and ``signal`` (0 when it exited) as numbers,
``age`` in seconds, ``cgroup`` as a path. Hook: tracepoint sched/sched_process_exit.
"""

from __future__ import annotations

import signal as _signal
from typing import TYPE_CHECKING, Any

from .cgroups import CgroupPaths
from .tool import Column, Record, Tool, wall_time

if TYPE_CHECKING:
    from ..rules._prefilter import KernelFilter


def describe_status(exit_code: int, sig: int) -> str:
    """``0``, ``code N`` or ``signal N (SIGNAME)``, as libbpf-tools prints it."""
    if sig:
        try:
            return f"signal {sig} ({_signal.Signals(sig).name})"
        except ValueError:
            return f"signal {sig}"
    return "0" if exit_code == 0 else f"code {exit_code}"


class ExitSnoop(Tool):
    """Traces process exits. Filters run in the kernel: ``pid`` (thread group),
    ``comm`` (exact, at most 15 bytes), ``failed_only`` (non-zero status or killed by
    a signal), ``threads`` (report every thread's exit, not only the process's), and
    ``prefilter`` (``bpfloom detect``: the exits no rule can match, by comm)."""

    name = "exitsnoop"
    object_name = "exitsnoop"
    event_type = "exit_event"

    def __init__(
        self,
        *,
        pid: int = 0,
        comm: str = "",
        failed_only: bool = False,
        threads: bool = False,
        timestamps: bool = False,
        prefilter: KernelFilter | None = None,
    ) -> None:
        self.prefilter = prefilter
        self.pid, self.comm = pid, comm
        self.failed_only, self.threads = failed_only, threads
        self.cgroups = CgroupPaths()
        time_col = (Column("TIME", 8),) if timestamps else ()
        self.columns = (
            *time_col,
            Column("PCOMM", 16),
            Column("PID", 7),
            Column("PPID", 7),
            Column("TID", 7),
            Column("AGE(s)", 7, key="age", right=True),
            Column("EXIT_CODE", 0, key="status"),
        )
        super().__init__()

    def configure(self) -> None:
        g = self.obj.globals
        g["targ_pid"] = self.pid
        g["targ_comm"] = self.comm
        g["trace_failed_only"] = self.failed_only
        g["trace_threads"] = self.threads

    def record(self, event: Any) -> Record:
        status = event.exit_status
        sig = status & 0x7F
        code = (status >> 8) & 0xFF
        return {
            "event": "exit",
            "time": wall_time(event.ts_ns),
            "pcomm": event.comm,
            "comm": event.comm,
            "pid": event.pid,
            "ppid": event.ppid,
            "tid": event.tid,
            "age": round((event.ts_ns - event.start_ns) / 1e9, 3),
            "exit_code": 0 if sig else code,
            "signal": sig,
            "status": describe_status(code, sig),
            "cgroup": self.cgroups.path(event.cgroup_id),
        }
