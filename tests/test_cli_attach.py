"""``bpfloom run`` attaching what a SEC() name cannot say.

XDP and tc programs go on an interface given with ``--interface`` (``--xdp-mode``,
``--tc-hook``) or by ecli's attach comments in the C source; uprobes whose SEC names a
binary that is not there are retargeted with ``--binary``/``--pid``; USDT programs
attach by their SEC or retargeted the same way. Everything runs for real: pings with a
known ICMP echo id across a veth pair into a namespace the test makes, C programs the
test builds with gcc. Counts are exact, and nothing of ours stays on the interface or
in the kernel afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    ROOT,
    TESTS_BPF,
    Veth,
    WaitingTarget,
    assert_gone_from_kernel,
    bpf_object,
    compile_bpf,
    ip_command,
    own_bpf_ids,
)
from toolrun import TIMEOUT, Result, ToolRun, one_error_line, run_tool_cli

pytestmark = pytest.mark.kernel

INCLUDES = (f"-I{ROOT / 'build'}",)
ECHO_ID = 0x4000 + os.getpid() % 0x4000  # our pings' ICMP echo identifier
PINGS = 5
XDP_HOOK, TC_HOOK = 1, 2
ECHO_REQUEST, ECHO_REPLY = 8, 0
XDP_ATTACHED = {"native": 1, "skb": 2}  # XDP_ATTACHED_DRV / _SKB in `ip -j link`

# Both programs report every ICMP echo request or reply they see as one ring buffer
# event. tc comes first in the object: when the XDP program then fails to attach, the
# tc filter already made must be taken down again.
NET_SOURCE = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define PROTO_ICMP 1
#define TC_ACT_OK 0

struct icmp_event {
	__u32 ifindex;
	__u16 echo_id;
	__u16 seq;
	__u8 icmp_type;
	__u8 hook; /* 1 = XDP, 2 = tc */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

static __always_inline void report(void *data, void *data_end, __u32 ifindex, __u8 hook)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct icmphdr *icmp = (void *)(ip + 1);
	struct icmp_event *e;

	if ((void *)(icmp + 1) > data_end)
		return;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 || ip->protocol != PROTO_ICMP)
		return;
	if (icmp->type != 8 && icmp->type != 0)
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	e->ifindex = ifindex;
	e->echo_id = bpf_ntohs(icmp->un.echo.id);
	e->seq = bpf_ntohs(icmp->un.echo.sequence);
	e->icmp_type = icmp->type;
	e->hook = hook;
	bpf_ringbuf_submit(e, 0);
}

@@TC@@
SEC("tc")
int icmp_tc(struct __sk_buff *skb)
{
	report((void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex, 2);
	return TC_ACT_OK;
}

@@XDP@@
SEC("xdp")
int icmp_xdp(struct xdp_md *ctx)
{
	report((void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->ingress_ifindex, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


def net_source(tc: str = "", xdp: str = "") -> str:
    """NET_SOURCE with ``tc`` and ``xdp`` (attach comments) before the programs."""
    return NET_SOURCE.replace("@@TC@@", tc).replace("@@XDP@@", xdp)


@pytest.fixture(scope="module")
def net_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ICMP object without attach comments."""
    return compile_bpf(
        net_source(), tmp_path_factory.mktemp("net"), name="icmp", extra_flags=INCLUDES
    )


# --- helpers ----------------------------------------------------------------------------


@pytest.fixture
def start(start_tool: Callable[..., ToolRun]) -> Callable[..., ToolRun]:
    """``start(*args)``: ``bpfloom run ARGS`` in the background (killed after a failed
    test); readiness is each test's own ``wait_for``."""
    return lambda *args: start_tool("run", *args, ready=False)


