"""Run-time attach targets: where ``BpfObject.attach_all`` puts each program.

A program's ``SEC()`` name says where it attaches, except where it cannot: an XDP or
tc program names no interface, and a uprobe or USDT's binary path is fixed at compile
time (``SEC("uprobe/./bin/server:handle")``). ``AttachTargets`` supplies those at run
time, as ``bpfloom run`` takes them from its command line:

- ``interface``: every XDP and tc program attaches to this interface (by name);
  ``xdp_mode`` (auto, skb, native, offload) and ``tc_hook`` (ingress, egress) say how.
- ``binary``: every uprobe, uretprobe and USDT program whose SEC names a binary is
  attached to this one instead (same function or probe); ``pid`` limits them to one
  process.
- ``comments``: ecli's attach comments from the C source (``bpfloom.attach_comments``),
  by program name: an interface index, XDP mode, tc hook, handle and priority. Explicit
  targets win over comments.

``plan()`` decides, program by program, without touching the kernel beyond looking up
interfaces, so that every bad target is reported before anything is loaded or attached.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._exceptions import AttachError
from .attach_comments import ProgramComments

if TYPE_CHECKING:
    from .object import BpfObject, Link, Program

__all__ = ["AttachTargets", "PlannedAttach", "check_binary", "interface_by_index", "plan"]

# libbpf 1.1's own SEC grammars (libbpf.c: attach_uprobe's "%m[^/]/%m[^:]:%m[a-zA-Z0-9_.]+%li",
# attach_usdt's "usdt/%m[^:]:%m[^:]:%m[^:]")
_UPROBE_SEC = re.compile(
    r"(uprobe|uretprobe)(?:\.s)?/([^:]+):([a-zA-Z0-9_.]+)(?:\+(0[xX][0-9a-fA-F]+|[0-9]+))?"
)
_USDT_SEC = re.compile(r"usdt/([^:]+):([^:]+):([^:]+)")


@dataclass(frozen=True)
class AttachTargets:
    """Where programs attach when their ``SEC()`` does not say (see the module doc).

    ``tc_hook`` and ``xdp_mode`` left ``None`` take the source comments' values, else
    ``"ingress"`` and ``"auto"``; ``pid`` ``None`` means every process.
    """

    interface: str | None = None
    tc_hook: str | None = None
    xdp_mode: str | None = None
    binary: str | None = None
    pid: int | None = None
    comments: Mapping[str, ProgramComments] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedAttach:
    """How one program will be attached: ``attach()`` makes the link, or ``attach`` is
    ``None`` and the program is skipped. ``by_section`` marks libbpf's own attach by
    the SEC name, which may find nothing to attach to (EOPNOTSUPP: skipped too)."""

    program: Program
    attach: Callable[[], Link] | None
    by_section: bool = False


def plan(obj: BpfObject, targets: AttachTargets) -> list[PlannedAttach]:
    """One ``PlannedAttach`` per autoloaded program of ``obj``, in object order.

    Raises ``AttachError`` now for an interface (named or by comment index) that does
    not exist and for a binary that is not a regular file.
    """
    if targets.interface is not None:
        check_interface(targets.interface)
    if targets.binary is not None:
        check_binary(targets.binary)
    pid = -1 if targets.pid is None else targets.pid
    steps: list[PlannedAttach] = []
    for prog in obj.programs.values():
        if not prog.autoload:
            continue
        if prog.is_xdp or prog.is_tc:
            steps.append(_plan_net(prog, targets))
        elif (m := _UPROBE_SEC.fullmatch(prog.section)) is not None:
            steps.append(_plan_uprobe(prog, m, targets.binary, pid))
        elif (m := _USDT_SEC.fullmatch(prog.section)) is not None:
            steps.append(_plan_usdt(prog, m, targets.binary, pid))
        else:
            steps.append(PlannedAttach(prog, prog.attach, by_section=True))
    return steps


def _plan_net(prog: Program, targets: AttachTargets) -> PlannedAttach:
    comments = targets.comments.get(prog.name, ProgramComments())
    interface = targets.interface
    if interface is None and comments.ifindex is not None:
        interface = interface_by_index(comments.ifindex, comments.where)
    if interface is None:
        return PlannedAttach(prog, None)
    name = interface
    if prog.is_xdp:
        mode = targets.xdp_mode or comments.xdp_mode or "auto"
        return PlannedAttach(prog, lambda: prog.attach_xdp(name, mode))
    direction = targets.tc_hook or comments.tc_direction or "ingress"
    handle, priority = comments.tc_handle, comments.tc_priority
    return PlannedAttach(
        prog, lambda: prog.attach_tc(name, direction, handle=handle, priority=priority)
    )


def _plan_uprobe(prog: Program, m: re.Match[str], binary: str | None, pid: int) -> PlannedAttach:
    kind, path, symbol, offset_text = m.groups()
    if binary is None and pid == -1:
        return _by_section(prog, f"{kind} {path}:{symbol}", path)
    offset = int(offset_text, 0) if offset_text else 0
    target = binary if binary is not None else path
    return PlannedAttach(
        prog,
        lambda: prog.attach_uprobe(
            target, symbol, offset=offset, pid=pid, retprobe=kind == "uretprobe"
        ),
    )


def _plan_usdt(prog: Program, m: re.Match[str], binary: str | None, pid: int) -> PlannedAttach:
    path, provider, name = m.groups()
    if binary is None and pid == -1:
        return _by_section(prog, f"usdt {path}:{provider}:{name}", path)
    target = binary if binary is not None else path
    return PlannedAttach(prog, lambda: prog.attach_usdt(target, provider, name, pid))


def _by_section(prog: Program, hook: str, path: str) -> PlannedAttach:
    """libbpf attaches by the SEC name; a path with a ``/`` that names no file gets our
    error first (libbpf's is a bare ENOENT)."""
    if "/" in path and not os.path.exists(path):

        def missing() -> Link:
            raise AttachError(
                f"cannot attach program {prog.name!r} to {hook}: no such file {path!r} "
                "(the path in its SEC)",
                errno=2,
                program=prog.name,
                hook=hook,
            )

        return PlannedAttach(prog, missing)
    return PlannedAttach(prog, prog.attach, by_section=True)


def check_interface(name: str) -> int:
    """The index of network interface ``name``; ``AttachError`` if there is none."""
    try:
        return socket.if_nametoindex(name)
    except (OSError, ValueError):
        raise AttachError(
            f"no network interface {name!r} (see `ip link`)", hook=f"interface {name}"
        ) from None


def interface_by_index(ifindex: int, where: str) -> str:
    """The name of interface ``ifindex`` (from an attach comment at ``where``);
    ``AttachError`` if there is none."""
    try:
        return socket.if_indextoname(ifindex)
    except (OSError, ValueError, OverflowError):
        raise AttachError(
            f"no network interface with index {ifindex} (the attach comment at {where!r}; "
            "see `ip link`)",
            hook=f"interface {ifindex}",
        ) from None


def check_binary(path: str) -> str:
    """``path`` if it is a regular file (symbolic links followed); else ``AttachError``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AttachError(f"binary {path!r}: no such file", hook=f"binary {path}") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AttachError(f"binary {path!r}: {reason}", hook=f"binary {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise AttachError(f"binary {path!r} is not a regular file", hook=f"binary {path}")
    return path
