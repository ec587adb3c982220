"""The fleet through a real nats-server: agents (``--sink nats://``) and collectors.

Agents are real commands (``bpfloom opensnoop -p PID``, ``bpfloom execsnoop``) tracing
activity the test makes in its own child processes; every failed open goes to a path
of its own, so each record can be told from every other and counted exactly.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import bpfloom
from bpfloom.fleet.connection import NatsOptions
from bpfloom.rules import DEFAULT_RULES
from bpfloom.sinks.nats import NatsSink
from natsserver import NatsServer, self_signed_certificate
from toolrun import BPFLOOM, TIMEOUT, Result, one_error_line, run_tool_cli

pytestmark = pytest.mark.kernel

STATS = re.compile(r'^\{"stats": .*\}$', re.MULTILINE)


def stats_of(result: Result) -> dict[str, Any]:
    found = STATS.findall(result.stderr)
    assert len(found) == 1, result.stderr
    stats: dict[str, Any] = json.loads(found[0])["stats"]
    return stats


def opener(tag: str, count: int, pause_every: int = 0, pause: float = 0.0) -> str:
    """Code for a gated child: ``count`` failed opens, each of a path of its own."""
    return f"""
for i in range({count}):
    try:
        os.open("/nonexistent-{tag}/%d" % i, os.O_RDONLY)
    except FileNotFoundError:
        pass
    if {pause_every} and i % {pause_every} == 0:
        time.sleep({pause})