def wait_for(run: ToolRun, ready: Callable[[], bool], what: str) -> dict[str, set[int]]:
    """Wait until ``ready()`` (``bpfloom run`` has attached); then the kernel ids of its
    BPF objects. Fails if it exits first; the deadline only bounds a hang."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if run.proc.poll() is not None:
            pytest.fail(
                f"bpfloom run exited ({run.proc.returncode}) before {what}:\n{run.stderr_now()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"bpfloom run never got to {what}:\n{run.stderr_now()}")
        time.sleep(0.02)
    return own_bpf_ids(run.proc.pid)


def links_held(run: ToolRun, count: int) -> Callable[[], bool]:
    return lambda: len(own_bpf_ids(run.proc.pid)["link"]) >= count


def xdp_on(interface: str) -> dict[str, Any] | None:
    """The XDP program attached to ``interface`` (``ip -j link``), or None."""
    info: dict[str, Any] = json.loads(ip_command("-j", "link", "show", "dev", interface))[0]
    xdp: dict[str, Any] | None = info.get("xdp")
    return xdp


def tc(*args: str) -> str:
    return subprocess.run(["tc", *args], check=True, capture_output=True, text=True).stdout


def tc_filters(interface: str, hook: str) -> list[dict[str, Any]]:
    """The tc filters on ``interface``'s ``hook`` that carry options (a bpf program)."""
    out = tc("-j", "filter", "show", "dev", interface, hook).strip()
    return [f for f in json.loads(out or "[]") if "options" in f]


def attached(interface: str, hook: str) -> Callable[[], bool]:
    """Both programs are on ``interface``: XDP, and tc on ``hook``."""

    def check() -> bool:
        xdp = xdp_on(interface)
        names = [f["options"].get("bpf_name", "") for f in tc_filters(interface, hook)]
        return bool(xdp and xdp["prog"]["name"] == "icmp_xdp") and any(
            n.startswith("icmp_tc") for n in names
        )

    return check


def assert_nothing_left(interface: str) -> None:
    """No XDP program, tc filter or clsact qdisc stays on ``interface``."""
    assert xdp_on(interface) is None
    assert tc_filters(interface, "ingress") == []
    assert tc_filters(interface, "egress") == []
    assert "clsact" not in tc("qdisc", "show", "dev", interface)


