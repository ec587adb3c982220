"""Log2 histograms kept in maps (a value struct with a ``slots`` array, as runqlat's).

``is_log2_hist`` recognises such a value type; ``format_log2_hist`` renders the slots
the way libbpf-tools' ``print_log2_hist`` (trace_helpers.c) and ecli print them, slot
``i`` counting values in ``[2**i, 2**(i+1))`` (slot 0 holds 0 and 1)::

         usecs               : count    distribution
             0 -> 1          : 3        |****************************************|
             2 -> 3          : 1        |*************                           |

Bars are rounded down, as ``print_stars`` does (``stars = min(count, max) * width //
max``). Up to a last non-empty slot of 32 the columns are 10 wide and the bars 40;
beyond, 20 and 20 (libbpf-tools' layout for 64-bit ranges).
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Array, Int, Struct, Type, strip

WIDE_FROM_SLOT = 33  # a last non-empty slot past 32 switches to the wide layout


def is_log2_hist(value_type: Type | None) -> bool:
    """Whether a value type is a struct holding an integer array named ``slots``."""
    t = strip(value_type)
    if not isinstance(t, Struct):
        return False
    for m in t.members:
        mt = strip(m.type)
        if m.name == "slots" and isinstance(mt, Array) and isinstance(strip(mt.element), Int):
            return True
    return False


def format_log2_hist(slots: Sequence[int], unit: str = "value") -> str:
    """The histogram as text, up to the last non-empty slot (empty string if all zero)."""
    last = max((i for i, v in enumerate(slots) if v), default=-1)
    if last < 0:
        return ""
    peak = max(slots[: last + 1])
    wide = last >= WIDE_FROM_SLOT
    indent, unit_width = (15, 29) if wide else (5, 19)
    number_width, bar_width = (20, 20) if wide else (10, 40)
    lines = [f"{'':{indent}}{unit:<{unit_width}} : count    distribution"]
    for i in range(last + 1):
        low, high = (1 << (i + 1)) >> 1, (1 << (i + 1)) - 1
        if low == high:
            low -= 1
        count = slots[i]
        stars = min(count, peak) * bar_width // peak
        bar = "*" * stars + " " * (bar_width - stars)
        lines.append(f"{low:>{number_width}} -> {high:<{number_width}} : {count:<8} |{bar}|")
    return "\n".join(lines)
