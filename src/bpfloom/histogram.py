"""Log2 histograms kept in maps (a value struct with a ``slots`` array, as runqlat's).

``is_log2_hist`` recognises such a map value type; ``format_log2_hist`` renders the
slots the way libbpf-tools and ecli print them: ``low -> high : count |****|``, slot
``i`` counting values in ``[2**i, 2**(i+1))`` (slot 0 holds 0 and 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from .types import Array, Int, Struct, Type, strip


def is_log2_hist(value_type: Type | None) -> bool:
    """Whether a map value type is a struct holding an integer array named ``slots``."""
    t = strip(value_type)
    if not isinstance(t, Struct):
        return False
    for m in t.members:
        mt = strip(m.type)
        if m.name == "slots" and isinstance(mt, Array) and isinstance(strip(mt.element), Int):
            return True
    return False


def format_log2_hist(slots: Sequence[int], unit: str = "value", width: int = 40) -> str:
    """The histogram as text, up to the last non-empty slot (empty string if all zero)."""
    last = max((i for i, v in enumerate(slots) if v), default=-1)
    if last < 0:
        return ""
    peak = max(slots[: last + 1])
    lines = [f"{unit:>20} : count    distribution"]
    for i in range(last + 1):
        low, high = (1 << (i + 1)) >> 1, (1 << (i + 1)) - 1
        if low == high:
            low -= 1
        count = slots[i]
        stars = (count * width + peak - 1) // peak if count else 0
        bar = "*" * stars
        lines.append(f"{low:>10} -> {high:<10}: {count:<8} |{bar:<{width}}|")
    return "\n".join(lines)
