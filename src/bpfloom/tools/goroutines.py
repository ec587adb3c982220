"""goroutines: goroutine state changes of any Go binary, and time spent in each state.

A uprobe on ``runtime.casgstatus`` of the binary (every process running it, or only
``--pid N``) reports each state change as ``TIME STATE GOID PID TGID``, like the
eunomia-bpf goroutine example, but for any Go build: the Go version, the calling
convention and the offset of ``goid`` in ``runtime.g`` are read from the binary itself
(``gobinary``). ``--pid N`` alone traces the executable that process runs. The binary
needs its symbol table and DWARF; for one built without DWARF (``-ldflags=-w``)
``--goid-offset N`` gives the offset of ``goid`` in ``runtime.g`` instead (read it from
an identical build with DWARF). There is no built-in default offset: a wrong one would
print wrong ids without any sign of it.

Records (also the ``--json`` lines): ``time`` (unix seconds), ``state`` (the state the
goroutine moves to), ``old_state``, ``goid``, ``pid``, ``tgid``. As in the eunomia
example and the kernel's own words, ``pid`` is the *thread* id (the lower half of
``bpf_get_current_pid_tgid()``) of the thread that made the change, and ``tgid`` the
process id.

State names are Go's ``_G*`` constants (runtime/runtime2.go) without the prefix:
IDLE, RUNNABLE, RUNNING, SYSCALL, WAITING, MORIBUND_UNUSED, DEAD, ENQUEUE_UNUSED,
COPYSTACK, PREEMPTED; a value with the ``_Gscan`` bit (0x1000) is ``SCAN_`` + its base
name, after Go's ``_Gscanrunnable`` etc. (``casgstatus`` itself refuses scan states,
so this hook does not see them in practice); any other value is ``UNKNOWN_<n>``.

At exit a summary per goroutine: its transitions and the seconds it spent in each
state, counted between consecutive transitions. A goroutine's last state lasts until
its process exits (a second program reports the exit) or the tracer stops; DEAD ends
the count (a dead goroutine's g waits for reuse, no goroutine lives in it). Time before
the first transition seen is unknown and not counted. ``--json`` prints one line per
goroutine: ``{"summary": {"tgid", "goid", "transitions", "state", "exited",
"time_in_state": {"RUNNING": seconds, ...}}}``.

A quirk of the Go runtime shows in the records: ``newproc1`` moves a new goroutine's g
from DEAD to RUNNABLE *before* it writes the new id (up to at least Go 1.19), so that
one line carries the id the g had before (0 for a freshly allocated g). The summary is
not fooled: it tracks each g by address and credits that transition, and the time
spent RUNNABLE after it, to the goroutine the g next shows.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .gobinary import CASGSTATUS, GoBinary, GoBinaryError, host_goarch, read_go_binary
from .tool import Column, Record, Tool, wall_time

# Go's goroutine states, runtime/runtime2.go.
STATES = {
    0: "IDLE",
    1: "RUNNABLE",
    2: "RUNNING",
    3: "SYSCALL",
    4: "WAITING",
    5: "MORIBUND_UNUSED",
    6: "DEAD",
    7: "ENQUEUE_UNUSED",
    8: "COPYSTACK",
    9: "PREEMPTED",
}
G_IDLE, G_DEAD = 0, 6
G_SCAN = 0x1000
# Kinds of event goroutines.bpf.c sends.
EVENT_STATE, EVENT_EXIT = 0, 1


def state_name(value: int) -> str:
    """The name of a goroutine status value: ``1`` → ``RUNNABLE``, ``0x1001`` →
    ``SCAN_RUNNABLE``, anything else → ``UNKNOWN_<value>``."""
    base = STATES.get(value & ~G_SCAN)
    if base is None:
        return f"UNKNOWN_{value}"
    return f"SCAN_{base}" if value & G_SCAN else base


def _state_order(name: str) -> tuple[int, str]:
    """Sort key of state names: Go's order, scan states after, unknown ones last."""
    for value, base in STATES.items():
        if name == base:
            return value, name
        if name == f"SCAN_{base}":
            return G_SCAN + value, name
    return 2 * G_SCAN, name


