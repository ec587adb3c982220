"""The agent's spool: sealed messages waiting for the server, oldest first, bounded.

Every message the NATS sink seals waits here until it is published; while the server
answers, that is a moment. While it does not, messages pile up: they are *spooled*
(counted once each, by records), and replayed in order when it returns. The spool is
bounded in bytes: when a new message does not fit, the oldest are dropped and counted
(``dropped``), never the reader blocked.

With a directory, messages that wait for an unreachable server are written there (one
file each, ``<ns>-<boot>-<seq>.msg``: a JSON line with the subject and headers, then
the payload), so the memory holds only their names, and a file is removed once the
server acknowledged it. What is still there when the agent stops (``kept``) is taken
over by the next agent that uses the directory (``adopted``) and sent first, with its
original message ids, so JetStream drops what it already had. One agent at a time uses
a directory (an exclusive ``flock`` on ``DIR/lock``).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._exceptions import BpfloomError

MAX_HEADER_LINE = 64 * 1024  # a spool file's first line; longer is not ours


@dataclass
class Outgoing:
    """One sealed message: where it goes, its headers and payload, how many records.

    ``payload`` is None while the message is only on disk (``path``). ``order`` keeps
    the spool sorted (messages adopted from an earlier run come first)."""

    order: int
    subject: str
    headers: dict[str, str]
    payload: bytes | None
    count: int
    size: int
    path: str | None = None
    spooled: bool = False
    sent_at: float = field(default=0.0, compare=False)


class Spool:
    """Messages waiting to be published, oldest first; thread-safe.

    ``limit`` bounds the bytes held (in memory and on disk). Counters, in records:
    ``spooled`` went through the spool while the server was unreachable, ``dropped``
    were thrown away because the spool was full, ``kept`` were left in the directory at
    ``close()`` for the next run, ``adopted`` were taken over from an earlier run.
    Raises ``BpfloomError`` when the directory cannot be used.
    """

    def __init__(self, limit: int, directory: str | None = None, boot: str = "") -> None:
        self.limit = limit
        self.directory = directory
        self.boot = boot
        self.lock = threading.Lock()
        self._queue: collections.deque[Outgoing] = collections.deque()
        self.bytes = 0
        self.spooled = 0
        self.dropped = 0
        self.dropped_messages = 0
        self.kept = 0
        self.adopted = 0
        self.full_once = False
        self._lock_fd: int | None = None
        if directory is not None:
            self._open_directory(directory)

    # --- the directory ---------------------------------------------------------------

    def _open_directory(self, directory: str) -> None:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        except OSError as exc:
            raise BpfloomError(
                f"spool directory {directory}: {exc.strerror or exc}", errno=exc.errno
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BpfloomError(
                f"spool directory {directory} is in use by another bpfloom process"
            ) from None
        self._lock_fd = fd
        names = sorted(n for n in os.listdir(directory) if n.endswith(".msg"))
        order = -len(names)
        for name in names:
            path = os.path.join(directory, name)
            out = _read_meta(path, order)
            order += 1
            if out is None:  # not one of ours, or cut short: left alone
                continue
            self._queue.append(out)
            self.bytes += out.size
            self.adopted += out.count
        self._trim()

    def _write(self, out: Outgoing) -> None:
        """Move ``out``'s payload to a file (it stays in memory if that fails)."""
        if self.directory is None or out.path is not None or out.payload is None:
            return
        name = f"{time.time_ns():020d}-{self.boot}-{out.order:012d}.msg"
        path = os.path.join(self.directory, name)
        meta = json.dumps({"subject": out.subject, "headers": out.headers, "count": out.count})
        try:
            with open(path + ".tmp", "wb") as f:
                f.write(meta.encode() + b"\n" + out.payload)
            os.rename(path + ".tmp", path)
        except OSError:
            return
        out.path = path
        out.payload = None

    # --- the queue ---------------------------------------------------------------------

    def put(self, out: Outgoing, server_down: bool) -> None:
        """Add a newly sealed message (written to the directory when ``server_down``)."""
        with self.lock:
            if server_down:
                self._mark(out)
            self._queue.append(out)
            self.bytes += out.size
            self._trim()

    def put_back(self, outs: Iterable[Outgoing], server_down: bool) -> None:
        """Messages whose publication failed go back, in order, before newer ones."""
        items = list(outs)
        if not items:
            return
        with self.lock:
            last = max(o.order for o in items)
            front = []
            while self._queue and self._queue[0].order < last:
                front.append(self._queue.popleft())
            for out in items:
                self.bytes += out.size
                if server_down:
                    self._mark(out)
            merged = sorted(front + items, key=lambda o: o.order)
            self._queue.extendleft(reversed(merged))
            self._trim()

    def _mark(self, out: Outgoing) -> None:
        if not out.spooled:
            out.spooled = True
            self.spooled += out.count
        self._write(out)

    def spool_all(self) -> None:
        """The server went away: what waits now waits for it (counted, written)."""
        with self.lock:
            for out in self._queue:
                self._mark(out)

    def take(self) -> Outgoing | None:
        """The oldest message, its payload loaded (None when empty). Its file stays
        until ``done``; a file that cannot be read any more is dropped, counted."""
        with self.lock:
            while self._queue:
                out = self._queue.popleft()
                self.bytes -= out.size
                if out.payload is None and out.path is not None:
                    try:
                        with open(out.path, "rb") as f:
                            f.readline(MAX_HEADER_LINE)
                            out.payload = f.read()
                    except OSError:
                        self._count_dropped(out)
                        continue
                return out
            return None

    def done(self, out: Outgoing) -> None:
        """``out`` was acknowledged: its file goes."""
        out.payload = None
        if out.path is not None:
            _unlink(out.path)
            out.path = None

    def _trim(self) -> None:
        while self.bytes > self.limit and len(self._queue) > 1:
            out = self._queue.popleft()
            self.bytes -= out.size
            self._count_dropped(out)
            self.full_once = True

    def _count_dropped(self, out: Outgoing) -> None:
        self.dropped += out.count
        self.dropped_messages += 1
        if out.path is not None:
            _unlink(out.path)
            out.path = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def records(self) -> int:
        with self.lock:
            return sum(o.count for o in self._queue)

    def close(self, unsent: Iterable[Outgoing] = ()) -> None:
        """Stop: what was not acknowledged (``unsent``, and all that is queued) is kept
        in the directory for the next run, or counted as dropped without one."""
        with self.lock:
            left = sorted([*unsent, *self._queue], key=lambda o: o.order)
            self._queue.clear()
            self.bytes = 0
            for out in left:
                if self.directory is not None:
                    self._write(out)
                if out.path is not None:
                    self.kept += out.count
                else:
                    self.dropped += out.count
                    self.dropped_messages += 1
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None


def _read_meta(path: str, order: int) -> Outgoing | None:
    try:
        with open(path, "rb") as f:
            line = f.readline(MAX_HEADER_LINE)
            f.seek(0, os.SEEK_END)
            size = f.tell() - len(line)
        meta = json.loads(line)
        subject = meta["subject"]
        headers = meta["headers"]
        count = int(meta["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(subject, str) or not isinstance(headers, dict):
        return None
    headers = {str(k): str(v) for k, v in headers.items()}
    return Outgoing(order, subject, headers, None, count, size, path=path, spooled=True)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
