"""Faults must not lose data silently, nor hang: what the pipeline does when a handler
raises ``SystemExit``/``KeyboardInterrupt`` or kills its worker process, when the
object or a reader is closed under it, when a handler never returns (in the library,
and in a tool whose stdout is a full pipe), and when a signal arrives while the main
thread holds the lock of ``StopSignals.stop``.

Pipeline logic runs over ``FakeReader`` (test_pipeline_fake.py); what needs the kernel
or a whole process (closing a real object, exiting the interpreter, signals, a tool's
CLI) runs against real ring buffers, in subprocesses where a hang must be caught.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bpfloom
import pipeline_handlers as handlers
from bpfloom import ClosedError, Pipeline, PipelineError
from bpfloom.pipeline import EXECUTORS, StopSignals
from conftest import ROOT, assert_exact, bpf_object, pipeline_threads
from test_pipeline_fake import FakeReader, fake_batches, wait_for

WAIT = 60.0  # seconds a wait may take, only to catch a hang: far above what it needs
SMALL = bpf_object("pipeline")  # tests/bpf/pipeline.bpf.c: 64 KiB ring
DRAIN = ROOT / "bench" / "bpf" / "drain.bpf.o"


# --- 9. a handler's SystemExit / KeyboardInterrupt, a worker process that dies ----------


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_base_exception_from_a_handler_stops_the_pipeline_and_is_reraised(
    executor: str, exc: type[BaseException], make_pipeline: Callable[..., Pipeline]
) -> None:
    n = 1000
    handler = handlers.exit_at_seq if exc is SystemExit else handlers.interrupt_at_seq
    reader = FakeReader(fake_batches(n, 100))
    pipeline = make_pipeline(
        [reader], handler, executor=executor, workers=2, queue_size=200, shutdown_timeout=WAIT
    )
    pipeline.start()
    assert pipeline.wait(WAIT), "the pipeline kept running after the handler raised"
    assert not pipeline.running
    with pytest.raises(exc) as raised:
        pipeline.stop()
    if exc is SystemExit:
        assert raised.value.code == 3
    with pytest.raises(exc):  # stop() stays idempotent, and keeps saying so
        pipeline.stop()
    stats = pipeline.stats.snapshot()
    assert stats["handler_errors"] == 1
    assert stats["handled"] < n  # what came after the exception was not handled
    assert_exact(stats, n)
    assert reader.pending == 0
    assert pipeline_threads() == []


@pytest.mark.parametrize(
    "handler", [handlers.os_exit_at_seq, handlers.sigkill_at_seq], ids=["os_exit", "sigkill"]
)
def test_a_worker_process_that_dies_stops_the_pipeline(
    handler: Callable[[Any], None], make_pipeline: Callable[..., Pipeline]
) -> None:
    """A worker process that dies mid-batch: the pipeline stops, stop() says which
    worker and how, and the batches it had are counted as dropped (never a hang)."""
    n = 1000
    reader = FakeReader(fake_batches(n, 20))
    pipeline = make_pipeline(
        [reader], handler, executor="process", workers=2, shutdown_timeout=WAIT
    )
    pipeline.start()
    assert pipeline.wait(WAIT), "the pipeline kept running after its worker died"
    with pytest.raises(PipelineError, match=r"worker process bpfloom-process-\d died"):
        pipeline.stop()
    stats = pipeline.stats.snapshot()
    assert_exact(stats, n)
    assert stats["handled"] < n
    assert stats["dropped_queue"] >= 1  # at least the batch holding FAULT_SEQ
    assert pipeline_threads() == []


# --- 10. the object or a reader closed under a running pipeline ---------------------------


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_reader_closed_under_a_running_pipeline_stops_it(
    executor: str, make_pipeline: Callable[..., Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    n = 500
    reader = FakeReader(fake_batches(n, 50))
    pipeline = make_pipeline([reader, FakeReader()], handlers.noop, executor=executor)
    pipeline.start()
    wait_for(lambda: pipeline.stats.handled == n)
    reader.close()
    assert pipeline.wait(WAIT), "the pipeline did not notice its reader was closed"
    assert not pipeline.running
    assert isinstance(pipeline.error, ClosedError)
    stats = pipeline.stop()  # a source that ended is reported, not raised
    assert_exact(stats, n)
    assert stats["handled"] == n
    assert any("closed" in r.getMessage() for r in caplog.records if r.name == "bpfloom.pipeline")
    assert pipeline_threads() == []


@pytest.mark.kernel
@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_closing_the_object_under_a_running_pipeline_stops_it(executor: str) -> None:
    n = 100
    obj = bpfloom.load(SMALL)
    try:
        pipeline = Pipeline(obj, handlers.noop, executor=executor)
        pipeline.start()
        args = struct.pack("<QQQQ", n, 0, 0, 0)
        assert obj.program("produce").test_run(args) == 0
        wait_for(lambda: pipeline.stats.handled == n)
        obj.close()
        assert pipeline.wait(WAIT), "the pipeline did not notice its object was closed"
        assert isinstance(pipeline.error, ClosedError)
        stats = pipeline.stop()
    finally:
        obj.close()
    assert_exact(stats, n)
    assert stats["handled"] == n
    assert pipeline_threads() == []


# --- 11. a handler that never returns ------------------------------------------------------

STUCK_SCRIPT = r'''
"""Runs a pipeline whose handler never returns, stops it, and exits: the interpreter
must not wait for the stuck handler. Prints the stop() stats as one JSON line."""
import asyncio
import json
import struct
import sys
import threading
import time

from bpfloom import Pipeline, load


def block(ev):
    threading.Event().wait()


async def block_the_loop(ev):
    time.sleep(3600)  # a coroutine that blocks its event loop for good


def main():
    executor = sys.argv[2]
    obj = load(sys.argv[1])
    handler = block_the_loop if executor == "async" else block
    pipeline = Pipeline(obj.ring_buffer("rb"), handler, executor=executor, workers=1,
                        shutdown_timeout=0.5)
    pipeline.start()
    assert obj.program("produce").test_run(struct.pack("<QQ", 10, 0)) == 0
    while pipeline.stats.inflight == 0:
        time.sleep(0.001)
    stats = pipeline.stop()
    print(json.dumps(stats), flush=True)
    obj.close()


if __name__ == "__main__":
    main()
'''


def _python_exits(args: list[str], hang: str) -> str:
    """Run ``python ARGS``; its stdout once it exited with status 0, else the test fails
    (``hang`` says what not exiting within WAIT means)."""
    proc = subprocess.Popen(
        [sys.executable, *args],
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
        pytest.fail(f"the process {hang}:\n{out}\n{err}")
    assert proc.returncode == 0, err
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_handler_that_never_returns_does_not_keep_the_interpreter_alive(
    tmp_path: Path, executor: str
) -> None:
    script = tmp_path / "stuck_handler.py"
    script.write_text(STUCK_SCRIPT)
    out = _python_exits([str(script), str(DRAIN), executor], "did not exit after stop() returned")
    stats = json.loads(out.strip().splitlines()[-1])
    assert_exact(stats, 10)
    assert stats["handled"] < 10  # the stuck one (at least) was dropped at the deadline


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


def _burst_of_getppid() -> None:
    os.getppid()  # 200 events of pipeline.bpf.o's on_getppid, about 6 KB of output


def _burst_of_failed_opens() -> None:
    path = "/nonexistent-bpfloom-test/" + "x" * 200  # about 260 bytes of output each
    for _ in range(20):
        with contextlib.suppress(OSError):
            os.open(path, os.O_RDONLY)


# The tools' CLI (run_tool, here opensnoop) and `bpfloom run` (cli.py) each stop and
# report on their own.
TOOLS_TO_STALL = {
    "run": (["run", str(SMALL), "--target_pid", "{pid}", "--burst", "200"], _burst_of_getppid),
    "opensnoop": (["opensnoop", "--pid", "{pid}", "--failed"], _burst_of_failed_opens),
}


@pytest.fixture(params=sorted(TOOLS_TO_STALL))
def tool_with_a_full_stdout(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A tool tracing this process, with stdout a pipe nobody reads, fed with events
    until its reader thread is stuck writing to that pipe."""
    tool_args, make_events = TOOLS_TO_STALL[request.param]
    err_path = tmp_path / "stderr"
    args = [sys.executable, "-m", "bpfloom"]
    args += [arg.format(pid=os.getpid()) for arg in tool_args]
    with open(err_path, "w") as err:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        wait_for(lambda: "tracing" in err_path.read_text() or proc.poll() is not None, timeout=WAIT)
        assert proc.poll() is None, err_path.read_text()

        def stuck() -> bool:
            make_events()
            return bool(_threads_blocked_in_a_pipe_write(proc.pid))

        wait_for(stuck, timeout=WAIT)
        yield proc, err_path
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.kernel
def test_a_tool_with_a_full_stdout_pipe_exits_on_sigint(
    tool_with_a_full_stdout: tuple[subprocess.Popen[bytes], Path],
) -> None:
    """One SIGINT: the tool stops at its shutdown deadline although a write is stuck,
    says so on stderr with its counts, and exits (status 1: output was lost)."""
    proc, err_path = tool_with_a_full_stdout
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"one SIGINT did not end the tool:\n{err_path.read_text()}")
    stderr = err_path.read_text()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "Fatal" not in stderr, stderr
    assert "bpfloom: error: stdout is blocked" in stderr, stderr
    assert re.search(r"\d+ events( received)?; lost:? \d+ in the kernel", stderr), stderr


@pytest.mark.kernel
def test_a_tool_with_a_full_stdout_pipe_exits_at_once_on_a_second_sigint(
    tool_with_a_full_stdout: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, err_path = tool_with_a_full_stdout
    proc.send_signal(signal.SIGINT)
    _wait_delivered(proc.pid, signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=WAIT)  # at once; the bound only catches a hang
    except subprocess.TimeoutExpired:
        pytest.fail(f"two SIGINTs did not end the tool:\n{err_path.read_text()}")
    assert proc.returncode == 128 + signal.SIGINT, err_path.read_text()


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
    out = _python_exits(
        ["-c", textwrap.dedent(LOCKED_EVENT_SCRIPT)], "deadlocked in the signal handler"
    )
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