@dataclass
class _Goroutine:
    """What the summary keeps of one goroutine: its current state since when, and the
    nanoseconds it spent in each earlier state."""

    goid: int
    state: int
    since_ns: int
    transitions: int = 1
    time_ns: dict[int, int] = field(default_factory=dict)
    exited: bool = False

    def move(self, state: int, ts_ns: int) -> None:
        self.close(ts_ns)
        self.state, self.since_ns = state, ts_ns
        self.transitions += 1

    def close(self, ts_ns: int) -> None:
        """Count the time in the current state up to ``ts_ns`` (none for DEAD)."""
        if self.state != G_DEAD:
            spent = max(0, ts_ns - self.since_ns)
            self.time_ns[self.state] = self.time_ns.get(self.state, 0) + spent
        self.since_ns = ts_ns


@dataclass
class _Process:
    """Goroutines of one running process, and its gs whose goroutine id is not known
    yet (g address → state and time of the transition that (re)used it)."""

    goroutines: dict[int, _Goroutine] = field(default_factory=dict)
    births: dict[int, tuple[int, int]] = field(default_factory=dict)


class StateTimes:
    """Time each goroutine spends in each state, from its state changes in order.

    Goroutines are keyed by process and id. A transition out of IDLE or DEAD (a g made
    or reused for a new goroutine) is kept by g address until the g shows its new id,
    because ``newproc1`` writes the id after that transition. Thread-safe (one lock);
    constant work per transition.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[int, _Process] = {}
        self._finished: list[tuple[int, _Goroutine]] = []

    def state_change(self, tgid: int, goid: int, g: int, old: int, new: int, ts_ns: int) -> None:
        """Goroutine ``goid`` (in g at address ``g``) of process ``tgid`` moved from
        state ``old`` to ``new`` at ``ts_ns`` (CLOCK_MONOTONIC)."""
        with self._lock:
            proc = self._processes.setdefault(tgid, _Process())
            if old in (G_IDLE, G_DEAD):
                proc.births[g] = (new, ts_ns)
                return
            gor = proc.goroutines.get(goid)
            birth = proc.births.pop(g, None)
            if gor is not None:
                gor.move(new, ts_ns)
            elif birth is not None:
                gor = proc.goroutines[goid] = _Goroutine(goid, birth[0], birth[1])
                gor.move(new, ts_ns)
            else:  # first seen in mid-life: the time before is unknown
                proc.goroutines[goid] = _Goroutine(goid, new, ts_ns)

    def process_exit(self, tgid: int, ts_ns: int) -> None:
        """Process ``tgid`` exited at ``ts_ns``: its goroutines' last states end there.
        Later events of the same tgid start a new process (the pid was reused)."""
        with self._lock:
            proc = self._processes.pop(tgid, None)
            if proc is None:
                return
            for gor in proc.goroutines.values():
                gor.close(ts_ns)
                gor.exited = True
                self._finished.append((tgid, gor))

    def rows(self, until_ns: int | None = None) -> list[Record]:
        """One dict per goroutine seen, sorted by process and id: ``tgid``, ``goid``,
        ``transitions``, ``state`` (the last one), ``exited`` (its process exited),
        ``time_in_state`` (seconds by state name). Goroutines of running processes
        count their last state until ``until_ns`` (CLOCK_MONOTONIC; default: now)."""
        now = time.monotonic_ns() if until_ns is None else until_ns
        with self._lock:
            found = [(tgid, gor, gor.since_ns) for tgid, gor in self._finished]
            for tgid, proc in self._processes.items():
                found.extend((tgid, gor, now) for gor in proc.goroutines.values())
            out = []
            for tgid, gor, end in sorted(found, key=lambda r: (r[0], r[1].goid)):
                times = dict(gor.time_ns)
                if gor.state != G_DEAD and end > gor.since_ns:
                    times[gor.state] = times.get(gor.state, 0) + end - gor.since_ns
                out.append(
                    {
                        "tgid": tgid,
                        "goid": gor.goid,
                        "transitions": gor.transitions,
                        "state": state_name(gor.state),
                        "exited": gor.exited,
                        "time_in_state": {
                            state_name(s): ns / 1e9 for s, ns in sorted(times.items())
                        },
                    }
                )
            return out


class GoroutineTracer(Tool):
    """Traces goroutine state changes of the Go executable ``binary`` (or of the one
    process ``pid`` runs, when ``binary`` is None).

    ``pid`` limits tracing to that process, in the uprobe and in the kernel.
    ``goid_offset`` overrides the DWARF lookup (for binaries built without DWARF).
    Reading the binary raises ``GoBinaryError`` (one-line reasons) before anything is loaded.

    ``record()`` also feeds the per-goroutine summary (``times``, a ``StateTimes``);
    it and ``summaries()`` may be called from different threads. Memory grows by a
    small entry per goroutine seen.
    """

    name = "goroutines"
    object_name = "goroutines"
    columns = (
        Column("TIME", 8),
        Column("STATE", 15),
        Column("GOID", 8),
        Column("PID", 7),
        Column("TGID", 7),
    )

    def __init__(
        self,
        binary: str | None = None,
        *,
        pid: int = 0,
        goid_offset: int | None = None,
    ) -> None:
        self.pid = pid
        self.go: GoBinary = read_go_binary(_binary_path(binary, pid), goid_offset=goid_offset)
        host = host_goarch()
        if self.go.goarch != host:
            raise GoBinaryError(
                f"{self.go.path} is an {self.go.goarch} binary; this machine is "
                f"{host or os.uname().machine}"
            )
        self.times = StateTimes()
        super().__init__()

    def configure(self) -> None:
        g = self.obj.globals
        g["stack_abi"] = not self.go.register_abi
        g["goid_offset"] = self.go.goid_offset
        g["targ_tgid"] = self.pid

    def attach(self) -> None:
        """Attach the uprobe to ``runtime.casgstatus`` of the binary (only in ``pid``,
        if given) and the process exit tracepoint."""
        self.obj.programs["casgstatus"].attach_uprobe(self.go.path, CASGSTATUS, pid=self.pid or -1)
        self.obj.programs["process_exit"].attach()

    def record(self, event: Any) -> Record | None:
        """The record of a state change (None for a process exit); updates the
        summary either way."""
        ts_ns, tgid = event.ts_ns, event.tgid
        if event.kind == EVENT_EXIT:
            self.times.process_exit(tgid, ts_ns)
            return None
        goid, old, new = event.goid, event.old_state, event.new_state
        self.times.state_change(tgid, goid, event.g, old, new, ts_ns)
        return {
            "time": wall_time(ts_ns),
            "state": state_name(new),
            "old_state": state_name(old),
            "goid": goid,
            "pid": event.pid,
            "tgid": tgid,
        }

    def summaries(self, until_ns: int | None = None) -> list[Record]:
        """The per-goroutine summary so far (see ``StateTimes.rows``)."""
        return self.times.rows(until_ns)

    def summary(self) -> str | None:
        """The per-goroutine summary as a table."""
        rows = self.summaries()
        return format_summary(rows) if rows else None

    def summary_records(self) -> list[Record]:
        """The per-goroutine summary for JSON: one ``{"summary": ...}`` per goroutine."""
        return [{"summary": row} for row in self.summaries()]


def format_summary(rows: list[Record]) -> str:
    """The summaries as a table, one column per state any goroutine spent time in."""
    states = sorted({s for row in rows for s in row["time_in_state"]}, key=_state_order)
    fixed = [("TGID", 7), ("GOID", 8), ("TRANSITIONS", 11), ("STATE", 15)]
    widths = [max(len(s), 10) for s in states]
    header = " ".join(h.rjust(w) if i in (1, 2) else h.ljust(w) for i, (h, w) in enumerate(fixed))
    header += "".join(" " + s.rjust(w) for s, w in zip(states, widths, strict=True))
    lines = ["Time in each state (seconds), per goroutine:", header.rstrip()]
    for row in rows:
        line = f"{row['tgid']!s:<7} {row['goid']:>8} {row['transitions']:>11} {row['state']:<15}"
        for s, w in zip(states, widths, strict=True):
            seconds = row["time_in_state"].get(s)
            line += " " + ("-" if seconds is None else f"{seconds:.6f}").rjust(w)
        lines.append(line.rstrip())
    return "\n".join(lines)


def _binary_path(binary: str | None, pid: int) -> str:
    """The executable to trace: ``binary``, or the one process ``pid`` runs.

    ``binary`` is resolved once, here, to an absolute path with symlinks resolved (a
    bare name is a file in the current directory, never looked up on PATH); the same
    path is then read for the analysis and given to the uprobe, so both are one file.
    """
    if binary is not None:
        binary = os.path.realpath(binary)
    if pid:
        exe = f"/proc/{pid}/exe"
        if not os.path.exists(f"/proc/{pid}"):
            raise GoBinaryError(f"no process {pid}")
        if binary is None:
            return exe
        try:
            same = os.path.samefile(binary, exe)
        except OSError:
            same = True  # let read_go_binary say what is wrong with binary
        if not same:
            raise GoBinaryError(f"process {pid} does not run {binary}")
        return binary
    if binary is None:
        raise GoBinaryError("give the Go binary to trace, or the pid of a process running it")
    return binary
