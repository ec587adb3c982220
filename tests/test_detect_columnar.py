"""The column-wise rule engine against the row-wise one (the reference).

``RuleSet.evaluate_table`` on a batch of raw records (``bpfloom.tools.detect_columns``)
must give exactly the alerts — same rules, order, times, outputs and fields — and the
same rate-limit and error counts as ``RuleSet.evaluate`` on each record the tool makes
of the batch, in turn. Hypothesis draws both sides: raw batches in the real record
layouts of opensnoop, execsnoop and exitsnoop (garbage after every NUL, strings that
fill their buffer, bytes that are not UTF-8, cut paths, every ``fs_path_kind``, extreme
numbers, times in and out of order) and rule sets over every field and operator
(``in`` lists, globs, literals that do not fit, surrogates, thresholds by any field,
rate limits, exceptions, macros). No kernel: the objects are only opened, for their
record types (``tests/detect_events.py``). Every run is derandomized.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bpfloom.batch import Batch
from bpfloom.rules import RuleError, RuleSet, load_rules
from bpfloom.rules._columnar import CStrings, Heads, literal_bytes
from bpfloom.tools.tool import _MONO_TO_WALL_NS
from detect_events import (
    BASE_TIME,
    FUZZ,
    OBJECTS,
    RECORD,
    ROW,
    random_row,
    raw_batch,
    rule_file,
    sample_batches,
    table,
)


def _frozen_clock() -> float:
    raise AssertionError("every record has a time")


def compare(kind: str, text: str, batches: list[Batch]) -> int:
    """Run both engines over ``batches`` with fresh copies of the rules; assert they
    agree on every alert and count; the number of alerts."""
    try:
        rowwise = RuleSet.from_text(text, clock=_frozen_clock)
    except RuleError:  # a draw the loader refuses (say, `event == exit` and `fd`)
        return -1
    columnar = RuleSet.from_text(text, clock=_frozen_clock)
    expected: list[Any] = []
    got: list[Any] = []
    for batch in batches:
        for event in batch.decoder.decode_batch(batch.records):
            expected.extend(rowwise.evaluate(RECORD[kind](event)))
        got.extend(columnar.evaluate_table(table(kind, batch)))
    assert got == expected
    assert columnar.suppressed == rowwise.suppressed
    assert columnar.errors == rowwise.errors
    return len(got)


@pytest.mark.parametrize("kind", sorted(OBJECTS))
@FUZZ
@given(data=st.data())
def test_columnar_equals_rowwise_on_random_batches_and_rules(
    kind: str, data: st.DataObject
) -> None:
    text = data.draw(rule_file(kind), label="rules")
    clock = [int(BASE_TIME * 1e9) - _MONO_TO_WALL_NS]
    batches = []
    for i in range(data.draw(st.integers(1, 3), label="batches")):
        rows = data.draw(st.lists(ROW, min_size=0, max_size=12), label=f"batch {i}")
        batches.append(raw_batch(kind, rows, clock, seed=i))
    assume(compare(kind, text, batches) >= 0)  # a rule set the loader takes


# Deterministic cases.


@pytest.mark.parametrize("kind", ["open", "exec"])
def test_default_rules_agree_and_fire(kind: str) -> None:
    """The built-in rules on 2000 random events of each kind: the same alerts both
    ways, and some of them (the comparison is not vacuous)."""
    text = Path(sys.modules["bpfloom.rules"].__file__ or "").with_name("default.yaml").read_text()
    assert compare(kind, text, sample_batches(kind, 2000, seed=7)) > 0


def test_threshold_keys_and_errors_agree() -> None:
    """Thresholds by a str field and by an int one, a rate limit behind one, counted
    across batches."""
    text = """
- rule: by path
  condition: event == exec
  output: "%args"
  priority: DEBUG
  threshold: {count: 2, within: 1s, by: norm_path}
- rule: by comm
  condition: comm startswith "s" or comm == ""
  output: "%comm %path"
  priority: DEBUG
  threshold: {count: 3, within: 1s, by: comm}
  rate_limit: 2/s
"""
    batches = sample_batches("exec", 300, seed=3, per_batch=50)
    assert compare("exec", text, batches) > 0


@pytest.mark.parametrize(("by", "count"), [("pid", 4), ("comm", 2), (None, 5), ("uid", 1)])
def test_thresholds_counted_on_columns_agree(by: str | None, count: int) -> None:
    """Thresholds counted a batch at a time (``_ThresholdState.reached_rows``) over a
    long stream of several keys, sweeping every ``within``: the same alerts as one
    match at a time, in batches of any size (the random tests step back in time)."""
    by_text = "" if by is None else f", by: {by}"
    text = f"""
- rule: many opens
  condition: event == open and (err != 0 or comm startswith "s")
  output: "%comm %pid"
  priority: DEBUG
  threshold: {{count: {count}, within: 0.5, by_text_here}}
