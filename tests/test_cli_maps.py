"""``bpfloom run`` prints the object's maps and globals, not only its events: struct-keyed
counters, arrays of counts in ``.bss``, histograms with their other fields, all-zero
histograms, per-CPU maps and empty maps (``bpfloom.mapdump``).

The kernel tests run tests/bpf/ecli/counters.bpf.o (and counters_rb.bpf.o, which also
has a ring buffer) while child processes make ``getpriority(cookie, v)`` calls with
values the test picks. Only calls with this run's cookie count, so the maps hold
exactly what the test did and the output is asserted line for line.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_cli_run import Result, Run

from bpfloom.decode import Decoder
from bpfloom.histogram import format_log2_hist
from bpfloom.mapdump import (
    Contents,
    Source,
    fold_percpu,
    format_key,
    hist_unit,
    is_zero,
    render_json,
    render_text,
    sort_entries,
)
from bpfloom.types import Array, Int, Member, Struct
from conftest import bpf_object
from toolrun import run_tool_cli

TIMEOUT = 60
COUNTERS = bpf_object("ecli/counters")
COUNTERS_RB = bpf_object("ecli/counters_rb")

needs_objects = pytest.mark.skipif(
    not COUNTERS.exists() and not os.environ.get("BPFLOOM_REQUIRE_KERNEL"),
    reason="test BPF objects not built (make bpf)",
)


# --- format_log2_hist -------------------------------------------------------------------


def test_hist_layout_and_bars_rounded_down() -> None:
    # 1 * 40 / 3 = 13.3 and 2 * 40 / 3 = 26.7: libbpf-tools' print_stars prints 13 and
    # 26 stars (integer division), never 14 and 27.
    text = format_log2_hist([1, 3, 0, 2], "usecs")
    assert text.split("\n") == [
        "     usecs               : count    distribution",
        "         0 -> 1          : 1        |*************                           |",
        "         2 -> 3          : 3        |****************************************|",
        "         4 -> 7          : 0        |                                        |",
        "         8 -> 15         : 2        |**************************              |",
    ]


def test_hist_stops_at_the_last_non_empty_slot() -> None:
    assert format_log2_hist([0, 0, 5, 0, 0, 0], "value").split("\n") == [
        "     value               : count    distribution",
        "         0 -> 1          : 0        |                                        |",
        "         2 -> 3          : 0        |                                        |",
        "         4 -> 7          : 5        |****************************************|",
    ]


def test_hist_all_zero_is_empty_text() -> None:
    assert format_log2_hist([0] * 26, "usecs") == ""
    assert format_log2_hist([], "usecs") == ""


def test_hist_past_slot_32_uses_the_wide_layout() -> None:
    slots = [0] * 40
    slots[0], slots[33] = 3, 1
    lines = format_log2_hist(slots, "nsecs").split("\n")
    assert len(lines) == 1 + 34
    assert lines[0] == f"{'':15}{'nsecs':<29} : count    distribution"
    assert lines[1] == f"{0:>20} -> {1:<20} : 3        |{'*' * 20}|"
    assert lines[-1] == f"{2**33:>20} -> {2**34 - 1:<20} : 1        |{'*' * 6:<20}|"


# --- units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "globals", "unit"),
    [
        ("hists", {"targ_ms": True}, "msecs"),
        ("dist_ns", {"targ_ms": True}, "msecs"),  # a true targ_ms wins over the name
        ("hists", {"targ_ms": False, "targ_ns": True}, "nsecs"),
        ("hists", {"targ_ms": False}, "usecs"),  # runqlat's convention
        ("dist_ns", {"targ_ms": False}, "nsecs"),  # the name before a false targ_ms
        ("wait_us", {}, "usecs"),
        ("wait_usecs", {}, "usecs"),
        ("wait_ns", {}, "nsecs"),
        ("wait_ms", {}, "msecs"),
        ("latency", {}, "usecs"),
        ("biolat", {}, "usecs"),
        ("lat_ns", {}, "nsecs"),  # a suffix beats "lat"
        ("sizes", {}, "value"),
        ("sizes", {"targ_ns": False}, "value"),
    ],
)
def test_hist_unit(name: str, globals: dict[str, Any], unit: str) -> None:
    assert hist_unit(name, globals) == unit


# --- per-CPU values, zeros, order ---------------------------------------------------------

U32 = Int("unsigned int", 4, False)
U64 = Int("unsigned long long", 8, False)
CHAR = Int("char", 1, True)
HIST = Struct(
    "hist",
    32,
    [
        Member("slots", Array(U32, 4), 0),
        Member("count", U64, 128),
        Member("comm", Array(CHAR, 8), 192),
    ],
)
KEY = Struct("key", 12, [Member("pid", U32, 0), Member("comm", Array(CHAR, 8), 32)])


def _hist(slots: Sequence[int], count: int, comm: bytes) -> Any:
    raw = b"".join(s.to_bytes(4, "little") for s in slots) + count.to_bytes(8, "little")
    return Decoder(HIST).decode(raw + comm.ljust(8, b"\0"))


def _key(pid: int, comm: bytes) -> Any:
    return Decoder(KEY).decode(pid.to_bytes(4, "little") + comm.ljust(8, b"\0"))


def test_fold_percpu_sums_integers() -> None:
    assert fold_percpu([1, 2, 0, 4]) == 7
    assert fold_percpu([[1, 2], [3, 4]]) == [4, 6]


def test_fold_percpu_sums_hist_members_and_lists_the_rest() -> None:
    cpu0 = _hist([1, 0, 2, 0], 3, b"bash")
    cpu1 = _hist([0, 5, 1, 0], 6, b"")
    folded = fold_percpu([cpu0, cpu1])
    assert type(folded) is type(cpu0)
    assert list(folded.slots) == [1, 5, 3, 0]
    assert folded.count == 9
    assert folded.comm == ["bash", ""]  # a string cannot be summed: one per CPU


def test_fold_percpu_keeps_other_values_per_cpu() -> None:
    assert fold_percpu(["a", "b"]) == ["a", "b"]
    assert fold_percpu([True, False]) == [True, False]
    assert fold_percpu([1.5, 2.5]) == [1.5, 2.5]


def test_is_zero() -> None:
    assert is_zero(0) and is_zero("") and is_zero([0, 0]) and is_zero(b"\0\0")
    assert is_zero(_hist([0] * 4, 0, b""))
    assert not is_zero(_hist([0, 0, 1, 0], 0, b""))
    assert not is_zero([0, 3]) and not is_zero("x") and not is_zero(1)


def test_sort_entries() -> None:
    numbers = [(3, 1), (1, 5), (2, 5), (0, 2)]
    assert sort_entries(numbers, hist=False) == [(1, 5), (2, 5), (0, 2), (3, 1)]
    assert sort_entries(numbers, hist=True) == [(0, 2), (1, 5), (2, 5), (3, 1)]
    texts = [("b", "x"), ("a", "y")]
    assert sort_entries(texts, hist=False) == [("a", "y"), ("b", "x")]


def test_keys_print_as_their_fields_escaped() -> None:
    assert format_key(_key(12, b"bash")) == "pid=12 comm=bash"
    assert format_key(_key(7, b"a\x1b[2J\n")) == "pid=7 comm=a\\x1b[2J\\n"
    assert format_key(4294967295) == "4294967295"


def test_render_cuts_rows_and_names_empty_maps() -> None:
    counts = Source("counts", "hash", U64, hist=False, sparse=False, keyed=True)
    hists = Source("hists", "hash", HIST, hist=True, sparse=False, keyed=True)
    empty = Source("unused", "hash", U64, hist=False, sparse=False, keyed=True)
    contents = [
        Contents(counts, [(_key(2, b"b\tc"), 9), (_key(1, b"a"), 4), (_key(3, b"c"), 1)]),
        Contents(hists, [(1, _hist([0, 2, 0, 0], 2, b"x")), (2, _hist([0] * 4, 0, b""))]),
        Contents(empty, []),
    ]
    assert render_text(contents, max_rows=2) == [
        "",
        "counts (hash)",
        "PID  COMM  VALUE",
        "  2  b\\tc      9",
        "  1  a         4",
        "... 1 more entry",
        "",
        "hists key = 1",
        "     value               : count    distribution",
        "         0 -> 1          : 0        |                                        |",
        "         2 -> 3          : 2        |****************************************|",
        "count = 2, comm = x",
        "",
        'hists key = 2: all slots are zero; count = 0, comm = ""',
        "",
        "empty maps: unused",
    ]
    assert render_json(contents[1:]) == [
        {"map": "hists", "key": 1, "unit": "value", "slots": [0, 2, 0, 0], "count": 2, "comm": "x"},
        {"map": "hists", "key": 2, "unit": "value", "slots": [0] * 4, "count": 0, "comm": ""},
        {"map": "unused", "empty": True},
    ]


# --- running counters.bpf.o -------------------------------------------------------------

# A child that renames itself (prctl PR_SET_NAME) and makes getpriority(cookie, v) calls.
CALLER = """\
import ctypes, os, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
for v in sys.argv[3:]:
    try:
        os.getpriority(int(sys.argv[2]), int(v))
    except OSError:
        pass  # EINVAL: the cookie is no valid `which`
