"""Faults must not lose data silently, nor hang: signals. A signal that arrives while
the main thread holds the lock of ``StopSignals.stop`` must not deadlock it, and a
second SIGINT exits at once even while the main thread is blocked in a write.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bpfloom.pipeline import StopSignals
from test_pipeline_fake import wait_for

WAIT = 60.0  # seconds a wait may take, only to catch a hang: far above what it needs

# --- a second signal exits at once -----------------------------------------------------


def _threads_blocked_in_a_pipe_write(pid: int) -> list[str]:
    """Threads of ``pid`` asleep in a write(2) to fd 1 that is waiting on a full pipe."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            call = (task / "syscall").read_text().split()
            wchan = (task / "wchan").read_text()
        except OSError:
            continue
        if call[:2] == ["1", "0x1"] and "pipe_write" in wchan:
            found.append(task.name)
    return found


def _wait_delivered(pid: int, signum: int) -> None:
    """Until ``signum`` is no longer pending for ``pid``: a second signal sent before
    the first is delivered would merge with it."""
    bit = 1 << (signum - 1)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        pending = 0
        for line in status.splitlines():
            if line.startswith(("ShdPnd:", "SigPnd:")):
                pending |= int(line.split()[1], 16)
        if not pending & bit:
            return
        time.sleep(0.001)
    raise AssertionError(f"signal {signum} was never delivered")


WRITER_SCRIPT = r"""
import os
from bpfloom.pipeline import StopSignals

with StopSignals():
    data = b"x" * (1 << 20)
    while data:  # stdout is a pipe nobody reads: blocks here, signal or not
        data = data[os.write(1, data):]
"""


def test_a_second_signal_exits_while_the_main_thread_is_blocked_in_a_write() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    try:
        wait_for(lambda: str(proc.pid) in _threads_blocked_in_a_pipe_write(proc.pid), WAIT)
        for _ in range(2):
            proc.send_signal(signal.SIGINT)
            _wait_delivered(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=WAIT) == 128 + signal.SIGINT
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


# --- 12. the signal handler does only async-signal-safe work -------------------------------

LOCKED_EVENT_SCRIPT = r"""
import os
import signal
import sys

from bpfloom.pipeline import StopSignals

with StopSignals() as signals:
    # Where Event.wait() is between taking the event's lock and sleeping on it: a
    # handler that calls stop.set() here waits for that lock in the very thread that
    # holds it. (_cond is CPython's threading.Event internals.)
    with signals.stop._cond:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the Python-level handler runs between these bytecodes
            pass
    print("handler returned", flush=True)
    assert signals.stop.wait(60), "the signal did not set stop"
print("stopped", flush=True)
"""


def test_a_signal_while_the_main_thread_holds_the_stop_lock_does_not_deadlock() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LOCKED_EVENT_SCRIPT)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the signal handler deadlocked the main thread:\n{out}\n{err}")
    assert proc.returncode == 0, err
    assert out.split() == ["handler", "returned", "stopped"]


def test_stop_signals_restore_the_wakeup_fd_and_pass_other_signals_on() -> None:
    """StopSignals borrows the process's one wakeup fd: a fd set before gets the bytes
    of the other signals meanwhile, and is set again afterwards."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_fd = signal.set_wakeup_fd(write_fd)
    old_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        with StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGUSR1)
            wait_for(lambda: bool(select.select([read_fd], [], [], 0)[0]), WAIT)
            assert not signals.stop.is_set()
        assert os.read(read_fd, 16) == bytes([signal.SIGUSR1])
        assert signal.set_wakeup_fd(old_fd) == write_fd
    finally:
        signal.signal(signal.SIGUSR1, old_usr1)
        os.close(read_fd)
        os.close(write_fd)