""".replace(", by_text_here", by_text)
    for per_batch in (1, 7, 200):
        batches = sample_batches("open", 1400, seed=11, per_batch=per_batch)
        assert compare("open", text, batches) > 3


def test_load_rules_default_is_the_reference_set() -> None:
    assert [r.name for r in load_rules().rules] == [r.name for r in RuleSet.from_text(
        Path(sys.modules["bpfloom.rules"].__file__ or "").with_name("default.yaml").read_text()
    ).rules]  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [b"/" + b"r" * 254 + b"/", b"/" * 256, b"/" + b"s" * 253 + b"/.", b"/" + b"t" * 252 + b"/.."],
)
def test_paths_filling_the_buffer(path: bytes) -> None:
    """A path as long as its buffer, ending in a slash or dots, in the last row of a
    batch of failed opens (its norm_path is worked out from the path alone): the same
    alerts as row by row, and no read past the rows (a traced process chooses it)."""
    text = """
- rule: r
  condition: event == open and norm_path startswith "/r"
  output: "%norm_path"
  priority: INFORMATIONAL
"""
    clock = [int(BASE_TIME * 1e9) - _MONO_TO_WALL_NS]
    failed = {"fs": b"", "fs_kind": 0, "fs_cut": 0, "truncated": 0, "ret": -2}
    rows = [{**random_row(random.Random(1)), **failed, "path": p} for p in (b"/etc/shadow", path)]
    assert compare("open", text, [raw_batch("open", rows, clock, seed=3)]) == (
        1 if path.startswith(b"/r") else 0
    )


# The byte-level building blocks.

TEXTS = st.text(st.sampled_from("ab/é\x00\udcff\ufffd"), max_size=5)


@given(value=st.binary(max_size=6), garbage=st.binary(min_size=6, max_size=6), text=TEXTS)
@FUZZ
def test_byte_tests_agree_with_decoded_text(value: bytes, garbage: bytes, text: str) -> None:
    """Each byte-level test of a C string, against the same test on its decoded text,
    for both string policies; garbage after the NUL never counts."""
    width = 6
    row = (value[:width] + b"\0" + garbage)[:width] if len(value) < width else value[:width]
    mat = np.frombuffer(row, dtype=np.uint8).reshape(1, width).copy()
    c_string = row.split(b"\0", 1)[0]
    for policy in ("surrogateescape", "replace"):
        decoded = c_string.decode("utf-8", policy)
        cs = CStrings(mat, policy)
        assert cs.decode() == [decoded]
        whole = literal_bytes(text, policy, whole=True)
        if whole is False:
            assert decoded != text
        elif whole is not None:
            assert bool(cs.equals_any([whole])[0]) == (decoded == text)
            assert bool(cs.equals_any([whole, b"zz", b"yy", b"xx", b"ww"])[0]) == (decoded == text)
        part = literal_bytes(text, policy, whole=False)
        checks = [
            (CStrings.startswith, decoded.startswith(text)),
            (CStrings.endswith, decoded.endswith(text)),
            (CStrings.contains, text in decoded),
        ]
        for method, expected in checks:
            if part is False:
                assert not expected
            elif part is not None:
                assert isinstance(part, bytes)
                assert bool(method(cs, part)[0]) == expected


# Values around the heads' width (64 bytes): short, exactly 64, longer, filling 70.
LONG_VALUES = st.builds(
    lambda unit, n: (unit * 80)[:n],
    st.sampled_from([b"a", b"/", b"ab/", b"\xc3\xa9", b"\xff/", b"/tmp/x"]),
    st.sampled_from([0, 1, 5, 7, 8, 9, 63, 64, 65, 69, 70]),
)


@given(
    rows=st.lists(st.tuples(LONG_VALUES, LONG_VALUES, st.booleans()), min_size=1, max_size=6),
    text=st.sampled_from(["", "a", "ab/", "/tmp/", "é", "a" * 64, "a" * 65, "/" * 9, "\udcff"]),
)
@FUZZ
def test_heads_agree_with_c_strings(rows: list[tuple[bytes, bytes, bool]], text: str) -> None:
    """The heads (first 64 bytes, the longer values on their whole bytes) answer every
    byte test as the C strings do, for one field and for two fields chosen per row."""
    width = 70

    def matrix(values: list[bytes]) -> CStrings:
        mat = np.full((len(values), width), 0x41, dtype=np.uint8)  # garbage after NULs
        for i, v in enumerate(values):
            mat[i, : len(v)] = np.frombuffer(v, dtype=np.uint8)
            if len(v) < width:
                mat[i, len(v)] = 0
        return CStrings(mat, "surrogateescape")

    a, b = matrix([r[0] for r in rows]), matrix([r[1] for r in rows])
    mask = np.array([r[2] for r in rows])
    chosen = matrix([r[0] if r[2] else r[1] for r in rows])
    whole = literal_bytes(text, "surrogateescape", whole=True)
    part = literal_bytes(text, "surrogateescape", whole=False)
    tests = []
    if isinstance(whole, bytes):
        tests.append(lambda cs: cs.equals_any([whole, b"zz"]))
    if isinstance(part, bytes):
        tests += [
            lambda cs, m=m: getattr(cs, m)(part) for m in ("startswith", "endswith", "contains")
        ]
    everything = np.arange(len(rows))
    for heads, reference in ((Heads.of(a), a), (Heads.of(a, b, mask), chosen)):
        assert heads.decode(everything) == reference.decode()
        for test in tests:
            assert heads.test(test).tolist() == test(reference).tolist()
