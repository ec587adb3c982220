"""Detect's events and rules for tests without a kernel: raw batches in the real record
layouts of opensnoop, execsnoop and exitsnoop (garbage after every NUL, strings that
fill their buffer, bytes that are not UTF-8, cut paths, every ``fs_path_kind``, extreme
numbers, times in and out of order), the records the tools make of them, and
hypothesis strategies for rule files over every field and operator. The BPF objects
are only opened, for their record types.
"""

from __future__ import annotations

import json
import random
import types
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from bpfloom.batch import Batch
from bpfloom.bpf import object_path
from bpfloom.decode import Decoder
from bpfloom.object import BpfObject
from bpfloom.rules import DEFAULT_SCHEMA
from bpfloom.tools.detect_columns import TABLES, EventTable, ExecTable
from bpfloom.tools.execsnoop import ExecSnoop
from bpfloom.tools.exitsnoop import ExitSnoop
from bpfloom.tools.opensnoop import OpenSnoop
from bpfloom.tools.tool import _MONO_TO_WALL_NS

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=120)

OBJECTS = {"open": ("opensnoop", "open_event"), "exec": ("execsnoop", "event"),
           "exit": ("exitsnoop", "exit_event")}  # fmt: skip
BASE_TIME = 1_800_000_000.0  # the records' times are this plus a few seconds
_decoders: dict[str, Decoder] = {}


def decoder(kind: str) -> Decoder:
    """The tool's record decoder, from its object's BTF (opened, never loaded)."""
    if kind not in _decoders:
        name, record = OBJECTS[kind]
        with BpfObject(object_path(name), strings="surrogateescape") as obj:
            _decoders[kind] = Decoder(obj.record_type("events", record), strings="surrogateescape")
    return _decoders[kind]


def cgroup_path(cgroup_id: int) -> str:
    return "/" if cgroup_id == 1 else f"/system.slice/unit-{cgroup_id % 5}.service"


# The tools' own record methods, on stand-ins for loaded tools.
_CGROUPS = types.SimpleNamespace(path=cgroup_path)
RECORD: dict[str, Callable[[Any], Any]] = {
    "open": lambda ev: OpenSnoop.record(types.SimpleNamespace(full_path=True), ev),  # type: ignore[arg-type]
    "exec": lambda ev: ExecSnoop.record(  # type: ignore[arg-type]
        types.SimpleNamespace(resolve_paths=True, cgroups=_CGROUPS), ev
    ),
    "exit": lambda ev: ExitSnoop.record(types.SimpleNamespace(cgroups=_CGROUPS), ev),  # type: ignore[arg-type]
}


def table(kind: str, batch: Batch) -> EventTable:
    if kind == "exec":
        return ExecTable(batch, RECORD[kind], cgroup_path)
    return TABLES[kind](batch, RECORD[kind])


# Raw records.

COMMS = [b"sh", b"bash", b"python3", b"cat", b"sshd", b"a", b"ab", b"", b"caf\xc3\xa9",
         b"\xff\xfe", b"x" * 15, b"x" * 16, b"tmux: server", b"cron"]  # fmt: skip
PATHS = [b"/etc/shadow", b"//etc/shadow", b"/etc/./shadow", b"shadow", b"/etc/shadow/",
         b"/tmp/x", b"/tmp/go-build1/b", b"/tmp", b"/", b"", b"/a/../etc/shadow",
         b"/.hidden", b"/dev/shm/a", b"a/b", b"/tmp/\xff\xfe", b"/caf\xc3\xa9",
         b"/" + b"p" * 254, b"/" + b"q" * 255, b"/var/tmp/y", b"..", b"/etc/gshadow-",
         # the whole buffer, ending in what lexical removes
         b"/" + b"r" * 254 + b"/", b"/" * 256, b"/" + b"s" * 253 + b"/.",
         b"/" + b"t" * 252 + b"/.."]  # fmt: skip
ARGS = [b"-c", b"ls", b"", b"shadow", b"x" * 127, b"y" * 128, b"\xff"]
RETS = [0, 3, -2, -13, 1, (1 << 63) - 1, -(1 << 63)]
INTS = [0, 1, 2, 100, 4242, (1 << 32) - 1]


