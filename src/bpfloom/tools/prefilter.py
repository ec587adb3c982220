"""Writing a rule set's prefilter (``bpfloom.rules._prefilter.KernelFilter``) into one
of our BPF objects that include ``bpf/bpfloom_prefilter.h``, and reading what it left
out.

The clauses are globals in ``.rodata`` (set before load, then frozen: the verifier
sees them as constants); the comm and path sets are map entries, written after load
and before anything is attached.
"""

from __future__ import annotations

from ..object import BpfObject
from ..rules._prefilter import COMM, NPATH, PATH, PATH_LEN, PCOMM, KernelFilter

MAX_CLAUSES = 16  # BPFLOOM_MAX_CLAUSES
FILTERED_MAP = "bpfloom_filtered"


def set_globals(obj: BpfObject, f: KernelFilter) -> None:
    """The clauses, before load; a filter with no clauses (None) leaves the object
    emitting everything."""
    if f.clauses is None:
        return
    clauses = [
        {
            "comm_in": c.mask(COMM),
            "comm_out": c.mask(COMM, True),
            "pcomm_in": c.mask(PCOMM),
            "pcomm_out": c.mask(PCOMM, True),
            "path_in": c.mask(PATH),
            "path_out": c.mask(PATH, True),
            "npath_in": c.mask(NPATH),
            "npath_out": c.mask(NPATH, True),
            "ret": c.ret,
        }
        for c in f.clauses
    ]
    g = obj.globals
    g["bpfloom_prefilter"] = True
    g["bpfloom_prefilter_needs"] = f.needs
    g["bpfloom_nclauses"] = len(clauses)
    g["bpfloom_clauses"] = clauses + [{}] * (MAX_CLAUSES - len(clauses))


def fill_maps(obj: BpfObject, f: KernelFilter) -> None:
    """The comm and path sets, after load and before attach."""
    if f.clauses is None:
        return
    comms, paths = obj.maps["bpfloom_comms"], obj.maps["bpfloom_paths"]
    for comm, bits in f.comms.items():
        comms.update(comm, bits)
    for prefix, bits in f.paths.items():
        data = prefix.ljust(PATH_LEN, b"\0")
        paths.update({"prefixlen": 8 * len(prefix), "data": data}, bits)


def filtered(obj: BpfObject) -> int:
    """Events the object's prefilter left out so far (0 without one)."""
    return obj.counter_total(FILTERED_MAP)
