"""Label decoders: bytes cut from a map key, turned step by step into a label value.

As in cloudflare/ebpf_exporter's ``decoder`` package, each label has a chain of
decoders applied in order; each step takes bytes and gives bytes (``uint`` turns 4 raw
bytes into ``b"42"``, ``syscall`` then turns ``b"42"`` into ``b"connect"``), and a
step may drop the whole label set (``regexp`` when nothing matches). The last step's
bytes are the label value.

One class per decoder, behind one interface (``LabelDecoder``): a subclass names
itself with ``name`` and is registered by that alone, so a new decoder is one class.
What each step takes is checked once, when the config is loaded: ``takes`` says
whether it wants the key's raw bytes (``uint``, ``ksym``, ``inet_ip``: with the sizes
in ``sizes``), the decimal number a ``uint`` step gives (``errno``, ``syscall``,
``cgroup``), or any text (``static_map``, ``regexp``, ``string``, ``hex``), so a chain
such as ``[errno]`` on raw bytes is a config error naming the line, never a failure at
scrape time.
"""

from __future__ import annotations

import bisect
import errno as errno_names
import ipaddress
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import ClassVar

from .config import DecoderConfig, ExportConfigError, LabelConfig


class DecodeError(ValueError):
    """A value a decoder cannot turn into a label (counted, the label set dropped)."""


RAW, NUMBER, TEXT = "raw", "number", "text"


