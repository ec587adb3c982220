"""bpfloom.typecache: what an object's DWARF says is kept per user and per object
content, so the next run of the same object reads no DWARF; a cached type has exactly
the shape of a freshly parsed one (cycles, bitfields, unions, enums, function pointers,
forward declarations); a cache that is malformed, stale, too big, a symlink, writable by
others or not ours is ignored and replaced; an unwritable cache directory, or no HOME,
only costs the parse."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_dwarf import HEADER, SOURCE

import bpfloom.dwarf
from bpfloom import typecache
from bpfloom._exceptions import TypeInfoError
from bpfloom.btf import btf_from_elf
from bpfloom.decode import Decoder
from bpfloom.typeinfo import TypeInfo
from bpfloom.types import (
    Array,
    Enum,
    Float,
    FuncProto,
    Fwd,
    Int,
    Pointer,
    Struct,
    Type,
    Union,
)
from conftest import bpf_object, compile_bpf

ECLI = ["ecli/execsnoop", "ecli/exitsnoop", "ecli/sigsnoop", "ecli/goroutine", "shapes"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory of this test's own: XDG_CACHE_HOME/bpfloom/dwarf."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "bpfloom" / "dwarf"


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_dwarf's object: every shape DWARF gives, declared by the program."""
    return compile_bpf(SOURCE, tmp_path_factory.mktemp("rich"), headers={"shapes.h": HEADER})


class Parses:
    """Counts the DWARF parses (``dwarf_types`` calls) while in use."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = bpfloom.dwarf.dwarf_types

        def counted(*args: Any, **kwargs: Any) -> list[Type]:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(bpfloom.dwarf, "dwarf_types", counted)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Parses:
    return Parses(monkeypatch)


def typeinfo(path: Path) -> TypeInfo:
    return TypeInfo(str(path), btf_from_elf(path), path.read_bytes())


def walk_pair(a: Type | None, b: Type | None) -> Iterator[tuple[Type | None, Type | None]]:
    """Both type graphs in step (each pair once: they may be cyclic)."""
    seen: set[tuple[int, int]] = set()
    work = [(a, b)]
    while work:
        x, y = work.pop()
        if (id(x), id(y)) in seen:
            continue
        seen.add((id(x), id(y)))
        yield x, y
        if isinstance(x, Struct | Union) and isinstance(y, Struct | Union):
            assert len(x.members) == len(y.members)
            work.extend((m.type, n.type) for m, n in zip(x.members, y.members, strict=True))
        elif isinstance(x, FuncProto) and isinstance(y, FuncProto):
            assert len(x.params) == len(y.params)
            work.append((x.return_type, y.return_type))
            work.extend((p, q) for (_, p), (_, q) in zip(x.params, y.params, strict=True))
        else:
            for attr in ("target", "element"):
                if hasattr(x, attr):
                    work.append((getattr(x, attr), getattr(y, attr)))


def assert_same_shape(a: Type, b: Type) -> int:
    """``a`` and ``b`` are the same type graph; returns how many types were compared."""
    count = 0
    for x, y in walk_pair(a, b):
        count += 1
        assert type(x) is type(y), (x, y)
        assert getattr(x, "name", None) == getattr(y, "name", None)
        if isinstance(x, Int | Float | Struct | Union | Enum):
            assert x.size == y.size  # type: ignore[union-attr]
        if isinstance(x, Int) and isinstance(y, Int):
            assert (x.signed, x.is_bool, x.is_char) == (y.signed, y.is_bool, y.is_char)
        if isinstance(x, Struct | Union) and isinstance(y, Struct | Union):
            assert x.decl_file == y.decl_file
            assert [(m.name, m.offset_bits, m.bitfield_size) for m in x.members] == [
                (m.name, m.offset_bits, m.bitfield_size) for m in y.members
            ]
        if isinstance(x, Enum) and isinstance(y, Enum):
            assert (x.signed, x.values) == (y.signed, y.values)
        if isinstance(x, Array) and isinstance(y, Array):
            assert x.length == y.length
        if isinstance(x, Fwd) and isinstance(y, Fwd):
            assert x.is_union == y.is_union
        if isinstance(x, Pointer | FuncProto):
            assert [n for n, _ in getattr(x, "params", [])] == [
                n for n, _ in getattr(y, "params", [])
            ]
    return count


def cache_file(cache: Path, path: Path) -> Path:
    return cache / f"{hashlib.sha256(path.read_bytes()).hexdigest()}.json"


@pytest.mark.parametrize("name", ECLI)
def test_the_second_reading_comes_from_the_cache_with_the_same_types(
    name: str, cache: Path, parses: Parses
) -> None:
    """A fresh parse and the cached summary give the same record type, the same
    program structs (same shapes), the same decoder and the same decoded events; the
    second reading parses no DWARF."""
    path = bpf_object(name)
    first = typeinfo(path)
    fresh = {t.name: t for t in first.program_structs()}
    assert parses.count == 1
    assert cache_file(cache, path).is_file()
    second = typeinfo(path)
    cached = {t.name: t for t in second.program_structs()}
    assert parses.count == 1, "the second reading parsed the DWARF again"
    assert fresh.keys() == cached.keys() and fresh
    rng = np.random.default_rng(7)
    for struct_name, t in fresh.items():
        assert cached[struct_name] is not t
        assert assert_same_shape(t, cached[struct_name]) >= 2
        a, b = Decoder(t), Decoder(cached[struct_name])
        assert a.dtype == b.dtype and a.fields == b.fields
        records = rng.integers(0, 256, size=(50, max(a.size, 1)), dtype=np.uint8)
        assert a.decode_batch(records) == b.decode_batch(records)
    assert record_type(first) == record_type(second)


def record_type(info: TypeInfo) -> str:
    """The record type's name, or the error that says why there is none."""
    try:
        return info.record_type("rb").name
    except TypeInfoError as exc:
        return str(exc)