def _put(row: np.ndarray, offset: int, width: int, value: bytes) -> None:
    """A C string into a char[width] member: the bytes, a NUL if there is room, and
    whatever garbage was there after it."""
    data = value[:width]
    row[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
    if len(data) < width:
        row[offset + len(data)] = 0


ROW = st.fixed_dictionaries(
    {
        "step": st.sampled_from([0, 1, 50_000_000, 400_000_000, -300_000_000]),
        "ret": st.sampled_from(RETS),
        "pid": st.sampled_from(INTS[:4]),
        "uid": st.sampled_from(INTS),
        "comm": st.sampled_from(COMMS),
        "parent": st.sampled_from(COMMS),
        "path": st.sampled_from(PATHS),
        "fs": st.sampled_from(PATHS),
        "fs_kind": st.sampled_from([0, 1, 2, 3]),
        "fs_cut": st.sampled_from([0, 0, 1, -1]),
        "truncated": st.sampled_from([0, 0, 1, 7]),
        "flags": st.sampled_from([0, 0o100, (1 << 64) - 1]),
        "args": st.lists(st.sampled_from(ARGS), max_size=4),
        "args_count": st.sampled_from([None, 0, 61, (1 << 32) - 1]),
        "cgroup": st.sampled_from([1, 7, 8]),
        "status": st.sampled_from([0, 9, 3 << 8, 0x7F, 0xFFFFFFFF]),
        "age": st.sampled_from([0, 1_234_567, 2_675_000_000, 10**12]),
    }
)


def raw_batch(kind: str, rows: list[dict[str, Any]], clock: list[int], seed: int) -> Batch:
    """Records of ``kind`` in the tool's layout, over random garbage bytes."""
    dec = decoder(kind)
    fields = dec.dtype.fields
    assert fields is not None
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(len(rows), dec.size), dtype=np.uint8)

    def put_int(row: np.ndarray, name: str, value: int) -> None:
        dtype, offset = fields[name][:2]
        value &= (1 << (8 * dtype.itemsize)) - 1
        row[offset : offset + dtype.itemsize] = np.frombuffer(
            value.to_bytes(dtype.itemsize, "little"), dtype=np.uint8
        )

    def put_str(row: np.ndarray, name: str, value: bytes) -> None:
        dtype, offset = fields[name][:2]
        _put(row, offset, dtype.itemsize, value)

    for row, spec in zip(raw, rows, strict=True):
        clock[0] += spec["step"]
        put_int(row, "ts_ns", clock[0])
        put_int(row, "pid", spec["pid"])
        put_str(row, "comm", spec["comm"])
        if kind in ("open", "exec"):
            put_int(row, "ret", spec["ret"])
            put_int(row, "uid", spec["uid"])
            put_str(row, "path", spec["path"])
            put_str(row, "fs_path", spec["fs"])
            put_int(row, "fs_path_kind", spec["fs_kind"])
            put_int(row, "fs_path_cut", spec["fs_cut"])
        if kind == "open":
            put_int(row, "tid", spec["pid"] + 1)
            put_int(row, "flags", spec["flags"])
            put_int(row, "path_truncated", spec["truncated"])
        elif kind == "exec":
            put_int(row, "ppid", spec["uid"])
            put_str(row, "parent_comm", spec["parent"])
            put_int(row, "cgroup_id", spec["cgroup"])
            count = spec["args_count"]
            put_int(row, "args_count", len(spec["args"]) if count is None else count)
            dtype, offset = fields["args"][:2]
            width = dtype.base.itemsize
            for i, arg in enumerate(spec["args"]):
                _put(row, offset + i * width, width, arg)
        else:
            put_int(row, "tid", spec["pid"] + 1)
            put_int(row, "ppid", spec["uid"])
            put_int(row, "start_ns", clock[0] - spec["age"])
            put_int(row, "exit_status", spec["status"])
            put_int(row, "cgroup_id", spec["cgroup"])
    return Batch(raw, dec, "events")


# Rules.