class LabelDecoder:
    """One step of a label's decoder chain.

    ``decode(value)`` returns the next bytes, or None to drop the label set. It may
    raise ``DecodeError``. ``check(size, given)`` runs once at load time with the
    label's size and what the previous step gives (``RAW``, ``NUMBER`` or ``TEXT``);
    it raises ``ExportConfigError`` (via ``self.where``) for a chain that cannot work.
    """

    name: ClassVar[str] = ""
    takes: ClassVar[str] = TEXT  # RAW: raw key bytes; NUMBER: a uint step's output; TEXT: any
    gives: ClassVar[str] = TEXT
    sizes: ClassVar[tuple[int, ...]] = ()  # raw sizes accepted (empty: any size)
    registry: ClassVar[dict[str, type[LabelDecoder]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            LabelDecoder.registry[cls.name] = cls

    def __init__(self, config: DecoderConfig) -> None:
        self.config = config

    def error(self, message: str) -> ExportConfigError:
        return self.config.where.error(f"decoder {self.name!r}: {message}")

    def check(self, size: int, given: str) -> None:
        if self.takes == RAW and given != RAW:
            raise self.error("takes the key's raw bytes: put it first in the chain")
        if self.takes == NUMBER and given != NUMBER:
            raise self.error(
                f"takes a number: put the uint decoder before it (decoders: [uint, {self.name}])"
            )
        if given == RAW and self.sizes and size not in self.sizes:
            sizes = " or ".join(str(s) for s in self.sizes)
            raise self.error(f"takes {sizes} bytes, but the label is {size} bytes")

    def output(self, given: str) -> str:
        """What this step gives, from what it was given."""
        return self.gives

    def decode(self, value: bytes) -> bytes | None:
        raise NotImplementedError


def _number(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise DecodeError(f"{value[:32]!r} is not a number") from None


class UInt(LabelDecoder):
    """Raw unsigned integer (1, 2, 4 or 8 bytes, host order) → its decimal digits."""

    name = "uint"
    takes = RAW
    gives = NUMBER
    sizes = (1, 2, 4, 8)

    def decode(self, value: bytes) -> bytes:
        return b"%d" % int.from_bytes(value, sys.byteorder)


class String(LabelDecoder):
    """A C string (up to the first NUL) → its bytes."""

    name = "string"

    def decode(self, value: bytes) -> bytes:
        end = value.find(b"\0")
        return value if end < 0 else value[:end]


class Hex(LabelDecoder):
    """Bytes → lower-case hex digits."""

    name = "hex"

    def decode(self, value: bytes) -> bytes:
        return value.hex().encode()


class StaticMap(LabelDecoder):
    """A value → the one ``static_map`` gives for it; unknown values become
    ``unknown:<value>``, or stay as they are with ``allow_unknown: true``."""

    name = "static_map"

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.mapping = {k.encode(): v.encode() for k, v in (config.static_map or {}).items()}

    def check(self, size: int, given: str) -> None:
        super().check(size, given)
        if not self.config.static_map:
            raise self.error("needs a non-empty static_map")

    def decode(self, value: bytes) -> bytes:
        found = self.mapping.get(value)
        if found is not None:
            return found
        return value if self.config.allow_unknown else b"unknown:" + value


class Regexp(LabelDecoder):
    """Keeps the label set only when the value matches one of ``regexps`` (anywhere in
    it, as Go's ``MatchString``); otherwise the label set is dropped."""

    name = "regexp"

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.patterns = [re.compile(p.encode()) for p in config.regexps]

    def check(self, size: int, given: str) -> None:
        super().check(size, given)
        if not self.patterns:
            raise self.error("needs regexps: a list of patterns")

    def output(self, given: str) -> str:
        return given

    def decode(self, value: bytes) -> bytes | None:
        return value if any(p.search(value) for p in self.patterns) else None


class Errno(LabelDecoder):
    """An errno number → its name (``ENOENT``), or ``unknown:<n>``."""

    name = "errno"
    takes = NUMBER

    def decode(self, value: bytes) -> bytes:
        n = _number(value)
        name = errno_names.errorcode.get(n)
        return name.encode() if name else b"unknown:%d" % n


class Syscall(LabelDecoder):
    """A system call number (this machine's architecture) → its name, or
    ``unknown_syscall:<n>``."""

    name = "syscall"
    takes = NUMBER

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        # The generated table is the tools' (src/bpfloom/tools/syscalls.py).
        from ..tools.syscalls import syscall_table

        self.table = {nr: name.encode() for nr, name in syscall_table().items()}

    def decode(self, value: bytes) -> bytes:
        n = _number(value)
        return self.table.get(n) or b"unknown_syscall:%d" % n


class InetIP(LabelDecoder):
    """4 or 16 raw bytes (network order) → an IPv4 or IPv6 address; an IPv4-mapped
    IPv6 address prints as IPv4, as Go's ``net.IP`` does."""

    name = "inet_ip"
    takes = RAW
    sizes = (4, 16)

    def decode(self, value: bytes) -> bytes:
        address = ipaddress.ip_address(value)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return str(address).encode()


class IfName(LabelDecoder):
    """A network interface index (u32, the first 4 bytes) → its name in this network
    namespace, or ``unknown:<index>``."""

    name = "ifname"
    takes = RAW
    sizes = (4, 8)

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.cache: dict[int, bytes] = {}

    def decode(self, value: bytes) -> bytes:
        index = int.from_bytes(value[:4], sys.byteorder)
        name = self.cache.get(index)
        if name is None:
            try:
                name = os.fsencode(socket.if_indextoname(index))
            except OSError:
                return b"unknown:%d" % index  # gone, or not yet: look again next time
            self.cache[index] = name
        return name


class MajorMinor(LabelDecoder):
    """A device number as the kernel encodes it (``new_encode_dev``, u32) → the device
    name in /proc/partitions (``sda``, ``loop0``), or ``unknown:<major>:<minor>``."""

    name = "majorminor"
    takes = RAW
    sizes = (4, 8)
    partitions = "/proc/partitions"

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.cache: dict[tuple[int, int], bytes] = {}

    def decode(self, value: bytes) -> bytes:
        dev = int.from_bytes(value[:4], sys.byteorder)
        # new_decode_dev() in include/linux/kdev_t.h
        major = (dev & 0xFFF00) >> 8
        minor = (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
        name = self.cache.get((major, minor))
        if name is None:
            self.cache.update(_read_partitions(self.partitions))
            name = self.cache.get((major, minor))
        return name if name is not None else b"unknown:%d:%d" % (major, minor)


def _read_partitions(path: str) -> dict[tuple[int, int], bytes]:
    found: dict[tuple[int, int], bytes] = {}
    try:
        with open(path, "rb") as f:
            for line in f.read(1 << 20).splitlines():
                fields = line.split()
                if len(fields) == 4 and fields[0].isdigit() and fields[1].isdigit():
                    found[(int(fields[0]), int(fields[1]))] = fields[3]
    except OSError:
        pass
    return found


class CGroup(LabelDecoder):
    """A cgroup id (``bpf_get_current_cgroup_id()``, after ``uint``) → the cgroup's
    directory (``/sys/fs/cgroup/system.slice/ssh.service``), or
    ``unknown_cgroup_id:<id>``.

    The id is a cgroup v2 directory's inode number (its kernfs node id), so only the
    cgroup2 mount is walked (``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified`` in hybrid
    set-ups), never crossing into another file system: inode numbers of other mounts
    would collide. The tree is walked again on a miss, at most once a second and over
    at most ``MAX_DIRS`` directories, so unknown ids cannot make every scrape walk it.
    """

    name = "cgroup"
    takes = NUMBER
    MAX_DIRS = 100_000

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.cache: dict[int, bytes] = {}
        self.walked = 0.0

    def decode(self, value: bytes) -> bytes:
        cgroup_id = _number(value)
        path = self.cache.get(cgroup_id)
        if path is None and time.monotonic() - self.walked >= 1.0:
            self.walked = time.monotonic()
            self.cache = _cgroup_ids(cgroup2_mount(), self.MAX_DIRS)
            path = self.cache.get(cgroup_id)
        return path if path is not None else b"unknown_cgroup_id:%d" % cgroup_id


def cgroup2_mount(mounts: str = "/proc/self/mounts") -> str:
    """Where the cgroup v2 hierarchy is mounted (the first cgroup2 mount listed)."""
    try:
        with open(mounts, "rb") as f:
            for line in f.read(1 << 20).splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2] == b"cgroup2":
                    # the mounts file writes spaces and such as octal escapes (\040)
                    path = re.sub(rb"\\\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[1])
                    return os.fsdecode(path)
    except OSError:
        pass
    return "/sys/fs/cgroup"


def _cgroup_ids(root: str, limit: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    try:
        device = os.stat(root).st_dev
    except OSError:
        return found
    for top, dirs, _ in os.walk(root):
        try:
            info = os.stat(top)
        except OSError:
            continue
        if info.st_dev != device:
            dirs.clear()  # another file system mounted inside: not cgroup2's ids
            continue
        found[info.st_ino] = os.fsencode(top)
        if len(found) >= limit:
            break
        dirs.sort()
    return found


class KallSyms:
    """/proc/kallsyms, read once: addresses → symbol names, names → addresses.

    Readable addresses need root (or CAP_SYSLOG with kptr_restrict allowing it);
    otherwise the kernel shows zeros and ``load()`` refuses, with the reason.
    """

    path = "/proc/kallsyms"
    _lock = threading.Lock()
    _loaded: ClassVar[KallSyms | None] = None

    def __init__(self, addresses: list[int], names: list[bytes], by_name: dict[str, int]):
        self.addresses = addresses
        self.names = names
        self.by_name = by_name

    @classmethod
    def load(cls) -> KallSyms:
        with cls._lock:
            if cls._loaded is None:
                cls._loaded = cls._read()
            return cls._loaded

    @classmethod
    def _read(cls) -> KallSyms:
        try:
            with open(cls.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ExportConfigError(f"cannot read {cls.path}: {exc.strerror}") from exc
        rows: list[tuple[int, bytes]] = []
        by_name: dict[str, int] = {}
        for line in data.splitlines():
            fields = line.split(None, 3)
            if len(fields) < 3:
                continue
            try:
                address = int(fields[0], 16)
            except ValueError:
                continue
            name = fields[2]
            if len(fields) == 4:  # a module symbol: "name\t[module]", as ebpf_exporter shows
                name = name + b"\t" + fields[3].strip()
            rows.append((address, name))
            by_name.setdefault(fields[2].decode("utf-8", "replace"), address)
        if not rows or not any(address for address, _ in rows):
            raise ExportConfigError(
                f"{cls.path} shows no addresses (run as root, or lower "
                "kernel.kptr_restrict): ksym and kaddrs need them"
            )
        rows.sort()
        return cls([a for a, _ in rows], [n for _, n in rows], by_name)

    def symbol(self, address: int) -> bytes | None:
        """The symbol ``address`` is in (the last one at or below it)."""
        i = bisect.bisect_right(self.addresses, address) - 1
        if address == 0 or i < 0:
            return None
        return self.names[i]


class KSym(LabelDecoder):
    """A kernel address (u64) → the function it is in, from /proc/kallsyms, or
    ``unknown_addr:0x<address>``."""

    name = "ksym"
    takes = RAW
    sizes = (8,)

    def check(self, size: int, given: str) -> None:
        super().check(size, given)
        try:
            self.kallsyms = KallSyms.load()
        except ExportConfigError as exc:
            raise self.error(str(exc)) from None

    def decode(self, value: bytes) -> bytes:
        address = int.from_bytes(value, sys.byteorder)
        name = self.kallsyms.symbol(address)
        return name if name is not None else b"unknown_addr:0x%x" % address


class DecoderChain:
    """A label's decoders, built and checked once; ``decode(raw)`` gives the label
    value (``str``) or None when a step drops the label set."""

    def __init__(self, label: LabelConfig, size: int) -> None:
        self.label = label
        self.size = size
        self.steps: list[LabelDecoder] = []
        given = RAW
        for config in label.decoders:
            cls = LabelDecoder.registry.get(config.name)
            if cls is None:
                known = ", ".join(sorted(LabelDecoder.registry))
                raise config.where.error(f"unknown decoder {config.name!r}; known: {known}")
            step = cls(config)
            step.check(size, given)
            given = step.output(given)
            self.steps.append(step)

    def decode(self, raw: bytes) -> str | None:
        value = raw
        for step in self.steps:
            decoded = step.decode(value)
            if decoded is None:
                return None
            value = decoded
        # Label values must be UTF-8; bytes that are not show as \xNN escapes.
        return value.decode("utf-8", "backslashreplace")


def decoder_names() -> Sequence[str]:
    """Every decoder name a config may use."""
    return sorted(LabelDecoder.registry)