def test_every_shape_survives_the_cache(rich: Path, cache: Path, parses: Parses) -> None:
    """Cycles through pointers, bitfields, anonymous members, unions, negative and
    64-bit enums, multi-dimensional and flexible arrays, function pointers and forward
    declarations: ``find`` gives the same graphs from the cache."""
    fresh = typeinfo(rich)
    names = ["stats", "node", "event", "point", "num"]
    expected = [fresh.find(n) for n in names]
    assert parses.count == 1
    cached = typeinfo(rich)
    for name, t in zip(names, expected, strict=True):
        assert assert_same_shape(t, cached.find(name)) >= 1
    assert parses.count == 1
    node = cached.find("node")
    assert isinstance(node, Struct)
    assert node.members[0].type is not None
    assert getattr(node.members[0].type, "target", None) is node  # the cycle is a cycle


def test_a_type_the_program_does_not_declare_reads_the_dwarf(cache: Path, parses: Parses) -> None:
    """The cache keeps only the program's own aggregates: naming a kernel type
    only in its DWARF (--event-type swait_queue_head) still works, by reading the DWARF."""
    path = bpf_object("ecli/exitsnoop")
    typeinfo(path).program_structs()
    info = typeinfo(path)
    info.program_structs()
    assert parses.count == 1
    task = info.find("swait_queue_head")
    assert isinstance(task, Struct) and task.members
    assert parses.count == 2


def test_files_are_private(cache: Path) -> None:
    path = bpf_object("ecli/execsnoop")
    typeinfo(path).program_structs()
    f = cache_file(cache, path)
    assert f.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
    assert cache.parent.stat().st_mode & 0o777 == 0o700
    doc = json.loads(f.read_text())
    assert (doc["format"], doc["version"]) == (typecache.FORMAT, typecache.VERSION)
    assert doc["object"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in cache.iterdir()] == [f.name]  # no temporary file left


# --- bad caches -----------------------------------------------------------------------------


def _json_edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(f: Path) -> None:
        doc = json.loads(f.read_text())
        edit(doc)
        f.write_text(json.dumps(doc))

    return apply


def _first_struct(doc: dict[str, Any]) -> list[Any]:
    return next(t for t in doc["types"] if t[0] == "struct")


def _symlink(f: Path) -> None:
    copy = f.with_name("elsewhere")
    os.replace(f, copy)
    f.symlink_to(copy)


