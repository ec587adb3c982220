"""``bpfloom export`` configs, decoders and exposition text, without a kernel.

Bad configs are run through the real command (``python -m bpfloom export``): each gives
exactly one error line naming the file, the line and the key, and status 1; the object
is opened (parsed) but nothing is loaded. The decoders and the text format are checked
one by one against values worked out by hand.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bpfloom.export import ExportConfigError, load_config, parse_listen
from bpfloom.export.config import DecoderConfig, LabelConfig, Where
from bpfloom.export.decoders import DecoderChain, decoder_names
from bpfloom.export.exposition import escape_value, go_float, header, number
from bpfloom.tools.syscalls import syscall_number
from conftest import compile_bpf

BPFLOOM = [sys.executable, "-m", "bpfloom"]
GETPID = syscall_number("getpid") or 0

OBJECT_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u64);
} hits_total SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 16);
    __type(key, __u32);
    __type(value, __u32);
} small_values SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
"""

GOOD_LABEL = """\
      labels:
        - name: id
          size: 4
          decoders:
            - name: uint
"""

# (config text, line of the fault, key named, what the message says)
BAD_CONFIGS = {
    "unknown decoder": (
        """\
metrics:
  counters:
    - name: hits_total
      help: hits
      labels:
        - name: id
          size: 4
          decoders:
            - name: frobnicate
""",
        9,
        "metrics.counters[0].labels[0].decoders[0].name",
        "unknown decoder 'frobnicate'; known: cgroup, errno, hex, ifname, inet_ip, ksym, "
        "majorminor, regexp, static_map, string, syscall, uint",
    ),
    "wrong bucket type": (
        """\
metrics:
  histograms:
    - name: hits_total
      help: hits
      bucket_type: exp3
      bucket_min: 0
      bucket_max: 8
"""
        + GOOD_LABEL,
        5,
        "metrics.histograms[0].bucket_type",
        "unknown bucket type 'exp3'; expected one of exp2, exp2zero, linear, fixed",
    ),
    "no map of that name": (
        """\
metrics:
  counters:
    - name: misses_total
      help: misses
"""
        + GOOD_LABEL,
        3,
        "metrics.counters[0].name",
        "no map named 'misses_total' in {obj} (a metric reads the map named like it; maps: "
        "hits_total, small_values)",
    ),
    "value not u64": (
        """\
metrics:
  gauges:
    - name: small_values
      help: 32-bit values
"""
        + GOOD_LABEL,
        3,
        "metrics.gauges[0].name",
        "the values of map 'small_values' are 4 bytes (__u32); metrics need u64 values (8 bytes)",
    ),
    "errno on raw bytes": (
        """\
metrics:
  counters:
    - name: hits_total
      labels:
        - name: err
          size: 4
          decoders:
            - name: errno
""",
        8,
        "metrics.counters[0].labels[0].decoders[0].name",
        "decoder 'errno': takes a number: put the uint decoder before it (decoders: [uint, errno])",
    ),
    "label past the key": (
        """\
metrics:
  counters:
    - name: hits_total
      labels:
        - name: a
          size: 2
          padding: 2
          decoders: [{name: uint}]
        - name: b
          size: 2
          decoders: [{name: uint}]
""",
        9,
        "metrics.counters[0].labels[1].name",
        "label 'b' reads bytes 4..5, past the end of the 4-byte key of map 'hits_total'",
    ),
    "unsupported ebpf_exporter key": (
        """\
metrics:
  counters:
    - name: hits_total
tracing:
  spans: []
""",
        4,
        "tracing",
        "tracing spans are not supported by bpfloom export",
    ),
    "a typo": (
        """\
metrics:
  counters:
    - name: hits_total
      lables: []
""",
        4,
        "metrics.counters[0].lables",
        "unknown key 'lables'; expected one of flush_interval, help, labels, max_series, "
        "name, perf_event_array, ring_buffer",
    ),
}