def ping(veth: Veth, count: int = PINGS) -> None:
    """``count`` ICMP echo requests with id ECHO_ID from the namespace; all answered."""
    cmd = ["ping", "-c", str(count), "-i", "0.05", "-W", "2", "-e", str(ECHO_ID), veth.local_ip]
    done = subprocess.run(
        ["ip", "netns", "exec", veth.ns, *cmd], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{count} packets transmitted, {count} received" in done.stdout, done.stdout


def our_echoes(result: Result) -> list[tuple[int, int, int]]:
    """(hook, ICMP type, sequence) of every event of our pings, sorted."""
    return sorted(
        (ev["hook"], ev["icmp_type"], ev["seq"])
        for ev in result.json_lines()
        if ev["echo_id"] == ECHO_ID
    )


def expected(hook: str, count: int = PINGS) -> list[tuple[int, int, int]]:
    """Each request crosses XDP and, with tc on ingress, tc; each reply tc egress."""
    tc_type = ECHO_REQUEST if hook == "ingress" else ECHO_REPLY
    seqs = range(1, count + 1)
    return sorted(
        [(XDP_HOOK, ECHO_REQUEST, s) for s in seqs] + [(TC_HOOK, tc_type, s) for s in seqs]
    )


def finish_clean(run: ToolRun) -> Result:
    """Ctrl-C; the run must end with status 0, every event received printed."""
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = [line for line in result.stderr.splitlines() if " events received; " in line]
    assert summary == [
        f"bpfloom: {len(result.json_lines())} events received; lost: 0 in "
        "the kernel, 0 in user space"
    ], result.stderr
    return result


# --- XDP and tc from the command line -----------------------------------------------------


@pytest.mark.parametrize(
    ("xdp_mode", "tc_hook"),
    [(None, None), ("skb", "ingress"), ("native", "egress"), ("auto", "egress")],
    ids=["defaults", "skb-ingress", "native-egress", "auto-egress"],
)
def test_interface_option_attaches_xdp_and_tc(
    start: Callable[..., ToolRun],
    tmp_path: Path,
    veth: Veth,
    net_obj: Path,
    xdp_mode: str | None,
    tc_hook: str | None,
) -> None:
    args = [str(net_obj), "--json", "--interface", veth.local]
    args += ["--xdp-mode", xdp_mode] if xdp_mode else []
    args += ["--tc-hook", tc_hook] if tc_hook else []
    hook = tc_hook or "ingress"
    run = start(*args)
    ids = wait_for(run, attached(veth.local, hook), "attaching")
    xdp = xdp_on(veth.local)
    assert xdp is not None
    # veth has native XDP: auto picks it
    assert xdp["mode"] == XDP_ATTACHED["skb" if xdp_mode == "skb" else "native"]
    ping(veth)
    result = finish_clean(run)
    assert our_echoes(result) == expected(hook)
    ifindex = int(json.loads(ip_command("-j", "link", "show", "dev", veth.local))[0]["ifindex"])
    assert {ev["ifindex"] for ev in result.json_lines()} == {ifindex}
    assert_nothing_left(veth.local)
    assert_gone_from_kernel(ids)


def test_offload_mode_fails_and_leaves_nothing(veth: Veth, net_obj: Path) -> None:
    """veth cannot run XDP in hardware: one line of error, and the tc filter attached
    before the XDP program failed is gone with its clsact qdisc."""
    result = run_tool_cli("run", str(net_obj), "--interface", veth.local, "--xdp-mode", "offload")
    one_error_line(result, "icmp_xdp", veth.local, "offload")
    assert_nothing_left(veth.local)


def test_missing_interface_is_one_line(net_obj: Path) -> None:
    result = run_tool_cli("run", str(net_obj), "--interface", "nosuchif0", "--duration", "1")
    one_error_line(result, "no network interface 'nosuchif0'")


def test_bad_xdp_mode_is_a_usage_error(net_obj: Path) -> None:
    result = run_tool_cli("run", str(net_obj), "--interface", "lo", "--xdp-mode", "turbo")
    one_error_line(result, "--xdp-mode", "'turbo' is not one of", status=2)


@pytest.mark.parametrize(
    ("option", "value", "kind"),
    [
        ("--interface", "lo", "XDP or tc"),
        ("--xdp-mode", "skb", "XDP"),
        ("--tc-hook", "egress", "tc"),
        ("--binary", "/bin/true", "uprobe or USDT"),
        ("--pid", "1", "uprobe or USDT"),
    ],
)
def test_option_for_no_program_is_a_usage_error(option: str, value: str, kind: str) -> None:
    result = run_tool_cli("run", str(bpf_object("ecli/exitsnoop")), option, value)
    one_error_line(result, option, f"has no {kind} program", status=2)


def test_without_interface_the_note_says_what_to_do(net_obj: Path) -> None:
    result = run_tool_cli("run", str(net_obj), "--duration", "1")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("bpfloom: note:")]
    assert len(notes) == 2, result.stderr
    for note, name, kind in zip(notes, ["icmp_tc", "icmp_xdp"], ["a tc", "an XDP"], strict=True):
        assert f"program '{name}'" in note
        assert f"{kind} program needs a network interface" in note
        assert "--interface IF" in note


def test_nothing_attached_and_nothing_to_read_is_an_error() -> None:
    """net.bpf.o only counts into an array: with no interface, nothing would happen."""
    result = run_tool_cli("run", str(bpf_object("net")), "--duration", "1")
    one_error_line(result, "nothing to run", "'count_xdp'", "'count_tc'", "--interface IF")


# --- XDP and tc from ecli's attach comments -------------------------------------------------


def _ifindex(interface: str) -> int:
    return int(json.loads(ip_command("-j", "link", "show", "dev", interface))[0]["ifindex"])


