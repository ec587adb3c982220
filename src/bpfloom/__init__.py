"""bpfloom: a Python runtime for precompiled CO-RE eBPF objects.

Open an object, set its globals, load it, attach its programs, and read typed events
from its ring buffers and perf buffers in batches::

    import bpfloom

    with bpfloom.load("exec.bpf.o", globals={"target_ppid": 0}) as obj:
        obj.attach_all()
        with obj.ring_buffer("events") as rb:
            for ev in rb.read(timeout=1.0):
                print(ev.pid, ev.comm)
"""

from ._exceptions import (
    AttachError,
    BpfloomError,
    BpfPermissionError,
    ClosedError,
    EnvironmentSetupError,
    GlobalError,
    LoadError,
    MapError,
    ObjectFileError,
    TypeInfoError,
)
from .batch import Batch
from .decode import Decoder
from .maps import Map
from .object import BpfObject, Globals, GlobalVar, Link, Program, load
from .perfbuf import PerfBuffer
from .pipeline import Pipeline, PipelineError
from .ringbuf import RingBuffer

__all__ = [
    "AttachError",
    "Batch",
    "BpfObject",
    "BpfPermissionError",
    "BpfloomError",
    "ClosedError",
    "Decoder",
    "EnvironmentSetupError",
    "GlobalError",
    "GlobalVar",
    "Globals",
    "Link",
    "LoadError",
    "Map",
    "MapError",
    "ObjectFileError",
    "PerfBuffer",
    "Pipeline",
    "PipelineError",
    "Program",
    "RingBuffer",
    "TypeInfoError",
    "load",
]