@pytest.fixture(scope="module")
def obj_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the compiled object; each test links it beside its config."""
    d = tmp_path_factory.mktemp("export_obj")
    compile_bpf(OBJECT_C, d, name="object")
    return d


def config_with_object(tmp_path: Path, obj_dir: Path, name: str, text: str) -> Path:
    (tmp_path / f"{name}.bpf.o").write_bytes((obj_dir / "object.bpf.o").read_bytes())
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BPFLOOM, "export", *args, "--duration", "5"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_error_line(tmp_path: Path, obj_dir: Path, case: str) -> None:
    text, line, key, message = BAD_CONFIGS[case]
    path = config_with_object(tmp_path, obj_dir, "bad", text)
    proc = run_export(str(path))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    expected = f"bpfloom: error: {path}:{line}: {key}: " + message.format(
        obj=tmp_path / "bad.bpf.o"
    )
    assert proc.stderr.splitlines() == [expected]


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["--listen", "9435"], 2, "--listen: '9435' is not HOST:PORT"),
        (["--listen", ":9435"], 2, "names no host"),
        (["--listen", "::1:9435"], 2, "write an IPv6 address in brackets"),
        (["--listen", "127.0.0.1:70000"], 2, "port 70000 is out of range"),
        (["--max-series", "0"], 2, "Invalid value for '--max-series'"),
    ],
)
def test_bad_command_line(
    tmp_path: Path, obj_dir: Path, args: list[str], status: int, says: str
) -> None:
    path = config_with_object(
        tmp_path, obj_dir, "good", "metrics:\n  counters:\n    - name: hits_total\n" + GOOD_LABEL
    )
    proc = run_export(str(path), *args)
    assert proc.returncode == status
    (line,) = proc.stderr.splitlines()
    assert line.startswith("bpfloom: error: ") and says in line, line


def test_address_in_use_is_one_error_line(tmp_path: Path, obj_dir: Path) -> None:
    """The address is bound before anything is loaded: one error line, status 1."""
    path = config_with_object(
        tmp_path, obj_dir, "good", "metrics:\n  counters:\n    - name: hits_total\n" + GOOD_LABEL
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_export(str(path), "--listen", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    reason = os.strerror(errno.EADDRINUSE)
    assert proc.stderr.splitlines() == [
        f"bpfloom: error: cannot listen on 127.0.0.1:{port}: {reason}"
    ]


def test_missing_files(tmp_path: Path) -> None:
    proc = run_export(str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"bpfloom: error: {tmp_path / 'nope.yaml'}: no such file"]
    lonely = tmp_path / "lonely.yaml"
    lonely.write_text("metrics: {}\n")
    proc = run_export(str(lonely))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"bpfloom: error: {lonely}: no object {tmp_path / 'lonely.bpf.o'} beside it (a config "
        "<name>.yaml goes with the compiled <name>.bpf.o)"
    ]


# (config text, what the one-line error says after the directory)
CONFIG_ERRORS = [
    (
        "metrics: [\n",
        "x.yaml:2: invalid YAML",
    ),
    (
        "",
        "x.yaml: empty config",
    ),
    (
        "metrics:\n  counters:\n    - help: x\n",
        "x.yaml:3: metrics.counters[0]: a metric needs a name",
    ),
    (
        "metrics:\n  counters:\n    - name: 9lives\n",
        "x.yaml:3: metrics.counters[0].name: '9lives' is not a valid Prometheus metric name",
    ),
    (
        "metrics:\n"
        "  counters:\n"
        "    - name: a\n"
        "      labels:\n"
        "        - name: __x\n"
        "          decoders: [{name: uint}]\n",
        "x.yaml:5: metrics.counters[0].labels[0].name: '__x' is not a valid Prometheus label name",
    ),
    (
        "metrics:\n  counters:\n    - name: a\n      labels:\n        - name: x\n",
        "x.yaml:5: metrics.counters[0].labels[0].name: a label needs at least one decoder",
    ),
    (
        "metrics:\n"
        "  counters:\n"
        "    - name: a\n"
        "      labels:\n"
        "        - name: x\n"
        "          size: -1\n"
        "          decoders: [{name: uint}]\n",
        "x.yaml:6: metrics.counters[0].labels[0].size: must be at least 1, not -1",
    ),
    (
        "metrics:\n"
        "  histograms:\n"
        "    - name: a\n"
        "      bucket_type: exp2\n"
        "      bucket_min: 3\n"
        "      bucket_max: 3\n"
        "      labels: [{name: b, size: 8, decoders: [{name: uint}]}]\n",
        "x.yaml:6: metrics.histograms[0].bucket_max: must be larger than bucket_min (3), not 3",
    ),
    (
        "metrics:\n"
        "  histograms:\n"
        "    - name: a\n"
        "      bucket_type: fixed\n"
        "      bucket_keys: [1, 5, 2]\n"
        "      labels: [{name: b, size: 8, decoders: [{name: uint}]}]\n",
        "x.yaml:5: metrics.histograms[0].bucket_keys: bucket keys must increase",
    ),
    (
        "metrics:\n"
        "  histograms:\n"
        "    - name: a\n"
        "      bucket_type: linear\n"
        "      bucket_min: 0\n"
        "      bucket_max: 100000\n"
        "      labels: [{name: b, size: 8, decoders: [{name: uint}]}]\n",
        "x.yaml:6: metrics.histograms[0].bucket_max: more than 4096 buckets",
    ),
    (
        "metrics:\n  counters:\n    - name: a\n      ring_buffer: yes please\n",
        "x.yaml:4: metrics.counters[0].ring_buffer: expected true or false",
    ),
    (
        "metrics:\n  counters:\n    - name: a\n      flush_interval: 1 fortnight\n",
        "x.yaml:4: metrics.counters[0].flush_interval: '1 fortnight' is not a duration",
    ),
    (
        "metrics:\n"
        "  counters:\n"
        "    - name: a\n"
        "      labels:\n"
        "        - name: x\n"
        "          decoders:\n"
        "            - name: regexp\n"
        "              regexps: ['(']\n",
        "x.yaml:8: "
        "metrics.counters[0].labels[0].decoders[0].regexps[0]: invalid regular expression '('",
    ),
    (
        "metrics:\n  counters:\n    - name: a\n    - name: a\n",
        "x.yaml:4: metrics.counters[1].name: metric ebpf_exporter_a is defined twice",
    ),
    (
        "kaddrs: ['not a symbol']\nmetrics:\n  counters:\n    - name: a\n",
        "x.yaml:1: kaddrs[0]: 'not a symbol' is not a kernel symbol name",
    ),
]


@pytest.mark.parametrize(("text", "says"), CONFIG_ERRORS)
def test_config_errors(tmp_path: Path, text: str, says: str) -> None:
    from bpfloom.export import load_configs

    (tmp_path / "x.bpf.o").write_bytes(b"")
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(ExportConfigError) as info:
        load_configs([str(tmp_path / "x.yaml")])
    message = str(info.value)
    assert message.startswith(f"{tmp_path}/") and says in message, message
    assert "\n" not in message


def test_config_reads_every_key(tmp_path: Path) -> None:
    (tmp_path / "full.bpf.o").write_bytes(b"")
    (tmp_path / "full.yaml").write_text(
        """\