"""


def collect_all(url: str, subject: str, expected: int, durable: str) -> list[Any]:
    """Every record on ``subject``, read with ``bpfloom.collect`` until ``expected``
    came (or nothing more comes for 3 s)."""
    got: list[Any] = []
    lock = threading.Lock()

    def handle(ev: Any) -> None:
        with lock:
            got.append(ev)

    source = bpfloom.collect(url, subject, durable=durable)
    with source:
        pipeline = bpfloom.Pipeline(source, handle, executor="thread", workers=2)
        pipeline.start()
        deadline = time.monotonic() + TIMEOUT
        last, quiet_since = -1, time.monotonic()
        while len(got) < expected and time.monotonic() < deadline:
            if len(got) != last:
                last, quiet_since = len(got), time.monotonic()
            elif time.monotonic() - quiet_since > 3.0:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # anything beyond expected (a duplicate) shows up too
        stats = pipeline.stop()
    assert stats["handled"] == len(got)
    return got


def test_three_agents_publish_at_once_and_arrive_exactly_once(
    nats_server: NatsServer, start_tool: Any, gated_child: Any
) -> None:
    n = 3000
    hosts = ["alpha", "bravo", "charlie"]
    children = {h: gated_child(opener(h, n)) for h in hosts}
    agents = {
        h: start_tool(
            "opensnoop",
            "-p",
            str(children[h].pid),
            "--stats",
            "--sink",
            nats_server.url,
            "--host-name",
            h,
        )
        for h in hosts
    }
    for child in children.values():  # all three at once
        child.go()
    for child in children.values():
        child.finish()
    published = {}
    for h, agent in agents.items():
        result = agent.stop()
        assert result.returncode == 0, result.stderr
        stats = stats_of(result)
        # Every open was seen (or counted as lost), and what was handled was published.
        assert stats["produced"] == n
        assert stats["dropped_sink"] == 0 and stats["spooled"] == 0
        assert stats["published"] == stats["handled"] == n - stats["dropped_kernel"]
        published[h] = stats["published"]
        assert f"{published[h]} records published" in result.stderr
    got = collect_all(nats_server.url, "bpfloom.*.opensnoop", sum(published.values()), "t3")
    by_host = Counter(ev.host for ev in got)
    assert dict(by_host) == published
    for h in hosts:
        paths = [ev.path for ev in got if ev.host == h]
        assert len(set(paths)) == len(paths)  # nothing twice
        assert all(p.startswith(f"/nonexistent-{h}/") for p in paths)


def test_server_killed_mid_stream_agents_spool_and_replay(
    nats_server: NatsServer, start_tool: Any, gated_child: Any
) -> None:
    n = 40_000  # about 4 s of opens: the server is down for one of them
    child = gated_child(opener("kill", n, pause_every=100, pause=0.01))
    agent = start_tool(
        "opensnoop", "-p", str(child.pid), "--stats", "--sink", nats_server.url, "--host-name", "k"
    )
    child.go()
    time.sleep(1.0)
    nats_server.kill()
    time.sleep(1.0)
    nats_server.start()
    child.finish()
    result = agent.stop()
    assert result.returncode == 0, result.stderr
    stats = stats_of(result)
    assert "disconnected; spooling" in result.stderr
    assert stats["spooled"] > 0  # events went on while the server was down
    assert stats["produced"] == n
    lost = stats["dropped_kernel"] + stats["dropped_queue"] + stats["dropped_sink"]
    got = collect_all(nats_server.url, "bpfloom.k.opensnoop", n - lost, "tk")
    paths = [ev.path for ev in got]
    assert len(set(paths)) == len(paths), "a record arrived twice"
    assert len(got) == n - lost == stats["published"]


def test_two_collectors_share_a_durable_and_a_killed_one_loses_nothing(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    # Collector A's stdout is a pipe nobody reads: once it is full, A is stuck in its
    # handler holding messages it has not acknowledged; then it is killed.
    args = ["collect", nats_server.url, "-s", "bpfloom.*.load", "--durable", "shared"]
    args += ["--json", "--ack-wait", "1", "--workers", "1"]
    b_out, a_err, b_err = tmp_path / "b.jsonl", tmp_path / "a.err", tmp_path / "b.err"
    with open(a_err, "w") as err:
        a = subprocess.Popen([*BPFLOOM, *args], stdout=subprocess.PIPE, stderr=err)
    with open(b_out, "w") as out, open(b_err, "w") as err:
        b = subprocess.Popen([*BPFLOOM, *args], stdout=out, stderr=err)
    total = 30_000

    def b_seen() -> list[int]:
        return [json.loads(line)["i"] for line in b_out.read_text().splitlines()]

    def wait_for(what: str, ready: Any) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not ready():
            if time.monotonic() > deadline:
                pytest.fail(f"no {what}: {a_err.read_text()} {b_err.read_text()}")
            time.sleep(0.05)

    try:
        wait_for("consumers", lambda: "consuming" in a_err.read_text() + "" and
                 "consuming" in b_err.read_text())  # fmt: skip
        sink = NatsSink(NatsOptions((nats_server.url,)), host="src", tool="load")
        padding = "x" * 100
        for i in range(0, total, 100):  # 300 messages, about 4 MB: more than a pipe holds
            sink.write([{"i": j, "pad": padding} for j in range(i, i + 100)])
            sink.flush()
        sink.close()
        assert sink.published == total
        # Mid-way: B has taken what it could and waits, A is stuck with the rest.
        counts = [-1]

        def b_waits() -> bool:
            counts.append(len(b_seen()))
            return len(counts) > 20 and counts[-1] == counts[-20] > 0

        wait_for("pause of B", b_waits)
        assert len(b_seen()) < total
        a.kill()
        a.wait()
        assert a.stdout is not None
        a_lines = a.stdout.read().decode().splitlines()
        a_seen = {json.loads(line)["i"] for line in a_lines if line.endswith("}")}
        assert a_seen, "A should have had a share"
        wait_for("redelivery to B", lambda: set(b_seen()) | a_seen == set(range(total)))
    finally:
        a.kill()
        a.wait()
        if a.stdout is not None:
            a.stdout.close()
        b.send_signal(signal.SIGINT)
        b.wait(TIMEOUT)
    seen = b_seen()
    assert not [i for i, k in Counter(seen).items() if k > 1], "B handled records twice"
    # A handled some records whose messages it never acknowledged: B got them again.
    redelivered = re.search(r"(\d+) redelivered", b_err.read_text())
    assert redelivered is not None and int(redelivered.group(1)) > 0, b_err.read_text()
    assert a_seen - set(seen), "A's acknowledged messages are not delivered again"


def test_bad_urls_and_options_are_one_line_usage_errors() -> None:
    for args, needle in (
        (["--sink", "http://127.0.0.1:4222"], "nats://HOST:PORT"),
        (["--sink", "nats://"], "no host"),
        (["--sink", "nats://127.0.0.1:99999"], "not a server URL"),
        (["--sink", "nats://127.0.0.1:4222/x"], "no path"),
        (["--host-name", "a.b", "--sink", "nats://127.0.0.1:4222"], "subject token"),
        (["--nats-token", "x"], "--nats-token needs --sink"),
    ):
        result = run_tool_cli("exitsnoop", "--duration", "1", *args)
        one_error_line(result, needle, status=2)
    result = run_tool_cli("collect", "ftp://x")
    one_error_line(result, "nats://HOST:PORT", status=2)


def test_unreachable_server_at_start_spools_drops_oldest_and_counts(
    nats_server: NatsServer, start_tool: Any, gated_child: Any
) -> None:
    nats_server.kill()  # nothing listens on its port now
    n = 20_000
    child = gated_child(opener("away", n))
    agent = start_tool(
        "opensnoop",
        "-p",
        str(child.pid),
        "--stats",
        "--sink",
        nats_server.url,
        "--nats-spool-size",
        "64K",
    )
    child.go()
    child.finish()
    result = agent.stop()
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "cannot connect" in result.stderr
    assert "spool full" in result.stderr
    stats = stats_of(result)
    handled = stats["handled"]
    assert handled > 0
    # Never published; all of it went through the spool, and all of it is counted lost
    # (the oldest while the spool was full, the rest at the shutdown deadline).
    assert stats["published"] == 0
    assert stats["spooled"] == handled
    assert stats["dropped_sink"] == stats["sink_errors"] == handled
    assert f"{handled} not written" in result.stderr


def test_wrong_credentials_are_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats", token="s3cret").start()
    try:
        result = run_tool_cli(
            "exitsnoop", "--duration", "1", "--sink", server.url, "--nats-token", "wrong"
        )
        one_error_line(result, "refused our credentials")
        result = run_tool_cli("collect", server.url, "--nats-token", "wrong", "--duration", "1")
        one_error_line(result, "refused our credentials")
        # The right token is let in.
        ok = run_tool_cli(
            "exitsnoop", "--duration", "1", "--sink", server.url, "--nats-token", "s3cret"
        )
        assert ok.returncode == 0, ok.stderr
    finally:
        server.kill()


def test_tls_with_the_servers_ca_and_without(tmp_path: Path) -> None:
    """A server that requires TLS: an agent given the CA (--nats-tls-ca) publishes
    everything; an agent or a collector without it stops with one line naming the
    certificate problem, instead of spooling for a server that will never be trusted."""
    (tmp_path / "nats").mkdir()
    cert, key = self_signed_certificate(tmp_path)
    server = NatsServer(tmp_path / "nats", tls=(cert, key)).start()
    url = f"tls://127.0.0.1:{server.port}"
    exits = subprocess.Popen(["sh", "-c", "while :; do /bin/true; sleep 0.05; done"])
    try:
        ok = run_tool_cli(
            "exitsnoop", "--duration", "2", "--stats", "--sink", url, "--nats-tls-ca", str(cert)
        )
        assert ok.returncode == 0, ok.stderr
        stats = stats_of(ok)
        assert stats["published"] == stats["handled"] > 0 and stats["dropped_sink"] == 0
        assert "eof_received" not in ok.stderr  # asyncio's notice stays off the terminal
        result = run_tool_cli("exitsnoop", "--duration", "1", "--sink", url)
        one_error_line(result, "TLS certificate was not accepted")
        result = run_tool_cli("collect", url, "--duration", "1")
        one_error_line(result, "TLS certificate was not accepted")
    finally:
        exits.kill()
        exits.wait()
        server.kill()


def test_spool_directory_keeps_what_was_not_sent_for_the_next_run(
    nats_server: NatsServer, start_tool: Any, gated_child: Any, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    url = nats_server.url
    nats_server.kill()
    n = 2000
    child = gated_child(opener("disk", n))
    agent = start_tool(
        "opensnoop", "-p", str(child.pid), "--stats", "--sink", url, "--nats-spool-dir", str(spool)
    )
    child.go()
    child.finish()
    first = stats_of(agent.stop())
    assert first["published"] == 0 and first["dropped_sink"] == 0
    assert first["kept"] == first["handled"] > 0
    assert any(p.suffix == ".msg" for p in spool.iterdir())
    nats_server.start()
    second = run_tool_cli(
        "exitsnoop", "-p", "1", "--duration", "1", "--stats", "--sink", url,
        "--nats-spool-dir", str(spool),
    )  # fmt: skip
    stats = stats_of(second)
    assert stats["adopted"] == first["kept"]
    assert stats["published"] == first["kept"] and stats["kept"] == 0
    assert not any(p.suffix == ".msg" for p in spool.iterdir())
    got = collect_all(url, "bpfloom.*.opensnoop", first["kept"], "tdisk")
    paths = {ev.path for ev in got}
    assert len(paths) == len(got) == first["kept"]
    assert paths <= {f"/nonexistent-disk/{i}" for i in range(n)}


def test_fleet_detection_names_the_host(
    nats_server: NatsServer, start_tool: Any, tmp_path: Path
) -> None:
    # A python whose comm is ours starts a shell on "host A"; the collector's rule
    # (bpfloom detect's default shell rule, narrowed to that parent) fires naming it.
    comm = f"py{os.getpid() % 100000}fleet"[:15]
    python = tmp_path / comm
    python.symlink_to(sys.executable)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        DEFAULT_RULES.read_text().split("- rule:")[0]
        + f"""
