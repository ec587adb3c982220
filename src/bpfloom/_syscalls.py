"""The few libc system calls bpfloom needs that neither Python nor libbpf offers.

``mount(2)`` (for tracefs and bpffs) and ``perf_event_open(2)`` (for perf event
buffers). Kept apart from ``_libbpf`` because they are plain libc, not libbpf.
"""

from __future__ import annotations

import ctypes
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.mount.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long

_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine, 298)

PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_DISABLE = 0x2401
_ATTR_SIZE = 128
# perf_event_attr flag bits (the u64 after read_format)
_FLAG_DISABLED = 1 << 0
_FLAG_WATERMARK = 1 << 14


def mount(source: str, target: str, fstype: str, options: str = "") -> None:
    """``mount(2)`` with ``options`` as the filesystem's data string (``mode=0700``);
    raises ``OSError`` with the errno on failure."""
    data = ctypes.c_char_p(options.encode()) if options else None
    ret = _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, data)
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount -t {fstype} {source} {target}: {os.strerror(err)}")


def perf_event_open_bpf_output(cpu: int, wakeup_events: int = 1) -> int:
    """Open a ``PERF_COUNT_SW_BPF_OUTPUT`` event on ``cpu`` for all processes.

    The returned fd is what a ``BPF_MAP_TYPE_PERF_EVENT_ARRAY`` slot holds; samples
    carry ``PERF_SAMPLE_RAW``. Like libbpf's perf_buffer, wake up after
    ``wakeup_events`` samples.
    """
    attr = bytearray(_ATTR_SIZE)
    # type, size, config, sample_period, sample_type, read_format, flags, wakeup_events
    struct.pack_into(
        "<IIQQQQQI",
        attr,
        0,
        PERF_TYPE_SOFTWARE,
        _ATTR_SIZE,
        PERF_COUNT_SW_BPF_OUTPUT,
        1,
        PERF_SAMPLE_RAW,
        0,
        0,
        wakeup_events,
    )
    return _perf_event_open(attr, cpu, "bpf-output")


PERF_COUNT_SW_CPU_CLOCK = 0


def perf_event_open_cpu_clock(cpu: int, period_ns: int = 1_000_000_000) -> int:
    """Open a ``PERF_COUNT_SW_CPU_CLOCK`` sampling event on ``cpu`` for all processes,
    disabled until a program is attached (what a ``perf_event`` program hangs on)."""
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into(
        "<IIQQQQQ",
        attr,
        0,
        PERF_TYPE_SOFTWARE,
        _ATTR_SIZE,
        PERF_COUNT_SW_CPU_CLOCK,
        period_ns,
        0,
        0,
        _FLAG_DISABLED,
    )
    return _perf_event_open(attr, cpu, "cpu-clock")


def _perf_event_open(attr: bytearray, cpu: int, what: str) -> int:
    """``perf_event_open(attr, pid=-1, cpu, group=-1, FD_CLOEXEC)``; the new fd, or
    ``OSError`` with the errno."""
    buf = ctypes.create_string_buffer(bytes(attr), _ATTR_SIZE)
    fd = _libc.syscall(
        _NR_PERF_EVENT_OPEN,
        buf,
        ctypes.c_int(-1),
        ctypes.c_int(cpu),
        ctypes.c_int(-1),
        ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open({what}, cpu {cpu}): {os.strerror(err)}")
    return int(fd)