kaddrs: [schedule]
metrics:
  counters:
    - name: events_total
      help: "a \\\\ help\\nline"
      ring_buffer: true
      flush_interval: 1m30s
      max_series: 10
      labels:
        - name: op
          size: 1
          padding: 3
          reuse: true
          decoders:
            - name: uint
            - name: static_map
              allow_unknown: true
              static_map: {1: read, 0x2: write}
  histograms:
    - name: latency_seconds
      bucket_type: fixed
      bucket_keys: [1, 2.5, 10]
      bucket_multiplier: 0.001
      labels: [{name: bucket, size: 8, decoders: [{name: uint}]}]
"""
    )
    config = load_config(str(tmp_path / "full.yaml"))
    assert config.name == "full" and config.bpf_path == str(tmp_path / "full.bpf.o")
    assert config.kaddrs == ("schedule",)
    counter, histogram = config.metrics
    assert (counter.kind, counter.full_name, counter.help) == (
        "counter",
        "ebpf_exporter_events_total",
        "a \\ help\nline",
    )
    assert counter.ring_buffer and counter.flush_interval == 90.0 and counter.max_series == 10
    (label,) = counter.labels
    assert (label.name, label.size, label.padding, label.reuse) == ("op", 1, 3, True)
    assert label.decoders[1].static_map == {"1": "read", "0x2": "write"}
    assert label.decoders[1].allow_unknown
    assert (label.where.line, label.where.key) == (10, "metrics.counters[0].labels[0].name")
    assert histogram.bucket_keys == (1.0, 2.5, 10.0) and histogram.bucket_multiplier == 0.001


# --- decoders ---------------------------------------------------------------------------


def chain(size: int, *decoders: dict[str, object]) -> DecoderChain:
    where = Where("t.yaml", 1, "labels[0]")
    configs = tuple(
        DecoderConfig(
            str(d["name"]),
            where,
            d.get("static_map"),  # type: ignore[arg-type]
            bool(d.get("allow_unknown", False)),
            tuple(d.get("regexps", ())),  # type: ignore[arg-type]
        )
        for d in decoders
    )
    return DecoderChain(LabelConfig("x", where, size, decoders=configs), size)


@pytest.mark.parametrize(
    ("size", "decoders", "raw", "label"),
    [
        (1, [{"name": "uint"}], b"\xff", "255"),
        (2, [{"name": "uint"}], (513).to_bytes(2, "little"), "513"),
        (8, [{"name": "uint"}], (2**64 - 1).to_bytes(8, "little"), str(2**64 - 1)),
        (8, [{"name": "string"}], b"bash\0xyz", "bash"),
        (4, [{"name": "string"}], b"\xffab\0", "\\xffab"),
        (3, [{"name": "hex"}], b"\x01\xab\x00", "01ab00"),
        (
            4,
            [{"name": "uint"}, {"name": "static_map", "static_map": {"1": "read"}}],
            (1).to_bytes(4, "little"),
            "read",
        ),
        (
            4,
            [{"name": "uint"}, {"name": "static_map", "static_map": {"1": "read"}}],
            (7).to_bytes(4, "little"),
            "unknown:7",
        ),
        (
            4,
            [
                {"name": "uint"},
                {"name": "static_map", "static_map": {"1": "r"}, "allow_unknown": True},
            ],
            (7).to_bytes(4, "little"),
            "7",
        ),
        (8, [{"name": "string"}, {"name": "regexp", "regexps": ["^ba", "sh$"]}], b"zsh\0", "zsh"),
        (8, [{"name": "string"}, {"name": "regexp", "regexps": ["^ba"]}], b"zsh\0", None),
        (4, [{"name": "uint"}, {"name": "errno"}], (2).to_bytes(4, "little"), "ENOENT"),
        (4, [{"name": "uint"}, {"name": "errno"}], (4095).to_bytes(4, "little"), "unknown:4095"),
        (4, [{"name": "uint"}, {"name": "syscall"}], GETPID.to_bytes(4, "little"), "getpid"),
        (
            4,
            [{"name": "uint"}, {"name": "syscall"}],
            (9999).to_bytes(4, "little"),
            "unknown_syscall:9999",
        ),
        (4, [{"name": "inet_ip"}], bytes([192, 0, 2, 1]), "192.0.2.1"),
        (16, [{"name": "inet_ip"}], bytes(15) + b"\x01", "::1"),
        (4, [{"name": "ifname"}], socket.if_nametoindex("lo").to_bytes(4, "little"), "lo"),
        (4, [{"name": "ifname"}], (2**31).to_bytes(4, "little"), f"unknown:{2**31}"),
        (4, [{"name": "majorminor"}], (0xFFF00).to_bytes(4, "little"), "unknown:4095:0"),
        (
            8,
            [{"name": "uint"}, {"name": "cgroup"}],
            (2**63).to_bytes(8, "little"),
            f"unknown_cgroup_id:{2**63}",
        ),
    ],
)
def test_decoders(
    size: int, decoders: list[dict[str, object]], raw: bytes, label: str | None
) -> None:
    assert chain(size, *decoders).decode(raw) == label


def test_majorminor_names_a_listed_device() -> None:
    with open("/proc/partitions") as f:
        rows = [line.split() for line in f if line.split()[:1] and line.split()[0].isdigit()]
    major, minor, _, name = rows[0]
    dev = (int(minor) & 0xFF) | (int(major) << 8) | ((int(minor) & ~0xFF) << 12)
    assert chain(4, {"name": "majorminor"}).decode(dev.to_bytes(4, "little")) == name


@pytest.mark.kernel  # root: /proc/kallsyms shows addresses
def test_ksym_finds_the_function_an_address_is_in() -> None:
    with open("/proc/kallsyms") as f:
        rows = [line.split() for line in f]
    by_name = {r[2]: int(r[0], 16) for r in rows if len(r) == 3}
    ksym = chain(8, {"name": "ksym"})
    address = by_name["schedule"]
    assert ksym.decode(address.to_bytes(8, "little")) == "schedule"
    assert ksym.decode((address + 1).to_bytes(8, "little")) == "schedule"
    assert ksym.decode(bytes(8)) == "unknown_addr:0x0"


@pytest.mark.parametrize(
    ("size", "decoders", "says"),
    [
        (3, [{"name": "uint"}], "decoder 'uint': takes 1 or 2 or 4 or 8 bytes, but the label is 3"),
        (4, [{"name": "syscall"}], "decoder 'syscall': takes a number: put the uint decoder"),
        (4, [{"name": "string"}, {"name": "uint"}], "decoder 'uint': takes the key's raw bytes"),
        (5, [{"name": "inet_ip"}], "decoder 'inet_ip': takes 4 or 16 bytes"),
        (4, [{"name": "static_map"}], "decoder 'static_map': needs a non-empty static_map"),
        (4, [{"name": "regexp"}], "decoder 'regexp': needs regexps"),
        (4, [{"name": "nope"}], "unknown decoder 'nope'"),
    ],
)
def test_decoder_chains_checked_at_load(
    size: int, decoders: list[dict[str, object]], says: str
) -> None:
    with pytest.raises(ExportConfigError, match=r"^t\.yaml:1: labels\[0\]: ") as info:
        chain(size, *decoders)
    assert says in str(info.value)


def test_every_issue_decoder_exists() -> None:
    assert set(decoder_names()) >= {
        "uint",
        "string",
        "hex",
        "static_map",
        "regexp",
        "errno",
        "syscall",
        "inet_ip",
        "ifname",
        "majorminor",
        "cgroup",
        "ksym",
    }


# --- exposition text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (1.0, "1"),
        (0.5, "0.5"),
        (1e-06, "1e-06"),
        (1.6e-05, "1.6e-05"),
        (0.000128, "0.000128"),
        (1.048576, "1.048576"),
        (134.217728, "134.217728"),
        (100000.0, "100000"),
        (1e6, "1e+06"),
        (1048576.0, "1.048576e+06"),
        (2.0**40, "1.099511627776e+12"),
        (0.0001, "0.0001"),
        (1e-5, "1e-05"),
        (-2.5, "-2.5"),
        (0.0, "0"),
        (float("inf"), "+Inf"),
    ],
)
def test_go_float(x: float, text: str) -> None:
    """``le`` bounds spelled as Go's strconv.FormatFloat(x, 'g', -1, 64) spells them."""
    assert go_float(x) == text