STR_LITERALS = ["sh", "bash", "/etc/shadow", "/tmp/", "/tmp", "shadow", "", "a", "/", "é",
                "café", "caf", "\udcff", "\udcff\udcfe", "\ufffd", "x" * 15, "x" * 16,
                "/tmp/go-build", "...", "p" * 40, "a\\b", "a b", "tmux: server"]  # fmt: skip
GLOBS = ["/tmp/*", "*shadow", "*tmp*", "/tmp/go-build*", "?h", "[bs]*", "*[!a]", "/e*c/*w",
         "*", "", "a[", "[]", "*\udcff*", "*é", "x*x", "sh", "**", "/etc/?shadow*",
         "[a-c]*", "*.../", "x\\*"]  # fmt: skip
INT_LITERALS = ["0", "1", "2", "3", "-1", "-2", "13", "255", "4242", "0x7f", str(2**31 - 1),
                str(2**32 - 1), str(2**63 - 1), str(2**63), str(2**64 - 1), str(2**64),
                str(-(2**63)), str(-(2**63) - 1), str(2**70)]  # fmt: skip
FLOAT_OFFSETS = ["0", "0.05", "0.5", "1", "-1", "2.5", "10"]
FLOAT_LITERALS = ["0", "1.5", "0.001", "2.675", "1e30", "-1", "nan", "inf", str(2**53 + 1)]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def leaf(draw: st.DrawFn, kind: str, lists: list[str]) -> str:
    fields = DEFAULT_SCHEMA[kind]
    field = draw(st.sampled_from(sorted(fields)))
    ftype = fields[field]
    if field == "event":
        other = draw(st.sampled_from(sorted(DEFAULT_SCHEMA)))
        return draw(st.sampled_from([f"event == {kind}", f"event != {other}",
                                     f"event in ({kind}, {other})"]))  # fmt: skip
    if ftype is str:
        op = draw(st.sampled_from(["==", "!=", "in", "startswith", "endswith", "contains",
                                   "glob"]))  # fmt: skip
        if op == "glob":
            return f"{field} glob {_quote(draw(st.sampled_from(GLOBS)))}"
        if op == "in":
            values = draw(st.lists(st.sampled_from(STR_LITERALS), max_size=6))
            named = draw(st.lists(st.sampled_from(lists), max_size=1)) if lists else []
            return f"{field} in ({', '.join([*map(_quote, values), *named])})"
        return f"{field} {op} {_quote(draw(st.sampled_from(STR_LITERALS)))}"
    if ftype is list:
        if draw(st.booleans()):
            return f"{field} contains {_quote(draw(st.sampled_from(STR_LITERALS)))}"
        values = draw(st.lists(st.sampled_from(STR_LITERALS), min_size=1, max_size=4))
        return f"{field} in ({', '.join(map(_quote, values))})"
    op = draw(st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in"]))
    if ftype is int:
        pool = INT_LITERALS
    elif field == "time":
        pool = [str(BASE_TIME + float(o)) for o in FLOAT_OFFSETS] + FLOAT_LITERALS
    else:
        pool = FLOAT_LITERALS
    if op == "in":
        return f"{field} in ({', '.join(draw(st.lists(st.sampled_from(pool), max_size=4)))})"
    return f"{field} {op} {draw(st.sampled_from(pool))}"


def _joiner(word: str) -> Callable[[list[str]], str]:
    return lambda conditions: f" {word} ".join(f"({c})" for c in conditions)


def condition(kind: str, lists: list[str], macros: list[str]) -> st.SearchStrategy[str]:
    atoms = leaf(kind, lists)
    if macros:
        atoms = st.one_of(atoms, st.sampled_from(macros))

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            inner.map(lambda c: f"not ({c})"),
            st.lists(inner, min_size=2, max_size=3).map(_joiner("and")),
            st.lists(inner, min_size=2, max_size=3).map(_joiner("or")),
        )

    return st.recursive(atoms, extend, max_leaves=6)