def annotated_object(tmp_path: Path, tc: str, xdp: str, where: str) -> tuple[Path, Path]:
    """Compile NET_SOURCE with attach comments; put the object where the run must find
    the source through the object's DWARF (``"dwarf"``: the object alone elsewhere) or
    beside it (``"beside"``: both moved away from where they were compiled). Returns
    (object, source) as run will see them."""
    build = tmp_path / "build"
    build.mkdir()
    obj = compile_bpf(net_source(tc, xdp), build, name="icmp", extra_flags=INCLUDES)
    src = build / "icmp.bpf.c"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(obj, elsewhere / obj.name)
    if where == "beside":
        shutil.move(src, elsewhere / src.name)
        src = elsewhere / src.name
    return elsewhere / obj.name, src


@pytest.mark.parametrize("where", ["dwarf", "beside"])
def test_attach_comments_place_the_programs(
    start: Callable[..., ToolRun], tmp_path: Path, veth: Veth, where: str
) -> None:
    ifindex = _ifindex(veth.local)
    obj, _ = annotated_object(
        tmp_path,
        tc=f'/// @tchook {{"ifindex": {ifindex}, "attach_point": "BPF_TC_EGRESS"}}\n'
        '/// @tcopts {"handle": 7, "priority": 3}',
        xdp=f'/// @ifindex {ifindex}\n/// @flags 2\n/// @xdpopts {{"old_prog_fd": 0}}',
        where=where,
    )
    run = start(str(obj), "--json")
    ids = wait_for(run, attached(veth.local, "egress"), "attaching")
    xdp = xdp_on(veth.local)
    assert xdp is not None and xdp["mode"] == XDP_ATTACHED["skb"]  # @flags 2
    (egress,) = tc_filters(veth.local, "egress")
    assert (egress["pref"], egress["options"]["handle"]) == (3, "0x7")  # @tcopts
    ping(veth)
    result = finish_clean(run)
    assert "bpfloom: note:" not in result.stderr
    assert our_echoes(result) == expected("egress")
    assert_nothing_left(veth.local)
    assert_gone_from_kernel(ids)


def test_command_line_wins_over_attach_comments(
    start: Callable[..., ToolRun], tmp_path: Path, veth: Veth
) -> None:
    """Comments naming an interface that does not exist, egress and skb mode, overridden
    by --interface, --tc-hook ingress and --xdp-mode native; @tcopts still apply."""
    missing = 999_999
    obj, _ = annotated_object(
        tmp_path,
        tc=f'/// @tchook {{"ifindex": {missing}, "attach_point": "BPF_TC_EGRESS"}}\n'
        '/// @tcopts {"handle": 7, "priority": 3}',
        xdp=f"/// @ifindex {missing}\n/// @flags 2",
        where="beside",
    )
    args = ["--interface", veth.local, "--tc-hook", "ingress", "--xdp-mode", "native"]
    run = start(str(obj), "--json", *args)
    ids = wait_for(run, attached(veth.local, "ingress"), "attaching")
    xdp = xdp_on(veth.local)
    assert xdp is not None and xdp["mode"] == XDP_ATTACHED["native"]
    (ingress,) = tc_filters(veth.local, "ingress")
    assert (ingress["pref"], ingress["options"]["handle"]) == (3, "0x7")
    ping(veth)
    result = finish_clean(run)
    assert our_echoes(result) == expected("ingress")
    assert_nothing_left(veth.local)
    assert_gone_from_kernel(ids)


def test_comment_naming_a_missing_interface_is_one_line(tmp_path: Path) -> None:
    obj, src = annotated_object(tmp_path, tc="", xdp="/// @ifindex 999999", where="beside")
    line = 1 + net_source(xdp="/// @ifindex 999999").splitlines().index("/// @ifindex 999999")
    result = run_tool_cli("run", str(obj), "--duration", "1")
    one_error_line(result, "no network interface with index 999999", f"{src}:{line}")


