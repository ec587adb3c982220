"""What BPF programs print with ``bpf_printk``, read from tracefs' ``trace_pipe``.

``bpf_printk`` (the helpers ``bpf_trace_printk``/``bpf_trace_vprintk``) writes to the
kernel's trace buffer, which ``/sys/kernel/tracing/trace_pipe`` hands out line by line,
each line once: two readers share the lines between them. The buffer is system-wide, so
the lines of *every* BPF program that prints are there; a line does not say which
program wrote it. :class:`TracePipe` reads it in a thread and passes each
``bpf_trace_printk`` line, parsed into a :class:`TraceLine`, to a callback; other trace
events (of ftrace users) are skipped.

The text comes from BPF programs and, through them, from traced processes (comm,
``%s`` arguments): callers escape it before it reaches a terminal. Lines are bounded
(``MAX_LINE`` bytes; longer ones are cut).
"""

from __future__ import annotations

import errno
import os
import re
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import _env
from ._exceptions import EnvironmentSetupError

__all__ = ["TraceLine", "TracePipe", "parse_line", "trace_pipe_path"]

MAX_LINE = 64 * 1024
# "           <comm>-<pid>     [<cpu>] <flags> <seconds>: bpf_trace_printk: <message>"
# (kernel/trace/trace_output.c); the comm is at most 15 characters and the flags field
# is absent on old kernels. Bounding the comm keeps a message that imitates the prefix
# from moving the split.
_LINE = re.compile(
    r"^\s*(?P<comm>.{0,16}?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:\S+\s+)?(?P<time>\d+\.\d+):\s+bpf_trace_printk:\s?(?P<message>.*)$",
    re.DOTALL,
)


@dataclass(frozen=True)
class TraceLine:
    """One ``bpf_printk`` line: the task that ran the program, its CPU, the trace clock
    in seconds, and the message."""

    comm: str
    pid: int
    cpu: int
    time: float
    message: str

    def as_dict(self) -> dict[str, object]:
        return {
            "comm": self.comm,
            "pid": self.pid,
            "cpu": self.cpu,
            "time": self.time,
            "message": self.message,
        }


def parse_line(text: str) -> TraceLine | None:
    """The ``bpf_trace_printk`` line ``text`` parsed, or None for any other line."""
    m = _LINE.match(text)
    if m is None:
        return None
    return TraceLine(
        comm=m["comm"].strip(),
        pid=int(m["pid"]),
        cpu=int(m["cpu"]),
        time=float(m["time"]),
        message=m["message"],
    )


def trace_pipe_path() -> str:
    """Where trace_pipe is: tracefs' own mount or the one under debugfs."""
    for base in (_env.TRACEFS, "/sys/kernel/debug/tracing"):
        path = os.path.join(base, "trace_pipe")
        if os.path.exists(path):
            return path
    return os.path.join(_env.TRACEFS, "trace_pipe")


class TracePipe:
    """Reads trace_pipe in a thread and calls ``on_line`` for every bpf_printk line.

    ``start()`` opens the pipe (mounting tracefs when root, as loading does), throws
    away the lines already waiting there (written before this run; the kernel keeps
    them until someone reads them) and starts the thread; ``close()`` reads what is
    there by then, stops the thread and closes the file (idempotent). ``on_line`` runs
    in the reader thread. ``lines`` counts the lines passed on, ``discarded`` the old
    ones thrown away.
    """

    def __init__(self, on_line: Callable[[TraceLine], None], *, poll_interval: float = 0.2):
        self._on_line = on_line
        self._poll_interval = poll_interval
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending = b""
        self.lines = 0
        self.discarded = 0

    def start(self) -> TracePipe:
        _env.prepare()
        path = trace_pipe_path()
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise EnvironmentSetupError(
                f"cannot open {path}: {exc.strerror}", errno=exc.errno
            ) from exc
        self._read_available(deliver=False)
        self._pending = b""
        self._thread = threading.Thread(target=self._run, name="bpfloom-trace-pipe", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._fd is not None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if poller.poll(self._poll_interval * 1000):
                self._read_available()
        self._read_available()

    def _read_available(self, deliver: bool = True) -> None:
        """Read until the pipe has nothing more to give now; pass on complete lines
        (or count them as discarded)."""
        assert self._fd is not None
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return
                raise
            if not chunk:
                return
            data = self._pending + chunk
            *lines, self._pending = data.split(b"\n")
            if len(self._pending) > MAX_LINE:
                lines.append(self._pending[:MAX_LINE])
                self._pending = b""
            for raw in lines:
                parsed = parse_line(raw[:MAX_LINE].decode("utf-8", "replace"))
                if parsed is None:
                    continue
                if not deliver:
                    self.discarded += 1
                    continue
                self.lines += 1
                self._on_line(parsed)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> TracePipe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
