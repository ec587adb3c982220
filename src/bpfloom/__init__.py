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

from __future__ import annotations

# Not typing.TYPE_CHECKING: importing typing is most of this module's import time, and
# mypy treats any constant named TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._exceptions import (
        AlreadyLoadedError,
        AttachError,
        BpfloomError,
        BpfPermissionError,
        ClosedError,
        EnvironmentSetupError,
        GlobalError,
        LoadError,
        MapError,
        NotFoundError,
        NotLoadedError,
        ObjectFileError,
        TypeInfoError,
    )
    from .batch import Batch
    from .decode import Decoder
    from .fleet.source import collect
    from .maps import Map
    from .object import BpfObject, Globals, GlobalVar, Link, Program, load
    from .perfbuf import PerfBuffer
    from .pipeline import Pipeline, PipelineError
    from .ringbuf import RingBuffer

# The public names and the modules that define them, imported on first use: importing
# the package stays cheap (the command line imports what it needs, and a Ctrl-C while
# it starts up ends it quietly; see __main__.py).
_EXPORTS = {
    "AlreadyLoadedError": "._exceptions",
    "AttachError": "._exceptions",
    "BpfloomError": "._exceptions",
    "BpfPermissionError": "._exceptions",
    "ClosedError": "._exceptions",
    "EnvironmentSetupError": "._exceptions",
    "GlobalError": "._exceptions",
    "LoadError": "._exceptions",
    "MapError": "._exceptions",
    "NotFoundError": "._exceptions",
    "NotLoadedError": "._exceptions",
    "ObjectFileError": "._exceptions",
    "TypeInfoError": "._exceptions",
    "Batch": ".batch",
    "Decoder": ".decode",
    "collect": ".fleet.source",
    "Map": ".maps",
    "BpfObject": ".object",
    "Globals": ".object",
    "GlobalVar": ".object",
    "Link": ".object",
    "Program": ".object",
    "load": ".object",
    "PerfBuffer": ".perfbuf",
    "Pipeline": ".pipeline",
    "PipelineError": ".pipeline",
    "RingBuffer": ".ringbuf",
}


def __getattr__(name: str) -> Any:
    """A public name, imported on first use; a submodule (``bpfloom.rules``) too."""
    from importlib import import_module
    from importlib.util import find_spec

    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(import_module(module, __name__), name)
    elif not name.startswith("__") and find_spec(f"{__name__}.{name}") is not None:
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AlreadyLoadedError",
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
    "NotFoundError",
    "NotLoadedError",
    "ObjectFileError",
    "PerfBuffer",
    "Pipeline",
    "PipelineError",
    "Program",
    "RingBuffer",
    "TypeInfoError",
    "collect",
    "load",
]