@st.composite
def rule_file(draw: st.DrawFn, kind: str) -> str:
    """YAML text: a list or two, a macro or two, and a few rules for ``kind``."""
    items: list[str] = []
    lists: list[str] = []
    for i in range(draw(st.integers(0, 2))):
        values = draw(st.lists(st.sampled_from(STR_LITERALS), max_size=6))
        items.append(f"- list: l{i}\n  items: {json.dumps(values)}")
        lists.append(f"l{i}")
    macros: list[str] = []
    for i in range(draw(st.integers(0, 2))):
        items.append(
            f"- macro: m{i}\n  condition: {json.dumps(draw(condition(kind, lists, macros)))}"
        )
        macros.append(f"m{i}")
    fields = sorted(DEFAULT_SCHEMA[kind])
    for i in range(draw(st.integers(1, 4))):
        cond = draw(condition(kind, lists, macros))
        if draw(st.booleans()):
            cond = f"event == {kind} and ({cond})"
        shown = draw(st.lists(st.sampled_from(fields), max_size=3))
        output = " ".join(f"%{f}" for f in shown) + " 100%%"
        text = (
            f"- rule: r{i}\n  condition: {json.dumps(cond)}\n  output: {json.dumps(output)}\n"
            f"  priority: {draw(st.sampled_from(['NOTICE', 'DEBUG']))}\n  tags: [t{i}]"
        )
        if draw(st.integers(0, 3)) == 0:
            text += f"\n  enabled: {draw(st.sampled_from(['true', 'false']))}"
        if draw(st.booleans()):
            text += f"\n  rate_limit: {draw(st.sampled_from(['1/s', '2/100ms', '3/m', '1/2s']))}"
        if draw(st.booleans()):
            by = draw(st.sampled_from([None, "pid", "comm", "time", "norm_path", "uid"]))
            by = by if by is None or by in DEFAULT_SCHEMA[kind] else "pid"
            count = draw(st.integers(1, 3))
            within = draw(st.sampled_from(["100ms", "1s", "0.5"]))
            by_text = "" if by is None else f", by: {by}"
            text += f"\n  threshold: {{count: {count}, within: {within}{by_text}}}"
        if draw(st.integers(0, 3)) == 0:
            field = draw(st.sampled_from([f for f in fields if DEFAULT_SCHEMA[kind][f] is str]))
            comp = draw(st.sampled_from(["=", "startswith", "glob", "in", "contains"]))
            value: Any = draw(st.sampled_from(STR_LITERALS))
            if comp == "in":
                value = [value]
            elif comp == "glob":
                value = draw(st.sampled_from(GLOBS))
            text += (
                f"\n  exceptions:\n    - name: e\n      fields: [{field}]\n"
                f"      comps: [{json.dumps(comp)}]\n      values: [[{json.dumps(value)}]]"
            )
        items.append(text)
    return "\n".join(items) + "\n"


def sample_batches(kind: str, n: int, seed: int, per_batch: int = 64) -> list[Batch]:
    rnd = random.Random(seed)
    clock = [int(BASE_TIME * 1e9) - _MONO_TO_WALL_NS]
    rows = [random_row(rnd) for _ in range(n)]
    return [raw_batch(kind, rows[i : i + per_batch], clock, seed=i) for i in range(0, n, per_batch)]


def random_row(rnd: random.Random) -> dict[str, Any]:
    return {
        "step": rnd.choice([0, 1, 50_000_000, 400_000_000]),
        "ret": rnd.choice(RETS),
        "pid": rnd.choice(INTS[:4]),
        "uid": rnd.choice(INTS),
        "comm": rnd.choice(COMMS),
        "parent": rnd.choice(COMMS),
        "path": rnd.choice(PATHS),
        "fs": rnd.choice(PATHS),
        "fs_kind": rnd.choice([0, 1, 2]),
        "fs_cut": rnd.choice([0, 0, 1]),
        "truncated": rnd.choice([0, 0, 0, 1]),
        "flags": 0,
        "args": [rnd.choice(ARGS) for _ in range(rnd.randint(0, 3))],
        "args_count": None,
        "cgroup": rnd.choice([1, 7]),
        "status": rnd.choice([0, 9, 3 << 8]),
        "age": rnd.choice([0, 2_675_000_000]),
    }