BAD: dict[str, Callable[[Path], None]] = {
    "garbage": lambda f: f.write_bytes(b"\x00\xff not json"),
    "truncated": lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "empty": lambda f: f.write_bytes(b""),
    "nested too deep": lambda f: f.write_bytes(b"[" * 200_000),
    "not an object": _json_edit(lambda d: d.clear()),
    "other version": _json_edit(lambda d: d.update(version=typecache.VERSION + 1)),
    "other writer": _json_edit(lambda d: d.update(writer="0" * 64)),
    "other object": _json_edit(lambda d: d.update(object="1" * 64)),
    "extra key": _json_edit(lambda d: d.update(extra=1)),
    "reference out of range": _json_edit(lambda d: _first_struct(d)[4][0].__setitem__(1, 10**6)),
    "negative size": _json_edit(lambda d: _first_struct(d).__setitem__(2, -1)),
    "huge offset": _json_edit(lambda d: _first_struct(d)[4][0].__setitem__(2, 2**70)),
    "size as text": _json_edit(lambda d: _first_struct(d).__setitem__(2, "36")),
    "bool as number": _json_edit(lambda d: _first_struct(d)[4][0].__setitem__(3, True)),
    "unknown kind": _json_edit(lambda d: _first_struct(d).__setitem__(0, "blob")),
    "short entry": _json_edit(lambda d: _first_struct(d).pop()),
    "long name": _json_edit(lambda d: _first_struct(d).__setitem__(1, "x" * 5000)),
    "program type dropped": _json_edit(
        lambda d: [n.__setitem__(4, -1) for n in d["named"] if n[1] == "event"]
    ),
    "named entry of another kind": _json_edit(
        lambda d: [n.__setitem__(0, "union") for n in d["named"] if n[1] == "event"]
    ),
    "symlink": _symlink,
    "writable by the group": lambda f: f.chmod(0o620),
    "writable by others": lambda f: f.chmod(0o602),
    "owned by another user": lambda f: os.chown(f, 65534, 65534),
    "a directory": lambda f: (f.unlink(), f.mkdir()),  # type: ignore[func-returns-value]
}


@pytest.mark.parametrize("how", BAD)
def test_a_bad_cache_is_ignored_and_replaced(
    how: str, rich: Path, cache: Path, parses: Parses
) -> None:
    expected = typeinfo(rich).find("event")
    f = cache_file(cache, rich)
    good = f.read_bytes()
    BAD[how](f)
    got = typeinfo(rich).find("event")
    assert parses.count == 2, "a bad cache was used"
    assert_same_shape(expected, got)
    if how == "a directory":
        return  # not replaced: the name is taken (and nothing is read from it)
    assert f.is_file() and not f.is_symlink()
    assert f.read_bytes() == good  # written again, as before
    assert f.stat().st_uid == os.geteuid() and f.stat().st_mode & 0o777 == 0o600
    typeinfo(rich).find("event")
    assert parses.count == 2  # and used from then on


def test_a_cache_file_too_large_is_not_read(
    rich: Path, cache: Path, parses: Parses, monkeypatch: pytest.MonkeyPatch
) -> None:
    typeinfo(rich).program_structs()
    monkeypatch.setattr(typecache, "MAX_BYTES", cache_file(cache, rich).stat().st_size - 1)
    typeinfo(rich).program_structs()
    assert parses.count == 2


@pytest.mark.parametrize("directory", ["bpfloom", "dwarf"])
@pytest.mark.parametrize("problem", ["writable by others", "owned by another user", "symlink"])
def test_an_unsafe_cache_directory_is_neither_read_nor_written(
    directory: str, problem: str, rich: Path, cache: Path, parses: Parses, tmp_path: Path
) -> None:
    path = rich
    typeinfo(path).program_structs()
    d = cache if directory == "dwarf" else cache.parent
    if problem == "writable by others":
        d.chmod(0o777)
    elif problem == "owned by another user":
        os.chown(d, 65534, 65534)
    else:
        moved = tmp_path / "moved"
        os.replace(d, moved)
        d.symlink_to(moved)
    f = cache_file(cache, path)
    before = f.stat().st_mtime_ns
    info = typeinfo(path)
    info.program_structs()
    assert parses.count == 2
    assert f.stat().st_mtime_ns == before  # not written either
    assert info.find("event").name == "event"


@pytest.mark.parametrize("where", ["a regular file", "no HOME"])
def test_no_usable_cache_directory_costs_only_the_parse(
    where: str, rich: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parses: Parses
) -> None:
    if where == "a regular file":
        blocker = tmp_path / "file"
        blocker.write_text("")
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    else:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.delenv("HOME", raising=False)
        assert typecache.cache_dir() is None
    for _ in range(2):
        assert typeinfo(rich).find("event").name == "event"
    assert parses.count == 2
    assert list(tmp_path.rglob("*.json")) == []


def test_xdg_cache_home_must_be_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A relative XDG_CACHE_HOME is ignored, as the XDG spec says: HOME's .cache then."""
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert typecache.cache_dir() == tmp_path / ".cache" / "bpfloom" / "dwarf"
