"""Shared test helpers.

``compile_bpf`` builds a BPF object from C source with the project's clang flags, so
tests exercise real compiler output (BTF, DWARF) instead of hand-made fixtures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import pytest

# Fixtures of toolrun.py (start_tool) and natsserver.py (nats_server) are available to
# every test module.
pytest_plugins = ["toolrun", "natsserver"]

CLANG = "clang-16"
BPF_CFLAGS = (
    "-g",
    "-O2",
    "-target",
    "bpf",
    "-D__TARGET_ARCH_x86",
    "-I/usr/include/x86_64-linux-gnu",
)


def compile_bpf(
    source: str,
    tmp_path: Path,
    *,
    name: str = "prog",
    headers: Mapping[str, str] | None = None,
    extra_flags: Sequence[str] = (),
    debug: bool = True,
) -> Path:
    """Compile ``source`` to ``tmp_path/<name>.bpf.o`` and return that path.

    ``headers`` are written next to the source first (``{"shapes.h": "..."}``), so the
    source can ``#include "shapes.h"``. ``extra_flags`` go after the standard flags
    (e.g. ``-gdwarf-4``); ``debug=False`` drops ``-g`` (no BTF, no DWARF). Fails the
    test with the compiler's message if clang rejects the source.
    """
    tmp_path = Path(tmp_path)
    for header, text in (headers or {}).items():
        (tmp_path / header).write_text(text)
    src = tmp_path / f"{name}.bpf.c"
    obj = tmp_path / f"{name}.bpf.o"
    src.write_text(source)
    flags = [f for f in BPF_CFLAGS if debug or f != "-g"]
    cmd = [CLANG, *flags, *extra_flags, "-c", str(src), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr}", pytrace=False)
    return obj


@pytest.fixture(name="compile_bpf")
def _compile_bpf_fixture() -> Callable[..., Path]:
    """The ``compile_bpf`` function, for tests that prefer a fixture to an import."""
    return compile_bpf


# --- kernel tests -----------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TESTS_BPF = ROOT / "tests" / "bpf"


def _kernel_unavailable() -> str | None:
    """Why real BPF cannot run here, or None when it can."""
    import os

    if os.geteuid() != 0:
        return "kernel tests need root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if not (TESTS_BPF / "shapes.bpf.o").exists():
        return "test BPF objects are not built (run `make bpf`)"
    return None


@pytest.fixture(autouse=True)
def _require_kernel(request: pytest.FixtureRequest) -> None:
    """Tests marked ``kernel`` need root and BPF. Where BPFLOOM_REQUIRE_KERNEL is set
    (CI), a missing kernel fails them instead of skipping them."""
    import os

    if request.node.get_closest_marker("kernel") is None:
        return
    reason = _kernel_unavailable()
    if reason is None:
        return
    if os.environ.get("BPFLOOM_REQUIRE_KERNEL"):
        pytest.fail(f"BPF is required here (BPFLOOM_REQUIRE_KERNEL is set): {reason}")
    pytest.skip(reason)


def bpf_object(name: str) -> Path:
    """Path of a test object built by `make bpf` (``"shapes"`` → tests/bpf/shapes.bpf.o,
    ``"ecli/execsnoop"`` → tests/bpf/ecli/execsnoop.bpf.o)."""
    return TESTS_BPF / f"{name}.bpf.o"


def kernel_prog_ids() -> set[int]:
    """Ids of every BPF program loaded in the kernel now (bpftool)."""
    import json

    out = subprocess.run(
        ["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


def kernel_link_ids() -> set[int]:
    """Ids of every BPF link in the kernel now (bpftool)."""
    import json

    out = subprocess.run(
        ["bpftool", "-j", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


def kernel_map_ids() -> set[int]:
    """Ids of every BPF map in the kernel now (bpftool)."""
    import json

    out = subprocess.run(
        ["bpftool", "-j", "map", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {int(p["id"]) for p in json.loads(out or "[]")}


_FD_KINDS = {
    "anon_inode:bpf-prog": "prog",
    "anon_inode:bpf-map": "map",
    "anon_inode:bpf_link": "link",
    "anon_inode:btf": "btf",
}


def own_bpf_ids(pid: int | str = "self") -> dict[str, set[int]]:
    """Kernel ids of the BPF programs, maps, links and BTF objects this process (or
    process ``pid``) holds file descriptors for (from /proc/PID/fdinfo)."""
    ids: dict[str, set[int]] = {kind: set() for kind in _FD_KINDS.values()}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return ids  # the process is gone
    for fd in fds:
        try:
            kind = _FD_KINDS.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            if kind is None:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith(f"{kind}_id:"):
                        ids[kind].add(int(line.split()[1]))
        except OSError:
            continue  # the fd was closed while we looked (the listing's own fd, too)
    return ids


def kernel_ids() -> dict[str, set[int]]:
    return {"prog": kernel_prog_ids(), "map": kernel_map_ids(), "link": kernel_link_ids()}


def new_ids(before: dict[str, set[int]]) -> dict[str, set[int]]:
    now = own_bpf_ids()
    return {kind: now[kind] - before[kind] for kind in now}


def assert_gone_from_kernel(ids: dict[str, set[int]], deadline: float = 10.0) -> None:
    """Assert that none of ``ids`` (prog/map/link) stays in the kernel.

    Closing the last fd only drops the last reference: the kernel frees programs and
    maps after an RCU grace period or from a workqueue (``bpf_map_put`` ->
    ``bpf_map_free_deferred``), so a freed id can still be listed for a moment. Poll
    until it is gone; the deadline only bounds a real leak, it measures nothing.
    """
    end = time.monotonic() + deadline
    while True:
        now = kernel_ids()
        left = {kind: ids.get(kind, set()) & now[kind] for kind in now}
        if not any(left.values()) or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert not any(left.values()), f"still in the kernel after close(): {left}"


# --- network tests ------------------------------------------------------------------------


class Veth(NamedTuple):
    """A veth pair made by the ``veth`` fixture: ``local`` (in this namespace, address
    ``local_ip``) and its peer (address ``peer_ip``) in network namespace ``ns``."""

    local: str
    ns: str
    local_ip: str
    peer_ip: str


def ip_command(*args: str) -> str:
    """Run ``ip ARGS``; its stdout (fails the test's call with CalledProcessError)."""
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def veth() -> Iterator[Veth]:
    """A veth pair whose far end sits in a network namespace of its own.

    Names and the /30 subnet (in 10.248.0.0/16) derive from this process's pid, so
    test runs side by side neither clash on names nor answer each other's pings.
    """
    tag = os.getpid() % 100000
    subnet = os.getpid() % 16384
    base = f"10.248.{subnet // 64}.{(subnet % 64) * 4}"
    prefix = base.rsplit(".", 1)[0]
    last = int(base.rsplit(".", 1)[1])
    local_ip, peer_ip = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
    ns, local, peer = f"bpfloom-{tag}", f"bfl{tag}a", f"bfl{tag}b"
    ip_command("netns", "add", ns)
    try:
        ip_command("link", "add", local, "type", "veth", "peer", "name", peer)
        ip_command("link", "set", peer, "netns", ns)
        ip_command("addr", "add", f"{local_ip}/30", "dev", local)
        ip_command("link", "set", local, "up")
        ip_command("-n", ns, "addr", "add", f"{peer_ip}/30", "dev", peer)
        ip_command("-n", ns, "link", "set", peer, "up")
        ip_command("-n", ns, "link", "set", "lo", "up")
        yield Veth(local, ns, local_ip, peer_ip)
    finally:
        subprocess.run(["ip", "link", "del", local], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


# --- pipeline tests -----------------------------------------------------------------------

_threads_before: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _threads_baseline() -> None:
    """Threads alive before each test, so that a thread some earlier (failed) test left
    behind is not blamed on this one (see ``pipeline_threads``)."""
    _threads_before.clear()
    _threads_before.update(threading.enumerate())


def pipeline_threads() -> list[threading.Thread]:
    """Pipeline threads (``bpfloom-*``) started by this test and still alive."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("bpfloom-") and t not in _threads_before
    ]


def assert_exact(stats: dict[str, Any], produced: int) -> None:
    """Everything produced was handled or dropped (counted), exactly:
    produced == received + dropped_kernel == handled + dropped_kernel + dropped_queue."""
    assert stats["produced"] == produced, stats
    assert stats["received"] + stats["dropped_kernel"] == produced, stats
    assert stats["handled"] + stats["dropped_kernel"] + stats["dropped_queue"] == produced, stats


@pytest.fixture
def make_pipeline() -> Iterator[Callable[..., Any]]:
    """``Pipeline(...)``, stopped at teardown whatever the test did (and whatever
    ``stop()`` raises), so a failing test leaves no worker threads behind."""
    from bpfloom import Pipeline

    made: list[Pipeline] = []

    def make(*args: Any, **kwargs: Any) -> Pipeline:
        pipeline = Pipeline(*args, **kwargs)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        with contextlib.suppress(BaseException):
            pipeline.stop(timeout=2.0)


# --- uprobe targets -----------------------------------------------------------------------


class WaitingTarget:
    """``tests/bpf/uprobe_target.c`` (built) started with ``--wait``: it has printed
    "ready PID" and calls the probed function ``calls`` times when ``go()`` is called."""

    def __init__(self, binary: Path, calls: int) -> None:
        self.proc = subprocess.Popen(
            [str(binary), str(calls), "--wait"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().split()
        assert ready[0] == "ready", ready
        self.pid = int(ready[1])
        assert self.pid == self.proc.pid

    def go(self) -> str:
        """Let it run; its last line ("done N")."""
        out, _ = self.proc.communicate("go\n", timeout=60)
        assert self.proc.returncode == 0
        return out.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


# --- bounded work -------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by ``time_limit``'s alarm when a call runs far longer than its input
    justifies. A BaseException, so that a broad ``except Exception`` cannot hide it."""


@contextlib.contextmanager
def time_limit(seconds: float = 10.0) -> Iterator[None]:
    """Fail with ``Hang`` instead of hanging (SIGALRM; the main thread only)."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"no result after {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- Go programs --------------------------------------------------------------------------

TESTS_GO = ROOT / "tests" / "go"


def go_build(source: Path, out: Path, *, cache: Path, ldflags: str = "") -> Path:
    """Build the one-file Go program ``source`` into ``out`` with the installed ``go``.

    Offline and independent of the user's Go set-up: GOPATH mode (standard library
    only, no go.mod, no module downloads), no cgo (no C compiler needed), no go env file,
    and ``cache`` for GOCACHE/GOPATH. ``ldflags`` go to ``-ldflags`` (``"-s -w"`` strips).
    Skips the test when go is missing (fails it where BPFLOOM_REQUIRE_KERNEL is set) and
    fails it with go's message when the build fails.
    """
    import shutil

    go = shutil.which("go")
    if go is None:
        if os.environ.get("BPFLOOM_REQUIRE_KERNEL"):
            pytest.fail("go is not installed (scripts/setup.sh installs golang-go)")
        pytest.skip("go is not installed")
    env = {
        **os.environ,
        "GOCACHE": str(cache / "cache"),
        "GOPATH": str(cache / "gopath"),
        "GO111MODULE": "off",
        "GOFLAGS": "",
        "GOENV": "off",
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    }
    cmd = [go, "build", "-o", str(out)]
    if ldflags:
        cmd.append(f"-ldflags={ldflags}")
    cmd.append(str(source))
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr}", pytrace=False)
    return out
