"""ecli's attach comments (``bpfloom.attach_comments``): which annotations apply to which
program, errors that name the file and line without quoting it, and reading a source
file named by an object only when it is a small regular file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bpfloom import AttachError
from bpfloom.attach_comments import (
    MAX_SOURCE_BYTES,
    ProgramComments,
    parse,
    read_source,
    source_candidates,
    source_comments,
)
from conftest import compile_bpf

PROGRAMS = {"xdp_a": "xdp", "xdp_b": "xdp", "tc_a": "tc", "tc_b": "tc"}

SOURCE = """\
/// @ifindex 3
/// @flags 2
/// @tchook {"ifindex": 4, "attach_point": "BPF_TC_EGRESS"}
#include "vmlinux.h"
/// @description an annotation of another kind, ignored

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
} rb SEC(".maps");

SEC("xdp")
int xdp_a(struct xdp_md *ctx) { return XDP_PASS; }

/// @tcopts {"handle": 9, "priority": 2}
SEC("tc")
int
tc_a(struct __sk_buff *skb)
{
	return 0;
}

/// @ifindex 0x5
/// @tchook {"attach_point": "BPF_TC_INGRESS"}
SEC("xdp") int xdp_b(struct xdp_md *ctx) { return XDP_PASS; }

SEC("tc")
int tc_b(struct __sk_buff *skb) { return 0; }
"""


def test_each_program_takes_the_nearest_preceding_annotations() -> None:
    found = parse(SOURCE, "/src/prog.bpf.c", PROGRAMS)
    assert found == {
        # the top of the file applies to the programs below it
        "xdp_a": ProgramComments(ifindex=3, where="/src/prog.bpf.c:1", xdp_mode="skb"),
        "tc_a": ProgramComments(
            ifindex=4,
            where="/src/prog.bpf.c:3",
            tc_direction="egress",
            tc_handle=9,
            tc_priority=2,
        ),
        # a nearer @ifindex; @flags still from the top
        "xdp_b": ProgramComments(ifindex=5, where="/src/prog.bpf.c:22", xdp_mode="skb"),
        # a nearer @tchook without an ifindex: none; @tcopts from above tc_a
        "tc_b": ProgramComments(tc_direction="ingress", tc_handle=9, tc_priority=2),
    }


def test_annotations_after_a_program_do_not_apply_to_it() -> None:
    text = 'SEC("xdp")\nint xdp_a(void *ctx) { return 2; }\n/// @ifindex 7\n'
    assert parse(text, "p.c", {"xdp_a": "xdp"}) == {}


def test_programs_of_the_other_kind_and_unknown_names_are_ignored() -> None:
    text = '/// @ifindex 7\nSEC("tc")\nint tc_a(void *ctx) { return 0; }\n'
    text += 'SEC("xdp")\nint not_in_the_object(void *ctx) { return 0; }\n'
    assert parse(text, "p.c", {"tc_a": "tc"}) == {}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("/// @ifindex SECRET", "positive interface index"),
        ("/// @flags SECRET", "XDP_FLAGS_* as a number"),
        ('/// @tchook {"SECRET": 1}', "unknown key (known: attach_point, ifindex)"),
        ('/// @tchook {"attach_point": "SECRET"}', "attach_point must be"),
        ('/// @tchook {"ifindex": "SECRET"}', "ifindex must be an integer"),
        ('/// @tcopts {"handle": true}', "handle must be an integer"),
        ('/// @tcopts {"handle": 1, "prog_id": 4}', "prog_id must be 0"),
        ("/// @tcopts SECRET", "expected a JSON object"),
        ("/// @xdpopts " + "[" * 2000 + "]" * 2000, "expected a JSON object"),
        ('/// @xdpopts {"x": "' + "SECRET" * 1000 + '"}', "longer than 4096 characters"),
    ],
)
def test_malformed_annotation_names_file_and_line_not_content(line: str, why: str) -> None:
    text = f'int x;\n\n{line}\nSEC("xdp")\nint xdp_a(void *ctx) {{ return 2; }}\n'
    with pytest.raises(AttachError) as info:
        parse(text, "/src/p.bpf.c", {"xdp_a": "xdp"})
    message = str(info.value)
    assert message.startswith("/src/p.bpf.c:3: malformed @"), message
    assert why in message
    assert "SECRET" not in message
    assert len(message) < 200


def test_unused_malformed_annotation_is_still_an_error() -> None:
    with pytest.raises(AttachError, match=r"p\.c:1: malformed @tcopts"):
        parse("/// @tcopts {\n", "p.c", {})


# --- reading the source -------------------------------------------------------------------


def test_read_source_reads_small_regular_files_and_links_to_them(tmp_path: Path) -> None:
    src = tmp_path / "p.bpf.c"
    src.write_text("/// @ifindex 1\n")
    link = tmp_path / "link.c"
    link.symlink_to(src)
    assert read_source(str(src)) == "/// @ifindex 1\n"
    assert read_source(str(link)) == "/// @ifindex 1\n"
    exact = tmp_path / "exact.c"
    exact.write_bytes(b"x" * MAX_SOURCE_BYTES)
    assert read_source(str(exact)) == "x" * MAX_SOURCE_BYTES


def test_read_source_refuses_what_is_not_a_small_regular_file(tmp_path: Path) -> None:
    big = tmp_path / "big.c"
    big.write_bytes(b"x" * (MAX_SOURCE_BYTES + 1))
    fifo = tmp_path / "fifo.c"
    os.mkfifo(fifo)
    names = [str(big), str(tmp_path), str(fifo), "/dev/null", str(tmp_path / "missing")]
    results: dict[str, str | None] = {}

    def read_all() -> None:
        for name in names:
            results[name] = read_source(name)

    # A FIFO opened for reading would block until a writer came: it is never opened.
    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "read_source blocked"
    assert results == dict.fromkeys(names)  # None for each


def test_source_is_found_through_dwarf_then_beside_the_object(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    text = '/// @ifindex 42\nSEC("xdp")\nint xdp_a(void *ctx) { return 2; }\n'
    obj = compile_bpf("#define SEC(n) __attribute__((section(n), used))\n" + text, build)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = elsewhere / "prog.bpf.o"
    obj.rename(moved)
    assert source_candidates(str(moved)) == [
        str(build / "prog.bpf.c"),
        str(elsewhere / "prog.bpf.c"),
        str(elsewhere / "prog.c"),
    ]
    found = source_comments(str(moved), {"xdp_a": "xdp"})
    assert found.source == str(build / "prog.bpf.c")
    assert found.programs["xdp_a"].ifindex == 42
    # the source gone from where the DWARF says: the one beside the object is read
    (build / "prog.bpf.c").rename(elsewhere / "prog.c")
    found = source_comments(str(moved), {"xdp_a": "xdp"})
    assert found.source == str(elsewhere / "prog.c")
    assert found.programs["xdp_a"].ifindex == 42
    (elsewhere / "prog.c").unlink()
    assert source_comments(str(moved), {"xdp_a": "xdp"}).programs == {}