"""


def _calls(cookie: int, comm: str, values: Sequence[int]) -> int:
    """Run a child named ``comm`` that makes one getpriority(cookie, v) per value; its pid."""
    child = subprocess.Popen(
        [sys.executable, "-c", CALLER, comm, str(cookie), *map(str, values)],
        stdin=subprocess.DEVNULL,
    )
    assert child.wait(timeout=TIMEOUT) == 0
    return child.pid


@pytest.fixture
def cookie() -> int:
    """This run's cookie: an invalid getpriority() `which`, unlikely to be anyone else's."""
    return random.randrange(1 << 20, 1 << 30)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """``start(object, *args)`` starts ``bpfloom run`` and waits until it traces."""
    runs: list[Run] = []

    def make(obj: Path, *args: str) -> Run:
        run = Run([str(obj), *args], tmp_path)
        runs.append(run)
        run.wait_attached(links=1)
        return run

    yield make
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _stop(run: Run) -> Result:
    run.proc.send_signal(signal.SIGINT)
    result = run.finish()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


# alpha: 1 -> slot 0; 2, 3, 3 -> slot 1; 100 -> slot 6; 1000 -> slot 9.
EVENT_ROW = re.compile(r"^\d\d:\d\d:\d\d ")
ALPHA = [1, 2, 3, 3, 100, 1000]
BETA = [5, 5]  # slot 2


def _make_calls(cookie: int) -> tuple[int, int]:
    return _calls(cookie, "alpha", ALPHA), _calls(cookie, "beta", BETA)


def _hist_slots(values: Sequence[int]) -> list[int]:
    slots = [0] * 20
    for v in values:
        slots[max(v.bit_length() - 1, 0)] += 1
    return slots


def _pid_key_rows(alpha: int, beta: int | None = None) -> list[str]:
    """The rows of `counts` for alpha's 6 calls and beta's 2 (if shown)."""
    w = max(3, len(str(alpha)), len(str(beta or "")))
    rows = [f"{'PID':>{w}}  COMM   VALUE", f"{alpha:>{w}}  alpha      6"]
    return rows if beta is None else [*rows, f"{beta:>{w}}  beta       2"]


ALPHA_HIST = [
    "     usecs               : count    distribution",
    "         0 -> 1          : 1        |*************                           |",
    "         2 -> 3          : 3        |****************************************|",
    "         4 -> 7          : 0        |                                        |",
    "         8 -> 15         : 0        |                                        |",
    "        16 -> 31         : 0        |                                        |",
    "        32 -> 63         : 0        |                                        |",
    "        64 -> 127        : 1        |*************                           |",
    "       128 -> 255        : 0        |                                        |",
    "       256 -> 511        : 0        |                                        |",
    "       512 -> 1023       : 1        |*************                           |",
    "count = 6, total = 1109",
]
BETA_HIST = [
    "     usecs               : count    distribution",
    "         0 -> 1          : 0        |                                        |",
    "         2 -> 3          : 0        |                                        |",
    "         4 -> 7          : 2        |****************************************|",
    "count = 2, total = 10",
]
ALL_HIST = [
    "     usecs               : count    distribution",
    "         0 -> 1          : 1        |*************                           |",
    "         2 -> 3          : 3        |****************************************|",
    "         4 -> 7          : 2        |**************************              |",
    "         8 -> 15         : 0        |                                        |",
    "        16 -> 31         : 0        |                                        |",
    "        32 -> 63         : 0        |                                        |",
    "        64 -> 127        : 1        |*************                           |",
    "       128 -> 255        : 0        |                                        |",
    "       256 -> 511        : 0        |                                        |",
    "       512 -> 1023       : 1        |*************                           |",
    "count = 8, total = 1119",
]


@needs_objects
@pytest.mark.kernel
def test_counters_text(start: Callable[..., Run], cookie: int) -> None:
    # No interval print within the test: only the one at exit.
    run = start(COUNTERS, "--cookie", str(cookie), "--interval", "3600")
    alpha, beta = _make_calls(cookie)
    result = _stop(run)
    hists: list[str] = []
    zeros: list[str] = []
    for pid in sorted([alpha, beta]):
        hists += ["", f"hists key = {pid}", *(ALPHA_HIST if pid == alpha else BETA_HIST)]
        zeros += ["", f"zero_hists key = {pid}: all slots are zero; count = 0, total = 0"]
    expected = [
        "",
        "counts (hash)",
        *_pid_key_rows(alpha, beta),
        *hists,
        *zeros,
        "",
        "pcpu_calls (percpu_array)",  # 8 calls summed over CPUs; indexes 1-3 are 0
        "KEY  VALUE",
        "  0      8",
        "",
        "calls_by_bucket (global __u64[8] in .bss)",  # v % 8, non-zero buckets only
        "KEY  VALUE",
        "  3      2",
        "  5      2",
        "  0      1",
        "  1      1",
        "  2      1",
        "  4      1",
        "",
        "all_values",
        *ALL_HIST,
        "",
        "last_value = 5",
        "",
        "empty maps: unused",
    ]
    assert result.stdout.split("\n") == [*expected, ""]
    assert result.summary() == (0, 0, 0)


@needs_objects
@pytest.mark.kernel
def test_counters_json(start: Callable[..., Run], cookie: int) -> None:
    run = start(COUNTERS, "--cookie", str(cookie), "--interval", "3600", "--json")
    alpha, beta = _make_calls(cookie)
    result = _stop(run)

    def hist(values: Sequence[int]) -> dict[str, Any]:
        return {"slots": _hist_slots(values), "count": len(values), "total": sum(values)}

    zero = {"slots": [0] * 20, "count": 0, "total": 0}
    pids = sorted([alpha, beta])
    by_pid = {alpha: ALPHA, beta: BETA}
    assert result.json_lines() == [
        {"map": "counts", "key": {"pid": alpha, "comm": "alpha"}, "value": 6},
        {"map": "counts", "key": {"pid": beta, "comm": "beta"}, "value": 2},
        *({"map": "hists", "key": p, "unit": "usecs", **hist(by_pid[p])} for p in pids),
        *({"map": "zero_hists", "key": p, "unit": "usecs", **zero} for p in pids),
        {"map": "pcpu_calls", "key": 0, "value": 8},
        {"map": "unused", "empty": True},
        *(
            {"global": "calls_by_bucket", "key": k, "value": v}
            for k, v in [(3, 2), (5, 2), (0, 1), (1, 1), (2, 1), (4, 1)]
        ),
        {"global": "all_values", "unit": "usecs", **hist(ALPHA + BETA)},
        {"global": "last_value", "value": 5},
    ]


@needs_objects
@pytest.mark.kernel
def test_targ_ms_and_map_option(start: Callable[..., Run], cookie: int) -> None:
    """--targ_ms: the program counts v / 1000 and the histogram is in msecs; --map
    prints only the maps and globals named, in that order."""
    args = ["--cookie", str(cookie), "--targ_ms", "--map", "last_value", "--map", "hists"]
    run = start(COUNTERS, *args, "--interval", "3600")
    pid = _calls(cookie, "gamma", [1500, 2999, 40000])  # 1, 2, 40 ms
    result = _stop(run)
    assert result.stdout.split("\n") == [
        "",
        "last_value = 40",
        "",
        f"hists key = {pid}",
        "     msecs               : count    distribution",
        "         0 -> 1          : 1        |****************************************|",
        "         2 -> 3          : 1        |****************************************|",
        "         4 -> 7          : 0        |                                        |",
        "         8 -> 15         : 0        |                                        |",
        "        16 -> 31         : 0        |                                        |",
        "        32 -> 63         : 1        |****************************************|",
        "count = 3, total = 43",
        "",
    ]


@needs_objects
@pytest.mark.kernel
def test_map_entries_bounds_the_rows(start: Callable[..., Run], cookie: int) -> None:
    args = ["--cookie", str(cookie), "--map", "counts", "--map", "hists", "--map-entries", "1"]
    run = start(COUNTERS, *args, "--interval", "3600")
    alpha, beta = _make_calls(cookie)
    result = _stop(run)
    first = min(alpha, beta)
    lines = result.stdout.split("\n")
    assert lines[:5] == ["", "counts (hash)", *_pid_key_rows(alpha), "... 1 more entry"]
    assert lines[5:7] == ["", f"hists key = {first}"]
    assert lines[7] == "     usecs               : count    distribution"
    assert lines[-2:] == ["... 1 more entry", ""]
    assert sum(line.startswith("hists key = ") for line in lines) == 1


@needs_objects
@pytest.mark.kernel
def test_hostile_comm_is_escaped(start: Callable[..., Run], cookie: int) -> None:
    run = start(COUNTERS, "--cookie", str(cookie), "--map", "counts", "--interval", "3600")
    pid = _calls(cookie, "ev\x1b[2Jil\nx\t", [7])
    result = _stop(run)
    w = max(3, len(str(pid)))
    assert result.stdout.split("\n") == [
        "",
        "counts (hash)",
        f"{'PID':>{w}}  {'COMM':<16}  VALUE",  # the comm is 16 characters once escaped
        f"{pid:>{w}}  ev\\x1b[2Jil\\nx\\t      1",
        "",
    ]
    assert "\x1b" not in result.stdout


@needs_objects
@pytest.mark.kernel
def test_no_maps(start: Callable[..., Run], cookie: int) -> None:
    run = start(COUNTERS, "--cookie", str(cookie), "--no-maps")
    _calls(cookie, "delta", [1])
    result = _stop(run)
    assert result.stdout == ""
    assert "no ring/perf buffer or map to print" in result.stderr


@needs_objects
def test_unknown_map_is_one_line_listing_the_valid_ones() -> None:
    result = run_tool_cli("run", str(COUNTERS), "--map", "nope")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"bpfloom: error: no map or global 'nope' to print in {COUNTERS}; maps and globals "
        "that can be printed: counts, hists, zero_hists, pcpu_calls, unused, "
        "calls_by_bucket, all_values, last_value"
    ]
    assert result.stdout == ""


@needs_objects
def test_map_and_no_maps_exclude_each_other() -> None:
    result = run_tool_cli("run", str(COUNTERS), "--map", "counts", "--no-maps")
    assert result.returncode == 1
    assert result.stderr == "bpfloom: error: --map and --no-maps exclude each other\n"


@needs_objects
def test_function_local_statics_are_not_options() -> None:
    """counters.bpf.c has a function-local static (``handle_getpriority.calls_seen`` in
    BTF): neither an option nor printed, and its name breaks nothing."""
    result = run_tool_cli("run", str(COUNTERS), "--help")
    assert result.returncode == 0, result.stderr
    assert "--cookie" in result.stdout and "--targ_ms" in result.stdout
    assert "calls_seen" not in result.stdout


# --- an object with events: maps at exit ----------------------------------------------------


@needs_objects
@pytest.mark.kernel
def test_object_with_events_prints_maps_at_exit_only(
    start: Callable[..., Run], cookie: int
) -> None:
    """Past the default interval (5 s), the counter map is still printed only once,
    after the events."""
    begun = time.monotonic()
    run = start(COUNTERS_RB, "--cookie", str(cookie), "--json")
    alpha, beta = _make_calls(cookie)
    time.sleep(max(0.0, 6.0 - (time.monotonic() - begun)))
    result = _stop(run)
    events = [{"pid": alpha, "value": v} for v in ALPHA] + [{"pid": beta, "value": v} for v in BETA]
    assert result.json_lines() == [
        *events,
        {"map": "counts", "key": alpha, "value": 6},
        {"map": "counts", "key": beta, "value": 2},
    ]
    assert result.summary() == (8, 0, 0)


@needs_objects
@pytest.mark.kernel
def test_object_with_events_and_interval(start: Callable[..., Run], cookie: int) -> None:
    """--interval given: the maps are printed every interval between the events."""
    run = start(COUNTERS_RB, "--cookie", str(cookie), "--interval", "0.2")
    pid = _calls(cookie, "alpha", [1, 2])
    deadline = time.monotonic() + TIMEOUT
    title = "counts (hash)"
    while run.stdout_now().count(title) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    result = _stop(run)
    lines = result.stdout.split("\n")
    assert [line.rstrip() for line in lines].count("TIME     PID     VALUE") == 1
    events = [line.split()[1:] for line in lines if EVENT_ROW.match(line)]
    assert events == [[str(pid), "1"], [str(pid), "2"]]
    w = max(3, len(str(pid)))
    header = f"{'KEY':>{w}}  VALUE"
    rows = [f"{pid:>{w}}      {n}" for n in (1, 2)]  # a print may fall between the calls
    titles = [i for i, line in enumerate(lines) if line == title]
    assert len(titles) >= 2  # printed at every interval, not only at exit
    for i in titles:
        assert lines[i - 1 : i + 2] == ["", title, header]
        assert lines[i + 2] in rows
    assert lines[titles[-1] - 1 :] == ["", title, header, rows[1], ""]  # the one at exit