@pytest.mark.parametrize(
    ("comment", "why"),
    [
        ('/// @tchook {"ifindex": 1, "attach_point": "BPF_TC_SIDEWAYS"}', "attach_point must"),
        ("/// @tchook {ifindex: 1}", "expected a JSON object"),
        ('/// @tchook {"ifindx": 1}', "unknown key"),
        ('/// @tcopts {"handle": 1, "priority": 70000}', "priority must be"),
        ("/// @tcopts [1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_tc_comment_names_file_and_line(tmp_path: Path, comment: str, why: str) -> None:
    obj, src = annotated_object(tmp_path, tc=comment, xdp="", where="beside")
    line = 1 + net_source(tc=comment).splitlines().index(comment)
    kind = comment.split()[1]
    result = run_tool_cli("run", str(obj), "--duration", "1")
    one_error_line(result, f"{src}:{line}: malformed {kind} attach comment", why)


@pytest.mark.parametrize(
    ("comment", "why"),
    [
        ("/// @ifindex eth0", "positive interface index"),
        ("/// @ifindex 0", "positive interface index"),
        ("/// @flags 16", "XDP_FLAGS_REPLACE"),
        ("/// @flags 6", "more than one mode"),
        ("/// @flags 64", "unknown XDP flag bits 0x40"),
        ('/// @xdpopts {"old_prog_fd": 3}', "old_prog_fd must be 0"),
    ],
)
def test_malformed_xdp_comment_names_file_and_line(tmp_path: Path, comment: str, why: str) -> None:
    obj, src = annotated_object(tmp_path, tc="", xdp=comment, where="beside")
    line = 1 + net_source(xdp=comment).splitlines().index(comment)
    kind = comment.split()[1]
    result = run_tool_cli("run", str(obj), "--duration", "1")
    one_error_line(result, f"{src}:{line}: malformed {kind} attach comment", why)


# --- uprobes retargeted -------------------------------------------------------------------

UPROBE_SOURCE = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct call_event {
	__u32 pid;
	__s32 arg;  /* entry: the argument */
	__s32 ret;  /* return: the return value */
	__u8 is_return;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

static __always_inline int emit(__s32 arg, __s32 ret, __u8 is_return)
{
	struct call_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->arg = arg;
	e->ret = ret;
	e->is_return = is_return;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* The binary in these SECs does not exist: --binary says which one to probe. */
SEC("uprobe//./does-not-exist:bpfloom_probe_me")
int BPF_KPROBE(on_entry, int x)
{
	return emit(x, 0, 0);
}

SEC("uretprobe//./does-not-exist:bpfloom_probe_me")
int BPF_KRETPROBE(on_return, int ret)
{
	return emit(0, ret, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


@pytest.fixture(scope="module")
def uprobe_obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(
        UPROBE_SOURCE, tmp_path_factory.mktemp("uprobe"), name="calls", extra_flags=INCLUDES
    )


@pytest.fixture(scope="module")
def uprobe_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/bpf/uprobe_target.c built with gcc."""
    out = tmp_path_factory.mktemp("target") / "uprobe_target"
    subprocess.run(
        ["gcc", "-O1", "-g", "-o", str(out), str(TESTS_BPF / "uprobe_target.c")],
        check=True,
        capture_output=True,
    )
    return out


def calls_of(result: Result, pid: int) -> list[tuple[int, int, int]]:
    """(is_return, arg, ret) of ``pid``'s events, in order."""
    return [
        (ev["is_return"], ev["arg"], ev["ret"]) for ev in result.json_lines() if ev["pid"] == pid
    ]


def uprobe_calls(count: int) -> list[tuple[int, int, int]]:
    """bpfloom_probe_me(i) for i < count: an entry with i, a return with 2i + 1."""
    out: list[tuple[int, int, int]] = []
    for i in range(count):
        out += [(0, i, 0), (1, 0, 2 * i + 1)]
    return out


def test_binary_retargets_uprobes(
    start: Callable[..., ToolRun], tmp_path: Path, uprobe_obj: Path, uprobe_target: Path
) -> None:
    run = start(str(uprobe_obj), "--json", "--binary", str(uprobe_target))
    ids = wait_for(run, links_held(run, 2), "attaching both probes")
    child = subprocess.Popen([str(uprobe_target), "5"], stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0 and out.strip() == "done 25"
    result = finish_clean(run)
    assert calls_of(result, child.pid) == uprobe_calls(5)
    assert_gone_from_kernel(ids)


def test_pid_limits_retargeted_uprobes(
    start: Callable[..., ToolRun], tmp_path: Path, uprobe_obj: Path, uprobe_target: Path
) -> None:
    traced = WaitingTarget(uprobe_target, 3)
    try:
        # the options before OBJECT: --binary's value is not taken for the object
        args = ["--json", "--binary", str(uprobe_target), "--pid", str(traced.pid)]
        run = start(*args, str(uprobe_obj))
        wait_for(run, links_held(run, 2), "attaching both probes")
        other = subprocess.Popen([str(uprobe_target), "4"], stdout=subprocess.DEVNULL)
        assert other.wait(timeout=TIMEOUT) == 0
        assert traced.go() == "done 9"
        result = finish_clean(run)
    finally:
        traced.kill()
    assert calls_of(result, traced.pid) == uprobe_calls(3)
    assert calls_of(result, other.pid) == []
    assert {ev["pid"] for ev in result.json_lines()} == {traced.pid}


def test_uprobe_sec_naming_a_missing_binary_says_to_pass_binary(uprobe_obj: Path) -> None:
    result = run_tool_cli("run", str(uprobe_obj), "--duration", "1")
    one_error_line(result, "no such file '/./does-not-exist'", "pass --binary PATH")


def test_binary_that_does_not_exist(uprobe_obj: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    result = run_tool_cli("run", str(uprobe_obj), "--binary", str(missing))
    one_error_line(result, f"binary '{missing}': no such file")


def test_binary_that_is_not_a_regular_file(uprobe_obj: Path, tmp_path: Path) -> None:
    result = run_tool_cli("run", str(uprobe_obj), "--binary", str(tmp_path))
    one_error_line(result, f"binary '{tmp_path}' is not a regular file")


def test_binary_without_the_symbol(uprobe_obj: Path) -> None:
    true = os.path.realpath(shutil.which("true") or "/bin/true")
    result = run_tool_cli("run", str(uprobe_obj), "--binary", true, "--duration", "1")
    one_error_line(result, "function 'bpfloom_probe_me' not found in", true)


# --- USDT ---------------------------------------------------------------------------------

USDT_TARGET = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/sdt.h>

/* usdt_target N [--wait]: fires probe bpfloom_test:tick(i, 3 * i) for i < N. */
int main(int argc, char **argv)
{
	long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1;

	if (argc > 2 && strcmp(argv[2], "--wait") == 0) {
		char line[64];

		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin) && ferror(stdin))
			return 1;
	}
	for (long i = 0; i < n; i++)
		DTRACE_PROBE2(bpfloom_test, tick, i, 3 * i);
	printf("done %ld\n", n);
	return 0;
}
"""

USDT_SOURCE = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/usdt.bpf.h>

struct tick_event {
	__u32 pid;
	__s64 i;
	__s64 triple;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} events SEC(".maps");

SEC("usdt/@@PATH@@:bpfloom_test:tick")
int BPF_USDT(on_tick, long i, long triple)
{
	struct tick_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e)
		return 0;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->i = i;
	e->triple = triple;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Names no binary or probe: reported and skipped. */
SEC("usdt")
int BPF_USDT(no_target, long i)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


@pytest.fixture(scope="module")
def usdt_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """USDT_TARGET built with gcc and <sys/sdt.h> (Debian: systemtap-sdt-dev)."""
    folder = tmp_path_factory.mktemp("usdt")
    src = folder / "usdt_target.c"
    src.write_text(USDT_TARGET)
    out = folder / "usdt_target"
    done = subprocess.run(
        ["gcc", "-O1", "-g", "-o", str(out), str(src)], capture_output=True, text=True
    )
    if "sys/sdt.h" in done.stderr:
        pytest.fail("<sys/sdt.h> is missing (scripts/setup.sh installs systemtap-sdt-dev)")
    assert done.returncode == 0, done.stderr
    return out


def usdt_object(tmp_path: Path, sec_path: str) -> Path:
    return compile_bpf(
        USDT_SOURCE.replace("@@PATH@@", sec_path), tmp_path, name="ticks", extra_flags=INCLUDES
    )


def ticks_of(result: Result, pid: int) -> list[tuple[int, int]]:
    return [(ev["i"], ev["triple"]) for ev in result.json_lines() if ev["pid"] == pid]


def test_usdt_attaches_by_section(
    start: Callable[..., ToolRun], tmp_path: Path, usdt_target: Path
) -> None:
    obj = usdt_object(tmp_path, str(usdt_target))
    run = start(str(obj), "--json")
    ids = wait_for(run, links_held(run, 1), "attaching the USDT probe")
    child = subprocess.Popen([str(usdt_target), "4"], stdout=subprocess.PIPE, text=True)
    out, _ = child.communicate(timeout=TIMEOUT)
    assert child.returncode == 0 and out.strip() == "done 4"
    result = finish_clean(run)
    assert ticks_of(result, child.pid) == [(i, 3 * i) for i in range(4)]
    notes = [line for line in result.stderr.splitlines() if line.startswith("bpfloom: note:")]
    assert notes == [
        "bpfloom: note: program 'no_target' (SEC 'usdt') names no attach target and was "
        "not attached"
    ]
    assert_gone_from_kernel(ids)


def test_usdt_retargeted_with_binary_and_pid(
    start: Callable[..., ToolRun], tmp_path: Path, usdt_target: Path
) -> None:
    obj = usdt_object(tmp_path, "./missing/usdt_target")
    copy = tmp_path / "copy_of_usdt_target"
    shutil.copy(usdt_target, copy)
    traced = WaitingTarget(copy, 3)
    try:
        args = ["--json", "--binary", str(copy), "--pid", str(traced.pid)]
        run = start(str(obj), *args)
        ids = wait_for(run, links_held(run, 1), "attaching the USDT probe")
        other = subprocess.Popen([str(copy), "5"], stdout=subprocess.DEVNULL)
        assert other.wait(timeout=TIMEOUT) == 0
        assert traced.go() == "done 3"
        result = finish_clean(run)
    finally:
        traced.kill()
    assert ticks_of(result, traced.pid) == [(0, 0), (1, 3), (2, 6)]
    assert {ev["pid"] for ev in result.json_lines()} == {traced.pid}
    assert_gone_from_kernel(ids)


def test_usdt_sec_naming_a_missing_binary_says_to_pass_binary(tmp_path: Path) -> None:
    obj = usdt_object(tmp_path, "./missing/usdt_target")
    result = run_tool_cli("run", str(obj), "--duration", "1")
    one_error_line(result, "no such file './missing/usdt_target'", "pass --binary PATH")


def test_usdt_probe_missing_from_binary(tmp_path: Path, uprobe_target: Path) -> None:
    obj = usdt_object(tmp_path, "./missing/usdt_target")
    result = run_tool_cli("run", str(obj), "--binary", str(uprobe_target), "--duration", "1")
    one_error_line(result, "'on_tick'", "USDT probe or binary not found")


def test_control_characters_of_a_sec_are_escaped_in_errors(tmp_path: Path) -> None:
    """A SEC name is text from the object: its terminal escape reaches stderr escaped."""
    source = UPROBE_SOURCE.replace("uprobe//./does-not-exist:", "uprobe/./\\x1b[2J/x:")
    obj = compile_bpf(source, tmp_path, name="escape", extra_flags=INCLUDES)
    result = run_tool_cli("run", str(obj), "--duration", "1")
    line = one_error_line(result, "no such file", "\\x1b[2J")
    assert "\x1b" not in line
