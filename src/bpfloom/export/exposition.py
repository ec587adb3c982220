"""Prometheus text exposition format (version 0.0.4), written directly.

Only what the format asks for is escaped: in label values backslash, double quote and
newline; in HELP text backslash and newline. Label values are text from the kernel
(command names, paths), so they may hold anything else; the format carries it as is.
"""

from __future__ import annotations

import math
from decimal import Decimal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


def escape_value(value: str) -> str:
    """A label value as it goes between double quotes."""
    return value.translate(_VALUE_ESCAPES)


def header(name: str, kind: str, help_text: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of a metric family (with their newlines)."""
    return f"# HELP {name} {help_text.translate(_HELP_ESCAPES)}\n# TYPE {name} {kind}\n"


def label_block(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """``a="x",b="y"``: the inside of a series' braces."""
    return ",".join(f'{n}="{escape_value(v)}"' for n, v in zip(names, values, strict=True))


def series(name: str, block: str) -> str:
    """``name{block}`` or, without labels, ``name``."""
    return f"{name}{{{block}}}" if block else name


def go_float(x: float) -> str:
    """``x`` as Go's ``strconv.FormatFloat(x, 'g', -1, 64)`` writes it, which is how
    client_golang (and so ebpf_exporter) spells ``le`` bounds: ``1e-06``, ``0.000128``,
    ``1.048576e+06``. In Prometheus 2 the ``le`` text is part of the series' identity,
    so dashboards built on ebpf_exporter match only the same spelling.
    """
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    sign, digit_tuple, exponent = Decimal(repr(x)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent += len(digit_tuple) - len(digits)  # the zeros stripped
    point = len(digits) + exponent  # decimal point position, as Go's digs.dp
    exp = point - 1
    neg = "-" if sign else ""
    if exp < -4 or exp >= 6:  # shortest: Go decides with precision 6
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{neg}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if point <= 0:
        return f"{neg}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{neg}{digits}{'0' * (point - len(digits))}"
    return f"{neg}{digits[:point]}.{digits[point:]}"


def number(x: float) -> str:
    """A sample value: integers as integers, other values as Go writes them."""
    if math.isfinite(x) and x == int(x) and abs(x) < 2**63:
        return str(int(x))
    return go_float(x)
