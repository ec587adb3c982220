"""BpfObject life cycle against the real kernel: nothing leaks, closed objects refuse
use, bad input fails with the right error, privileges and mounts are checked.

Leaks are checked two ways: the ids of the programs, maps and links this process holds
(read from ``/proc/self/fdinfo``, so other processes loading BPF at the same time
cannot disturb the test) must be new while the object is open and gone from the
kernel (``bpftool``) once it is closed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bpfloom
from bpfloom import (
    AlreadyLoadedError,
    AttachError,
    BpfObject,
    ClosedError,
    LoadError,
    NotFoundError,
    NotLoadedError,
    ObjectFileError,
    _env,
)
from conftest import (
    ROOT,
    assert_gone_from_kernel,
    bpf_object,
    kernel_ids,
    kernel_prog_ids,
    new_ids,
    own_bpf_ids,
)

NOBODY = 65534
# --- life cycle ---------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("name", "attach", "min_progs", "min_links"),
    [
        ("shapes", True, 2, 1),  # tp_getpgid attaches; emit_shapes (syscall) is skipped
        ("shapes_btf", True, 2, 1),
        ("tracepoint", True, 1, 0),  # SEC("tracepoint") names no target: skipped
        ("uprobe", False, 2, 0),
    ],
)
def test_open_load_attach_close_leaves_nothing(
    name: str, attach: bool, min_progs: int, min_links: int
) -> None:
    before = own_bpf_ids()
    obj = BpfObject(bpf_object(name))
    obj.load()
    if attach:
        links = obj.attach_all()
        assert len(links) == min_links
        assert all(not link.closed for link in links)
    created = new_ids(before)
    assert len(created["prog"]) >= min_progs
    assert len(created["map"]) >= 1
    assert len(created["link"]) == min_links
    in_kernel = kernel_ids()
    for kind in ("prog", "map", "link"):
        assert created[kind] <= in_kernel[kind], f"our {kind}s are not in the kernel?"

    obj.close()

    assert obj.closed
    assert new_ids(before) == {kind: set() for kind in created}, "file descriptors leaked"
    assert_gone_from_kernel(created)


@pytest.mark.kernel
def test_close_is_idempotent_and_closes_links() -> None:
    obj = bpfloom.load(bpf_object("shapes"))
    links = obj.attach_all()
    reader = obj.ring_buffer("rb", "shapes")
    obj.close()
    assert obj.closed
    assert all(link.closed for link in links)
    assert reader.closed
    assert obj.links == []
    obj.close()  # again: no error
    for link in links:
        link.close()  # a link closed by its object may be closed again
    reader.close()
    assert obj.closed


@pytest.mark.kernel
def test_context_manager_closes_on_exit_and_on_error() -> None:
    before = own_bpf_ids()
    with BpfObject(bpf_object("shapes")) as obj:
        obj.load()
        obj.attach_all()
        assert new_ids(before)["prog"]
    assert obj.closed
    assert new_ids(before)["prog"] == set()

    with pytest.raises(RuntimeError, match="boom"), BpfObject(bpf_object("shapes")) as obj2:
        obj2.load()
        raise RuntimeError("boom")
    assert obj2.closed
    assert new_ids(before) == {kind: set() for kind in before}


def _attach_first(obj: BpfObject) -> Any:
    return obj.program("tp_getpgid").attach()


def _test_run(obj: BpfObject) -> Any:
    return obj.program("emit_shapes").test_run()


USE_AFTER_CLOSE: list[tuple[str, Callable[[BpfObject], Any]]] = [
    ("load", lambda o: o.load()),
    ("attach_all", lambda o: o.attach_all()),
    ("program attach", _attach_first),
    ("program fd", lambda o: o.program("emit_shapes").fd),
    ("program test_run", _test_run),
    ("map lookup", lambda o: o.map("arr").lookup(0)),
    ("map update", lambda o: o.map("arr").update(0, 1)),
    ("map iterate", lambda o: list(o.map("by_key").keys())),
    ("map fd", lambda o: o.map("by_key").fd),
    ("global read", lambda o: o.globals["g_s8"]),
    ("global write", lambda o: o.globals.__setitem__("data_value", 1)),
    ("ring buffer", lambda o: o.ring_buffer("rb", "shapes")),
]


@pytest.mark.kernel
@pytest.mark.parametrize("loaded", [False, True], ids=["open", "loaded"])
@pytest.mark.parametrize(("what", "use"), USE_AFTER_CLOSE, ids=[u[0] for u in USE_AFTER_CLOSE])
def test_use_after_close_raises_closed_error(
    what: str, use: Callable[[BpfObject], Any], loaded: bool
) -> None:
    obj = BpfObject(bpf_object("shapes"))
    if loaded:
        obj.load()
    obj.close()
    with pytest.raises(ClosedError, match="closed"):
        use(obj)


@pytest.mark.kernel
def test_link_close_detaches_and_is_idempotent() -> None:
    with bpfloom.load(bpf_object("shapes")) as obj:
        before = own_bpf_ids()
        link = obj.program("tp_getpgid").attach()
        link_ids = new_ids(before)["link"]
        assert len(link_ids) == 1
        assert link in obj.links
        link.close()
        link.close()
        assert link.closed
        assert link not in obj.links
        assert_gone_from_kernel({"link": link_ids})


@pytest.mark.kernel
def test_loading_twice_raises() -> None:
    with BpfObject(bpf_object("shapes")) as obj:
        obj.load()
        with pytest.raises(AlreadyLoadedError, match="already loaded"):
            obj.load()
        # The object is still fine after the refused second load.
        assert obj.loaded
        assert obj.program("emit_shapes").test_run() == 0


@pytest.mark.parametrize(
    "use",
    [
        lambda o: o.program("tp_getpgid").fd,
        lambda o: o.program("tp_getpgid").attach(),
        lambda o: o.attach_all(),
        lambda o: o.ring_buffer("rb"),
        lambda o: o.map("arr").lookup(0),
    ],
    ids=["program fd", "attach", "attach_all", "ring_buffer", "map lookup"],
)
def test_loaded_only_methods_on_an_opened_object_raise_not_loaded(use: Any) -> None:
    with BpfObject(bpf_object("shapes")) as obj:
        with pytest.raises(NotLoadedError, match="not loaded yet"):
            use(obj)
        assert not isinstance(NotLoadedError("x"), ClosedError)


@pytest.mark.parametrize(
    ("use", "message"),
    [
        (lambda o: o.program("nope"), "no program 'nope'"),
        (lambda o: o.map("nope"), "no map 'nope'"),
        (lambda o: o.globals["nope"], "unknown global 'nope'"),
    ],
    ids=["program", "map", "global"],
)
def test_a_missing_name_is_one_kind_of_error(use: Any, message: str) -> None:
    with BpfObject(bpf_object("shapes")) as obj:
        with pytest.raises(NotFoundError) as info:
            use(obj)
        assert str(info.value).startswith(message)  # no KeyError quotes
        assert isinstance(info.value, KeyError)
        assert obj.globals.get("nope") is None


@pytest.mark.kernel
def test_setting_autoload_after_load_raises() -> None:
    with (
        bpfloom.load(bpf_object("shapes")) as obj,
        pytest.raises(AlreadyLoadedError, match="already loaded"),
    ):
        obj.program("tp_getpgid").autoload = False


BAD_VERIFIER_USES: list[tuple[str, Callable[[BpfObject], Any]]] = [
    ("load again", lambda o: o.load()),
    ("attach_all", lambda o: o.attach_all()),
    ("program fd", lambda o: o.program("bad_lookup").fd),
    ("program attach", lambda o: o.program("bad_lookup").attach()),
    ("map lookup", lambda o: o.map("counts").lookup(0)),
    ("map update", lambda o: o.map("counts").update(0, 1)),
]


@pytest.mark.kernel
@pytest.mark.parametrize(("what", "use"), BAD_VERIFIER_USES, ids=[u[0] for u in BAD_VERIFIER_USES])
def test_failed_load_refuses_use_and_leaves_nothing(
    what: str, use: Callable[[BpfObject], Any]
) -> None:
    before = own_bpf_ids()
    kernel_before = kernel_ids()
    obj = BpfObject(bpf_object("bad_verifier"))
    try:
        with pytest.raises(LoadError):
            obj.load()
        assert not obj.loaded
        # Nothing of the failed load stays behind, neither fds nor kernel objects.
        assert new_ids(before)["prog"] == set()
        assert new_ids(before)["map"] == set()
        with pytest.raises(ClosedError, match="failed to load"):
            use(obj)
    finally:
        obj.close()
    assert new_ids(before) == {kind: set() for kind in before}
    # Programs named bad_lookup created meanwhile would be ours (the name is unique to
    # this object); none may exist.
    added = kernel_prog_ids() - kernel_before["prog"]
    names = _prog_names(added)
    assert "bad_lookup" not in names


def _prog_names(ids: set[int]) -> set[str]:
    names = set()
    for prog_id in ids:
        out = subprocess.run(
            ["bpftool", "-j", "prog", "show", "id", str(prog_id)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if out.strip():
            names.add(json.loads(out).get("name", ""))
    return names


@pytest.mark.kernel
def test_bpfloom_load_closes_the_object_when_load_fails() -> None:
    before = own_bpf_ids()
    with pytest.raises(LoadError):
        bpfloom.load(bpf_object("bad_verifier"))
    assert new_ids(before) == {kind: set() for kind in before}


# --- bad input ----------------------------------------------------------------------------


def _truncated(tmp_path: Path, length: Callable[[int], int]) -> Path:
    data = bpf_object("shapes").read_bytes()
    cut = tmp_path / "truncated.bpf.o"
    cut.write_bytes(data[: length(len(data))])
    return cut


TRUNCATIONS: list[tuple[str, Callable[[int], int]]] = [
    ("10 bytes", lambda n: 10),
    ("63 bytes", lambda n: 63),  # one byte short of the 64-bit ELF header
    ("64 bytes", lambda n: 64),  # the ELF header and nothing else
    ("100 bytes", lambda n: 100),
    ("half", lambda n: n // 2),
    ("all but 1 byte", lambda n: n - 1),
]


@pytest.mark.parametrize(("what", "length"), TRUNCATIONS, ids=[t[0] for t in TRUNCATIONS])
def test_truncated_object_raises_object_file_error(
    tmp_path: Path, what: str, length: Callable[[int], int]
) -> None:
    path = _truncated(tmp_path, length)
    with pytest.raises(ObjectFileError) as info:
        BpfObject(path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message.lower()
    assert "unknown error" not in message.lower()  # a raw libbpf errno is no explanation


def test_truncated_objects_never_crash(tmp_path: Path) -> None:
    """Cut everywhere (every 256 bytes and the edges of the ELF header), in a child
    process: libelf reading past the end must not take the interpreter down."""
    size = bpf_object("shapes").stat().st_size
    lengths = sorted({*range(0, size, 256), *range(0, 80), size - 1})
    script = textwrap.dedent(
        """
        import sys
        from bpfloom import BpfObject, ObjectFileError
        data = open(sys.argv[1], "rb").read()
        wrong = []
        for n in map(int, sys.argv[3:]):
            open(sys.argv[2], "wb").write(data[:n])
            try:
                BpfObject(sys.argv[2]).close()
                wrong.append((n, "opened"))
            except ObjectFileError:
                pass
            except BaseException as exc:
                wrong.append((n, type(exc).__name__))
        print("WRONG", wrong)
        """
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(bpf_object("shapes")),
            str(tmp_path / "cut.bpf.o"),
            *map(str, lengths),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"child died ({proc.returncode}): {proc.stderr[-2000:]}"
    assert proc.stdout.strip() == "WRONG []"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing file", lambda d: d / "missing.bpf.o", "no such file"),
    ("directory", lambda d: d, "directory"),
    ("empty file", lambda d: _write(d / "empty.bpf.o", b""), "not an ELF file"),
    ("text file", lambda d: _write(d / "notes.bpf.o", b"hello, world\n"), "not an ELF file"),
    ("C source", lambda d: Path(str(bpf_object("shapes"))[:-1] + "c"), "not an ELF file"),
    ("x86-64 ELF", lambda d: Path(shutil.which("true") or "/bin/true"), "not a BPF object"),
    ("no programs", lambda d: bpf_object("noprog"), "no BPF programs"),
    # Opening these for reading would block (a FIFO with no writer) or never end.
    ("FIFO", lambda d: _fifo(d / "pipe.bpf.o"), "not a regular file"),
    ("character device", lambda d: Path("/dev/zero"), "not a regular file"),
    ("corrupt names", lambda d: _corrupt_strtab(d / "names.bpf.o"), "libbpf cannot use"),
]


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _corrupt_strtab(path: Path) -> Path:
    """A copy of a test object whose section and symbol names are all 'Z's: libbpf
    answers with an errno that once read as a message about the file itself."""
    from elftools.elf.elffile import ELFFile

    source = bpf_object("ecli/sigsnoop")
    data = bytearray(source.read_bytes())
    with open(source, "rb") as f:
        strtab = ELFFile(f).get_section_by_name(".strtab")
        start, size = strtab["sh_offset"], strtab["sh_size"]
    for i in range(start, start + size):
        if data[i]:
            data[i] = ord("Z")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("what", "make", "phrase"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_object_file_raises_object_file_error(
    tmp_path: Path, what: str, make: Callable[[Path], Path], phrase: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ObjectFileError) as info:
        BpfObject(path)
    assert type(info.value) is ObjectFileError
    assert phrase.lower() in str(info.value).lower()
    assert str(path) in str(info.value)
    if path.exists():
        assert "No such file" not in str(info.value)


@pytest.mark.kernel
def test_verifier_rejection_raises_load_error_with_log_tail() -> None:
    with BpfObject(bpf_object("bad_verifier")) as obj, pytest.raises(LoadError) as info:
        obj.load()
    err = info.value
    assert type(err) is LoadError
    assert err.errno == 13  # EACCES, as the verifier returns
    assert "invalid mem access" in err.log_tail
    assert "map_value_or_null" in err.log_tail
    # The message quotes the verifier's last lines too, and names the object.
    assert "invalid mem access 'map_value_or_null'" in str(err)
    assert "bad_verifier.bpf.o" in str(err)
    # The tail is the end of the log, not its beginning: the failing line is in it.
    assert err.log_tail.splitlines()[-1].startswith("processed ")


# Every program kind that runs through a BPF trampoline, which this kernel lacks.
TRAMPOLINE_PROGRAMS = [
    ("on_fentry", "fentry/do_unlinkat", "tracing", "trace_fentry"),
    ("on_fexit", "fexit/do_unlinkat", "tracing", "trace_fexit"),
    ("on_fmod_ret", "fmod_ret/security_file_open", "tracing", "modify_return"),
    ("on_fentry_sleepable", "fentry.s/do_unlinkat", "tracing", "trace_fentry"),
    ("on_lsm", "lsm/file_open", "lsm", "lsm_mac"),
    ("on_lsm_sleepable", "lsm.s/file_open", "lsm", "lsm_mac"),
    ("on_lsm_cgroup", "lsm_cgroup/file_open", "lsm", "lsm_cgroup"),
]


def _only(obj: BpfObject, program: str) -> None:
    for prog in obj.programs.values():
        prog.autoload = prog.name == program


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("program", "section", "prog_type", "attach_type"),
    TRAMPOLINE_PROGRAMS,
    ids=[p[0] for p in TRAMPOLINE_PROGRAMS],
)
def test_trampoline_program_load_error_says_what_failed(
    program: str, section: str, prog_type: str, attach_type: str
) -> None:
    """The kernel answers EPERM; as root with every capability that is not a
    permission problem, and the error says what really failed and what to use."""
    before = own_bpf_ids()
    with BpfObject(bpf_object("trampoline")) as obj:
        _only(obj, program)
        with pytest.raises(LoadError) as info:
            obj.load()
    err = info.value
    assert type(err) is LoadError  # not a BpfPermissionError
    assert not isinstance(err, PermissionError)
    assert err.errno == 1
    message = str(err)
    assert f"program {program!r} of {bpf_object('trampoline')}" in message
    assert f"SEC {section!r}: program type {prog_type}, attach type {attach_type}" in message
    assert "this kernel has no BPF trampolines" in message
    assert "not a permission problem, the caller has CAP_SYS_ADMIN" in message
    assert "needs root" not in message
    assert 'SEC("tp_btf/<tracepoint>")' in message
    assert 'SEC("raw_tp/<tracepoint>")' in message
    assert 'SEC("tracepoint/<category>/<name>")' in message
    assert not any(new_ids(before).values())


@pytest.mark.kernel
def test_tp_btf_needs_no_trampoline() -> None:
    with BpfObject(bpf_object("trampoline")) as obj:
        _only(obj, "on_tp_btf")
        obj.load()
        link = obj.program("on_tp_btf").attach()
        assert not link.closed
        assert obj.program("on_tp_btf").kind == ("tracing", "trace_raw_tp")


@pytest.mark.kernel
def test_a_long_verifier_log_is_quoted_from_its_end() -> None:
    """libbpf prints the verifier's log as one message, here far above 8 KiB: the
    LoadError still quotes its last lines, where the reason is."""
    from bpfloom import _libbpf

    mark = _libbpf.log_mark()
    with BpfObject(bpf_object("bad_verifier_long")) as obj, pytest.raises(LoadError) as info:
        obj.load()
    log = "\n".join(_libbpf.log_since(mark))
    assert len(log) > 8192
    err = info.value
    assert "invalid mem access 'map_value_or_null'" in err.log_tail
    assert err.log_tail.splitlines()[-1].startswith("processed ")


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["attach_all", "attach"])
def test_kprobe_attach_raises_attach_error_naming_hook(how: str) -> None:
    with bpfloom.load(bpf_object("kprobe")) as obj:
        before = own_bpf_ids()
        if _env.kprobes_available():  # another kernel: the kprobe simply attaches
            links = (
                obj.attach_all()
                if how == "attach_all"
                else [obj.program("on_do_unlinkat").attach()]
            )
            assert [link.hook for link in links] == ["kprobe/do_unlinkat"]
            return
        with pytest.raises(AttachError) as info:
            if how == "attach_all":
                obj.attach_all()
            else:
                obj.program("on_do_unlinkat").attach()
        err = info.value
        assert err.program == "on_do_unlinkat"
        assert err.hook == "kprobe/do_unlinkat"
        message = str(err)
        assert "on_do_unlinkat" in message
        assert "kprobe/do_unlinkat" in message
        assert "no kprobes" in message
        assert "CONFIG_KPROBES" in message
        assert "tracepoint" in message  # the suggested alternative
        assert obj.links == []
        assert new_ids(before)["link"] == set()


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("category", "name"),
    [("syscalls", "sys_enter_no_such_call"), ("no_such_category", "no_such_event")],
)
def test_missing_tracepoint_raises_attach_error(category: str, name: str) -> None:
    with bpfloom.load(bpf_object("tracepoint")) as obj:
        with pytest.raises(AttachError) as info:
            obj.program("on_tracepoint").attach_tracepoint(category, name)
        err = info.value
        assert err.program == "on_tracepoint"
        assert f"{category}/{name}" in err.hook
        assert "on_tracepoint" in str(err)
        assert f"{category}/{name}" in str(err)
        assert "no such tracepoint" in str(err)
        assert obj.links == []


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("binary", "symbol", "phrase"),
    [
        ("/nonexistent/dir/prog", "main", "no such file"),
        ("no_such_program_on_path_xyz", "main", "no such file"),
        (shutil.which("true") or "/bin/true", "bpfloom_no_such_symbol", "not found"),
    ],
    ids=["missing binary", "missing on PATH", "missing symbol"],
)
def test_uprobe_on_missing_target_raises_attach_error(
    binary: str, symbol: str, phrase: str
) -> None:
    with bpfloom.load(bpf_object("uprobe")) as obj:
        with pytest.raises(AttachError) as info:
            obj.program("probe_me_entry").attach_uprobe(binary, symbol)
        err = info.value
        assert err.program == "probe_me_entry"
        assert err.hook.startswith("uprobe ")
        assert symbol in err.hook
        assert "probe_me_entry" in str(err)
        assert phrase in str(err)
        assert obj.links == []


# --- privileges ---------------------------------------------------------------------------

# A child that becomes uid/gid 65534 (nobody) *before* importing bpfloom. The venv's
# interpreter lives under /root (mode 0700), which nobody cannot read, and so cannot
# exec either: the child starts as root, imports the modules that live there (the
# standard library and bpfloom's dependencies, listed by ``_preload``), drops to nobody
# with setgid/setuid (which clears every capability), and only then imports bpfloom.
_DROP_TO_NOBODY = textwrap.dedent(
    """
    import importlib, json, os, sys
    for name in json.loads(os.environ["BPFLOOM_TEST_PRELOAD"]):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if os.environ["BPFLOOM_TEST_DROP"] == "setuid":
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    assert "bpfloom" not in sys.modules
    """
)

_LOAD_AS_CHILD = _DROP_TO_NOBODY + textwrap.dedent(
    """
    import bpfloom
    caps = bpfloom._env.effective_capabilities()
    try:
        bpfloom.load(sys.argv[1]).close()
        result = {"error": None}
    except BaseException as exc:
        result = {
            "error": type(exc).__name__,
            "message": str(exc),
            "is_permission_error": isinstance(exc, PermissionError),
        }
    result.update(uid=os.getuid(), caps=caps)
    print(json.dumps(result))
    """
)

# The console script `bpfloom` is ``bpfloom.cli:entry``; call it as the script does.
_CLI_AS_CHILD = _DROP_TO_NOBODY + textwrap.dedent(
    """
    sys.argv = ["bpfloom", *sys.argv[1:]]
    from bpfloom.cli import entry
    entry()
    """
)


@pytest.fixture(scope="module")
def preload() -> str:
    """JSON list of the non-bpfloom modules that importing every bpfloom module pulls
    in (the command line imports its command modules, and bpfloom some of its
    dependencies, only when they are used)."""
    code = (
        "import importlib, json, pkgutil, sys; import bpfloom; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages("
        "bpfloom.__path__, 'bpfloom.')]; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] != 'bpfloom')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return out.strip()


def _child_env(preload: str, drop: str) -> dict[str, str]:
    return {**os.environ, "BPFLOOM_TEST_PRELOAD": preload, "BPFLOOM_TEST_DROP": drop}


@pytest.mark.kernel
@pytest.mark.parametrize("who", ["nobody", "root without CAP_BPF"])
def test_unprivileged_load_raises_permission_error(preload: str, who: str) -> None:
    obj = str(bpf_object("shapes"))
    if who == "nobody":
        cmd = [sys.executable, "-c", _LOAD_AS_CHILD, obj]
        env, uid = _child_env(preload, "setuid"), NOBODY
    else:
        # Still uid 0, but capsh removes CAP_SYS_ADMIN, CAP_BPF and CAP_PERFMON from the
        # bounding set, so the exec'd interpreter has none of them.
        if shutil.which("capsh") is None:
            pytest.skip("capsh (libcap2-bin) is not installed")
        cmd = [
            "capsh",
            "--drop=cap_sys_admin,cap_bpf,cap_perfmon",
            "--",
            "-c",
            'exec "$0" -c "$1" "$2"',
            sys.executable,
            _LOAD_AS_CHILD,
            obj,
        ]
        env, uid = _child_env(preload, "none"), 0
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/", env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["uid"] == uid
    assert result["caps"] & ((1 << _env.CAP_SYS_ADMIN) | (1 << _env.CAP_BPF)) == 0
    assert result["error"] == "BpfPermissionError", result
    assert result["is_permission_error"]
    assert "root" in result["message"]
    assert "CAP_BPF" in result["message"]


@pytest.mark.kernel
def test_network_program_without_cap_net_admin_names_the_capability(preload: str) -> None:
    """CAP_BPF and CAP_PERFMON pass the up-front check, but an XDP program also needs
    CAP_NET_ADMIN: the error says so, naming the program and what the caller has."""
    if shutil.which("capsh") is None:
        pytest.fail("capsh (libcap2-bin) is not installed; scripts/setup.sh installs it")
    cmd = [
        "capsh",
        "--drop=cap_sys_admin,cap_net_admin",
        "--",
        "-c",
        'exec "$0" -c "$1" "$2"',
        sys.executable,
        _LOAD_AS_CHILD,
        str(bpf_object("net")),
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, cwd="/", env=_child_env(preload, "none")
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["caps"] & (1 << _env.CAP_BPF) and result["caps"] & (1 << _env.CAP_PERFMON)
    assert result["error"] == "BpfPermissionError", result
    message = result["message"]
    assert "program type xdp" in message or "program type sched_cls" in message, message
    assert "need CAP_NET_ADMIN" in message
    assert "the caller has CAP_PERFMON, CAP_BPF" in message


@pytest.mark.kernel
def test_cli_run_unprivileged_exits_1_with_one_line_error(preload: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _CLI_AS_CHILD, "run", str(bpf_object("shapes")), "--duration", "1"],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env=_child_env(preload, "setuid"),
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bpfloom: error:")
    assert "root" in lines[0]
    assert "CAP_BPF" in lines[0]
    assert proc.stdout == ""


# --- tracefs and bpffs --------------------------------------------------------------------


def _mounts() -> dict[str, str]:
    with open("/proc/self/mounts") as f:
        return {parts[1]: parts[2] for parts in (line.split() for line in f) if len(parts) > 2}


@pytest.mark.kernel
def test_prepare_mounts_tracefs_and_bpffs() -> None:
    _env.prepare()
    mounts = _mounts()
    assert mounts.get("/sys/kernel/tracing") == "tracefs"
    assert mounts.get("/sys/fs/bpf") == "bpf"
    assert os.path.isdir("/sys/kernel/tracing/events/syscalls")


_MOUNT_NAMESPACE_SCRIPT = textwrap.dedent(
    """
    set -e
    for m in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/fs/bpf; do
        while grep -q " $m " /proc/self/mounts; do umount -l "$m"; done
    done
    echo "BEFORE: $(grep -c -E ' /sys/kernel/tracing | /sys/fs/bpf ' /proc/self/mounts || true)"
    exec "$PYTHON" -c "$CHILD" "$OBJECT"
    """
)

_MOUNT_NAMESPACE_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import bpfloom
    with bpfloom.load(sys.argv[1], globals={"target_pid": os.getpid()}) as obj:
        rb = obj.ring_buffer("rb")
        link = obj.program("on_tracepoint").attach_tracepoint("syscalls", "sys_enter_getppid")
        os.getppid()
        events = []
        for _ in range(20):
            events += [ev.pid for ev in rb.read(timeout=0.5)]
            if events:
                break
        link.close()
    mounts = {}
    for line in open("/proc/self/mounts"):
        parts = line.split()
        if parts[1] in ("/sys/kernel/tracing", "/sys/fs/bpf"):
            mounts[parts[1]] = parts[2]
    modes = {m: oct(os.stat(m).st_mode & 0o7777) for m in mounts}
    print("AFTER: " + json.dumps(
        {"mounts": mounts, "modes": modes, "events": events, "pid": os.getpid()}
    ))
    """
)


@pytest.mark.kernel
def test_missing_tracefs_and_bpffs_are_mounted_in_a_private_namespace() -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    host_before = _mounts()
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNT_NAMESPACE_SCRIPT],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHON": sys.executable,
            "CHILD": _MOUNT_NAMESPACE_CHILD,
            "OBJECT": str(bpf_object("tracepoint")),
        },
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "BEFORE: 0" in lines, "the namespace still had tracefs/bpffs mounted"
    after = json.loads(next(x for x in lines if x.startswith("AFTER: "))[len("AFTER: ") :])
    assert after["mounts"] == {"/sys/kernel/tracing": "tracefs", "/sys/fs/bpf": "bpf"}
    # Only root may pin objects in (or read) the bpffs we mount, as systemd mounts it
    # (the kernel keeps the sticky bit on bpffs' root: kernel/bpf/inode.c).
    assert after["modes"]["/sys/fs/bpf"] == "0o1700"
    assert after["modes"]["/sys/kernel/tracing"] == "0o700"
    assert after["events"] == [after["pid"]]
    # The host's mounts were never touched.
    host_after = _mounts()
    for target in ("/sys/kernel/tracing", "/sys/fs/bpf"):
        assert host_after.get(target) == host_before.get(target)