def test_exposition_escapes() -> None:
    assert escape_value('a"b\\c\nd\te') == 'a\\"b\\\\c\\nd\te'
    assert header("m", "counter", "x\\y\nz") == "# HELP m x\\\\y\\nz\n# TYPE m counter\n"
    assert number(3.0) == "3" and number(0.25) == "0.25" and number(float("inf")) == "+Inf"


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9435", ("127.0.0.1", 9435)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:80", ("localhost", 80)),
        ("0.0.0.0:9435", ("0.0.0.0", 9435)),
    ],
)
def test_parse_listen(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


def test_export_package_does_not_import_click() -> None:
    """The library is CLI-free: importing it (and using every module) loads no click."""
    code = (
        "import sys, bpfloom.export, bpfloom.export.exporter, bpfloom.export.server;"
        "assert 'click' not in sys.modules, 'click imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_event_counts_count_by_key_and_flush() -> None:
    """Event counters count records by their key bytes; with flush_interval they start
    again from zero once that much time has passed (ebpf_exporter's perf_event_array
    counters)."""
    import time

    import numpy as np

    from bpfloom.export.collector import EventCounts

    counts = EventCounts(2, flush_interval=0.05)
    records = np.array([[1, 0, 9], [2, 0, 9], [1, 0, 7], [1, 0, 8]], dtype=np.uint8)
    counts.add(records)  # the third byte is past the key: not part of it
    rows = counts.read()
    assert dict(zip(map(bytes, rows.keys), rows.values.tolist(), strict=True)) == {
        b"\x01\x00": 3,
        b"\x02\x00": 1,
    }
    time.sleep(0.1)
    assert len(counts.read()) == 0
    counts.add(records[:1])
    assert counts.read().values.tolist() == [1]