- rule: Shell from our python
  condition: spawned_process and comm in (shell_binaries) and parent_comm == {comm}
  output: "shell %comm (pid %pid) started by %parent_comm on %host"
  priority: WARNING
"""
    )
    agent = start_tool("execsnoop", "--sink", nats_server.url, "--host-name", "hostA")
    shell = subprocess.run(
        [str(python), "-c", "import subprocess; p = subprocess.Popen(['sh', '-c', 'exit 0']);"
         " print(p.pid); p.wait()"],
        capture_output=True, text=True, check=True, timeout=TIMEOUT,
    )  # fmt: skip
    pid = int(shell.stdout)
    assert agent.stop().returncode == 0
    args = ["--deliver", "all", "--rules", str(rules), "--duration", "3"]
    text = run_tool_cli("collect", nats_server.url, "-s", "bpfloom.*.execsnoop", *args)
    as_json = run_tool_cli("collect", nats_server.url, "-s", "bpfloom.*.execsnoop", *args, "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    alerts = [a for a in as_json.json_lines() if a["fields"]["pid"] == pid]
    assert len(alerts) == 1, as_json.stdout
    assert alerts[0]["host"] == "hostA" and alerts[0]["fields"]["host"] == "hostA"
    assert alerts[0]["rule"] == "Shell from our python"
    line = next(x for x in text.stdout.splitlines() if f"(pid {pid})" in x)
    assert "[hostA] Shell from our python: shell sh" in line and line.endswith("on hostA")
