"""Handlers for the pipeline tests, importable by the process executor's workers.

The process executor starts its workers with multiprocessing "spawn", so a handler
must be a module-level function of an importable module (tests/ is on ``sys.path``
in the workers too: spawn hands the parent's ``sys.path`` over). Handlers are told
what to do through environment variables, which spawned workers inherit:

- ``PIPELINE_OUT``: a directory; each (process, thread) appends what it handled to
  its own file there (``record_*``), so the test sees every handled event whatever
  process handled it. Files are written with ``os.write`` on ``O_APPEND``
  descriptors: nothing sits in a user-space buffer when a worker exits.
- ``PIPELINE_SLOW_EVERY`` / ``PIPELINE_SLOW_SECONDS``: sleep that long on every
  n-th event (or on every batch, for batch handlers), to make handlers slowish.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bpfloom import Batch

OUT = "PIPELINE_OUT"
SLOW_EVERY = "PIPELINE_SLOW_EVERY"
SLOW_SECONDS = "PIPELINE_SLOW_SECONDS"

_fds: dict[tuple[str, int, int, str], int] = {}
_fds_lock = threading.Lock()


def _fd(kind: str) -> int | None:
    out = os.environ.get(OUT)
    if not out:
        return None
    slot = (out, os.getpid(), threading.get_ident(), kind)
    fd = _fds.get(slot)
    if fd is None:
        with _fds_lock:
            fd = _fds.get(slot)
            if fd is None:
                name = f"{kind}.{os.getpid()}.{threading.get_ident()}"
                fd = os.open(Path(out) / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                _fds[slot] = fd
    return fd


def close_files() -> None:
    """Close this process's descriptors (the test process calls it after a test)."""
    with _fds_lock:
        for fd in _fds.values():
            os.close(fd)
        _fds.clear()


def _slow_seconds(seq: int | None) -> float:
    every = int(os.environ.get(SLOW_EVERY, "0"))
    if not every or (seq is not None and seq % every):
        return 0.0
    return float(os.environ.get(SLOW_SECONDS, "0.001"))


def _write_seqs(seqs: np.ndarray) -> None:
    fd = _fd("seq")
    if fd is not None:
        os.write(fd, np.ascontiguousarray(seqs, dtype="<u8").tobytes())


def read_seqs(out: Path) -> np.ndarray:
    """Every seq recorded under ``out`` by any process or thread (unsorted)."""
    parts = [np.fromfile(p, dtype="<u8") for p in sorted(out.glob("seq.*"))]
    return np.concatenate(parts) if parts else np.zeros(0, dtype="<u8")


def read_seq_files(out: Path) -> list[np.ndarray]:
    """The seqs of each recording file, in the order they were written there."""
    return [np.fromfile(p, dtype="<u8") for p in sorted(out.glob("seq.*"))]


# --- per-event and batch handlers ------------------------------------------------------


def record_event(ev: Any) -> None:
    """Records ``ev.seq``; sleeps on every ``PIPELINE_SLOW_EVERY``-th seq."""
    _write_seqs(np.array([ev.seq], dtype="<u8"))
    pause = _slow_seconds(ev.seq)
    if pause:
        time.sleep(pause)


async def record_event_async(ev: Any) -> None:
    """``record_event`` for the async executor: the pause is an ``asyncio.sleep``."""
    _write_seqs(np.array([ev.seq], dtype="<u8"))
    pause = _slow_seconds(ev.seq)
    if pause:
        await asyncio.sleep(pause)


def record_batch(batch: Batch) -> None:
    """Records every seq of a batch (one write); sleeps once per batch if slow."""
    _write_seqs(batch.numpy()["seq"])
    pause = _slow_seconds(None)
    if pause:
        time.sleep(pause)


async def record_batch_async(batch: Batch) -> None:
    _write_seqs(batch.numpy()["seq"])
    pause = _slow_seconds(None)
    if pause:
        await asyncio.sleep(pause)


def record_key_seq(ev: Any) -> None:
    """For key ordering in worker processes: records seq after a short random sleep.

    Each worker writes its own file, so per file the seqs are in handling order.
    """
    time.sleep(random.uniform(0, 0.0005))
    _write_seqs(np.array([ev.seq], dtype="<u8"))


def raise_every_10th(ev: Any) -> None:
    """Fails on every event whose seq is a multiple of 10."""
    if ev.seq % 10 == 0:
        raise ValueError(f"event {ev.seq} is a multiple of 10")


def raise_every_10th_batch(batch: Batch) -> None:
    """Fails on every batch (each of its events counts as a handler error)."""
    raise ValueError(f"batch of {len(batch)}")


def noop(ev: Any) -> None:
    """Does nothing (the cheapest handler)."""


def stuck(ev: Any) -> None:
    """Outlives any shutdown deadline of the tests (a worker process is terminated)."""
    time.sleep(60)


# --- faults (tests/test_pipeline_faults.py) ---------------------------------------------

FAULT_SEQ = 50  # the seq at which the handlers below fail


def exit_at_seq(ev: Any) -> None:
    """``sys.exit(3)`` on event ``FAULT_SEQ``."""
    if ev.seq == FAULT_SEQ:
        sys.exit(3)


def interrupt_at_seq(ev: Any) -> None:
    """Raises ``KeyboardInterrupt`` on event ``FAULT_SEQ``."""
    if ev.seq == FAULT_SEQ:
        raise KeyboardInterrupt


def os_exit_at_seq(ev: Any) -> None:
    """Ends its process with ``os._exit(3)`` on event ``FAULT_SEQ`` (no clean-up)."""
    if ev.seq == FAULT_SEQ:
        os._exit(3)


def sigkill_at_seq(ev: Any) -> None:
    """Kills its own process with SIGKILL on event ``FAULT_SEQ``."""
    if ev.seq == FAULT_SEQ:
        os.kill(os.getpid(), signal.SIGKILL)
