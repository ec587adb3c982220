"""The one module that talks to libbpf (the system's ``libbpf.so.1``) through ctypes.

Nothing else in bpfloom imports ctypes for libbpf: the rest of the package calls the
small typed functions here. libbpf >= 1.0 semantics are assumed: functions that return
a pointer return NULL and set ``errno``; functions that return ``int`` return
``-errno``. ``check()`` and ``check_ptr()`` turn both into ``OSError`` with the errno,
which callers wrap into bpfloom's own errors with context (program, map, hook).

libbpf's log output (including the verifier log printed when a program fails to load)
goes through a print callback installed once: messages are kept in a bounded buffer
(``recent_log()``) so that errors can quote the verifier's last lines, and are never
written to the user's terminal behind their back.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_int,
    c_size_t,
    c_uint,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any


def _load_libbpf() -> ctypes.CDLL:
    """libbpf by its soname; ``find_library`` (which runs ``ldconfig -p``, ~10 ms) only
    when the soname is not on the loader's path."""
    try:
        return ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        pass
    name = ctypes.util.find_library("bpf")
    try:
        if name is None:
            raise OSError("not found")
        return ctypes.CDLL(name, use_errno=True)
    except OSError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "cannot load libbpf (libbpf.so.1): install the system library (Debian: libbpf1)"
        ) from exc


lib = _load_libbpf()

_libc = ctypes.CDLL(None, use_errno=True)

ObjPtr = c_void_p
ProgPtr = c_void_p
MapPtr = c_void_p
LinkPtr = c_void_p
BtfPtr = c_void_p


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


class OpenOpts(Structure):
    """``struct bpf_object_open_opts`` (libbpf 1.1 layout, up to ``kernel_log_level``)."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", c_bool),
        ("pin_root_path", c_char_p),
        ("_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_void_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class UprobeOpts(Structure):
    """``struct bpf_uprobe_opts`` (libbpf 1.1)."""

    _fields_ = [
        ("sz", c_size_t),
        ("ref_ctr_offset", c_size_t),
        ("bpf_cookie", c_uint64),
        ("retprobe", c_bool),
        ("func_name", c_char_p),
    ]


class TcHook(Structure):
    """``struct bpf_tc_hook``."""

    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_uint32),
    ]


class TcOpts(Structure):
    """``struct bpf_tc_opts``."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
    ]


class TestRunOpts(Structure):
    """``struct bpf_test_run_opts``."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class LinkCreateOpts(Structure):
    """``struct bpf_link_create_opts`` (libbpf 1.1 layout, 64 bytes: the union's
    largest member, ``kprobe_multi``, is two u32 and three pointers)."""

    _fields_ = [
        ("sz", c_size_t),
        ("flags", c_uint32),
        ("iter_info", c_void_p),
        ("iter_info_len", c_uint32),
        ("target_btf_id", c_uint32),
        ("_union", c_uint64 * 4),
    ]


BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2

# enum bpf_prog_type and enum bpf_attach_type values (include/uapi/linux/bpf.h)
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_XDP = 6
BPF_XDP = 37
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47  # enum bpf_attach_type, Linux 6.6+
# XDP attach flags (include/uapi/linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

object_open_mem = _fn("bpf_object__open_mem", ObjPtr, c_void_p, c_size_t, POINTER(OpenOpts))
object_load = _fn("bpf_object__load", c_int, ObjPtr)
object_close = _fn("bpf_object__close", None, ObjPtr)
object_btf = _fn("bpf_object__btf", BtfPtr, ObjPtr)
object_next_program = _fn("bpf_object__next_program", ProgPtr, ObjPtr, ProgPtr)
object_next_map = _fn("bpf_object__next_map", MapPtr, ObjPtr, MapPtr)

program_name = _fn("bpf_program__name", c_char_p, ProgPtr)
program_section_name = _fn("bpf_program__section_name", c_char_p, ProgPtr)
program_fd = _fn("bpf_program__fd", c_int, ProgPtr)
program_type = _fn("bpf_program__type", c_uint, ProgPtr)
program_expected_attach_type = _fn("bpf_program__expected_attach_type", c_uint, ProgPtr)
program_insns = _fn("bpf_program__insns", c_void_p, ProgPtr)
program_insn_cnt = _fn("bpf_program__insn_cnt", c_size_t, ProgPtr)
prog_type_str = _fn("libbpf_bpf_prog_type_str", c_char_p, c_uint)
attach_type_str = _fn("libbpf_bpf_attach_type_str", c_char_p, c_uint)
program_autoload = _fn("bpf_program__autoload", c_bool, ProgPtr)
program_set_autoload = _fn("bpf_program__set_autoload", c_int, ProgPtr, c_bool)
program_attach = _fn("bpf_program__attach", LinkPtr, ProgPtr)
program_attach_tracepoint = _fn(
    "bpf_program__attach_tracepoint", LinkPtr, ProgPtr, c_char_p, c_char_p
)
program_attach_raw_tracepoint = _fn(
    "bpf_program__attach_raw_tracepoint", LinkPtr, ProgPtr, c_char_p
)
program_attach_uprobe_opts = _fn(
    "bpf_program__attach_uprobe_opts",
    LinkPtr,
    ProgPtr,
    c_int,
    c_char_p,
    c_size_t,
    POINTER(UprobeOpts),
)
program_attach_usdt = _fn(
    "bpf_program__attach_usdt", LinkPtr, ProgPtr, c_int, c_char_p, c_char_p, c_char_p, c_void_p
)
bpf_link_create = _fn("bpf_link_create", c_int, c_int, c_int, c_uint, POINTER(LinkCreateOpts))
link_destroy = _fn("bpf_link__destroy", c_int, LinkPtr)

map_name = _fn("bpf_map__name", c_char_p, MapPtr)
map_type = _fn("bpf_map__type", c_uint, MapPtr)
map_fd = _fn("bpf_map__fd", c_int, MapPtr)
map_key_size = _fn("bpf_map__key_size", c_uint32, MapPtr)
map_value_size = _fn("bpf_map__value_size", c_uint32, MapPtr)
map_max_entries = _fn("bpf_map__max_entries", c_uint32, MapPtr)
map_set_max_entries = _fn("bpf_map__set_max_entries", c_int, MapPtr, c_uint32)
map_btf_key_type_id = _fn("bpf_map__btf_key_type_id", c_uint32, MapPtr)
map_btf_value_type_id = _fn("bpf_map__btf_value_type_id", c_uint32, MapPtr)
map_initial_value = _fn("bpf_map__initial_value", c_void_p, MapPtr, POINTER(c_size_t))
map_is_internal = _fn("bpf_map__is_internal", c_bool, MapPtr)
map_map_flags = _fn("bpf_map__map_flags", c_uint32, MapPtr)

btf_raw_data = _fn("btf__raw_data", c_void_p, BtfPtr, POINTER(c_uint32))
btf_load_vmlinux = _fn("btf__load_vmlinux_btf", BtfPtr)
btf_find_by_name_kind = _fn("btf__find_by_name_kind", ctypes.c_int32, BtfPtr, c_char_p, c_uint32)
btf_free = _fn("btf__free", None, BtfPtr)

bpf_map_lookup_elem = _fn("bpf_map_lookup_elem", c_int, c_int, c_void_p, c_void_p)
bpf_map_update_elem = _fn("bpf_map_update_elem", c_int, c_int, c_void_p, c_void_p, c_uint64)
bpf_map_delete_elem = _fn("bpf_map_delete_elem", c_int, c_int, c_void_p)
bpf_map_get_next_key = _fn("bpf_map_get_next_key", c_int, c_int, c_void_p, c_void_p)
bpf_prog_test_run_opts = _fn("bpf_prog_test_run_opts", c_int, c_int, POINTER(TestRunOpts))

tc_hook_create = _fn("bpf_tc_hook_create", c_int, POINTER(TcHook))
tc_hook_destroy = _fn("bpf_tc_hook_destroy", c_int, POINTER(TcHook))
tc_attach = _fn("bpf_tc_attach", c_int, POINTER(TcHook), POINTER(TcOpts))
tc_detach = _fn("bpf_tc_detach", c_int, POINTER(TcHook), POINTER(TcOpts))

num_possible_cpus = _fn("libbpf_num_possible_cpus", c_int)

# --- errors ---------------------------------------------------------------------------


_libbpf_strerror = _fn("libbpf_strerror", c_int, c_int, c_char_p, c_size_t)


def strerror(err: int) -> str:
    """``os.strerror``, but libbpf's own codes (4000..4099, e.g. 4001 "BPF object format
    invalid") by libbpf's names instead of "Unknown error 4001"."""
    if 4000 <= err < 4100:
        buf = ctypes.create_string_buffer(128)
        if _libbpf_strerror(err, buf, len(buf)) == 0:
            return buf.value.decode("utf-8", "replace")
    return os.strerror(err)


def check(ret: int, what: str) -> int:
    """Return ``ret`` if non-negative, else raise ``OSError(-ret)`` mentioning ``what``."""
    if ret < 0:
        err = -ret
        raise OSError(err, f"{what}: {strerror(err)}")
    return ret


def check_ptr(ptr: int | None, what: str) -> int:
    """Return a non-NULL pointer, else raise ``OSError(errno)`` mentioning ``what``."""
    if not ptr:
        err = ctypes.get_errno() or 22  # EINVAL when libbpf did not say
        raise OSError(err, f"{what}: {strerror(err)}")
    return ptr


def cstr(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


# --- the log callback -------------------------------------------------------------------

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
_PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = c_int
_vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]

_log_lock = threading.Lock()
_log: collections.deque[str] = collections.deque(maxlen=4000)
_log_seq = 0


# A va_list argument is passed as a pointer to the caller's va_list struct, on
# x86-64 (24 bytes, SysV ABI) as on arm64 (32 bytes, AAPCS64): copying those bytes is
# what va_copy() does there, which lets a message too long for the first buffer be
# formatted again in a larger one.
_VA_LIST_SIZE = 32 if os.uname().machine == "aarch64" else 24
_LOG_MESSAGE_MAX = 16 << 20  # a verifier log may be megabytes; we keep its end


def _on_print(level: int, fmt: bytes, va_list: int) -> int:
    global _log_seq
    if level == LIBBPF_DEBUG:
        return 0
    saved = ctypes.string_at(va_list, _VA_LIST_SIZE)
    buf = ctypes.create_string_buffer(8192)
    needed = _vsnprintf(buf, len(buf), fmt, va_list)
    if needed >= len(buf):
        # The verifier's log arrives as one message: its last lines say why.
        ctypes.memmove(va_list, saved, _VA_LIST_SIZE)
        buf = ctypes.create_string_buffer(min(needed, _LOG_MESSAGE_MAX) + 1)
        _vsnprintf(buf, len(buf), fmt, va_list)
    text = buf.value.decode("utf-8", "replace")
    with _log_lock:
        for line in text.splitlines():
            _log.append(line)
            _log_seq += 1
    return 0


_print_callback = _PRINT_FN(_on_print)  # kept referenced for the life of the process
_set_print = _fn("libbpf_set_print", c_void_p, _PRINT_FN)
_set_print(_print_callback)


def log_mark() -> int:
    """A position in libbpf's log; pass it to ``log_since`` to get what came after."""
    with _log_lock:
        return _log_seq


def log_since(mark: int) -> list[str]:
    """libbpf's log lines printed after ``mark`` (bounded to the last few thousand)."""
    with _log_lock:
        n = min(_log_seq - mark, len(_log))
        return list(_log)[len(_log) - n :] if n > 0 else []


def buffer_at(address: int, size: int) -> Any:
    """A writable ctypes char array over ``size`` bytes at ``address`` (libbpf memory)."""
    return (ctypes.c_char * size).from_address(address)


def bytes_at(address: int, size: int) -> bytes:
    return ctypes.string_at(address, size)


def new_buffer(size: int) -> Any:
    return ctypes.create_string_buffer(max(size, 1))


def address_of(buf: Any) -> int:
    return ctypes.addressof(buf)


def btf_raw(btf: int) -> bytes:
    """The raw bytes of a ``struct btf`` (as libbpf fixed it up after opening)."""
    size = c_uint32(0)
    ptr = check_ptr(btf_raw_data(btf, ctypes.byref(size)), "btf__raw_data")
    return ctypes.string_at(ptr, size.value)


def map_initial_bytes(map_ptr: int) -> tuple[int, int]:
    """Address and size of an internal map's initial value (libbpf's mmap'd image)."""
    size = c_size_t(0)
    addr = map_initial_value(map_ptr, ctypes.byref(size))
    return (addr or 0), size.value


BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10
_MAP_FIXED = 0x10
_mmap = _libc.mmap
_mmap.restype = c_void_p
_mmap.argtypes = [c_void_p, c_size_t, c_int, c_int, c_int, ctypes.c_long]


def remap_internal_map(map_ptr: int) -> None:
    """Point an internal map's memory image (``bpf_map__initial_value``) at the
    kernel's map, so reads and writes after load are the live values the programs see.

    libbpf 1.1 does this only in ``bpf_object__load_skeleton``; ``bpf_object__load``
    leaves the pre-load anonymous copy in place. Same steps as the skeleton loader:
    ``mmap(map->mmaped, size, prot, MAP_SHARED | MAP_FIXED, map_fd, 0)``, read-only for
    maps the programs cannot write (``.rodata``, frozen).
    """
    import mmap

    flags = int(map_map_flags(map_ptr))
    if not flags & BPF_F_MMAPABLE:
        return
    addr, size = map_initial_bytes(map_ptr)
    if not addr:
        return
    length = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    prot = mmap.PROT_READ
    if not flags & BPF_F_RDONLY_PROG:
        prot |= mmap.PROT_WRITE
    got = _mmap(addr, length, prot, mmap.MAP_SHARED | _MAP_FIXED, map_fd(map_ptr), 0)
    if got != addr:
        err = ctypes.get_errno() or 22
        raise OSError(err, f"mmap of {cstr(map_name(map_ptr))}: {os.strerror(err)}")


def open_mem(image: bytes, name: str) -> tuple[int, Any]:
    """``bpf_object__open_mem`` of an object file's bytes, named ``name`` as libbpf
    would name the file (its maps' names derive from it). Returns the object and the
    buffer libbpf reads from, which must outlive the object."""
    buffer = ctypes.create_string_buffer(image, len(image))
    opts = OpenOpts(sz=ctypes.sizeof(OpenOpts), object_name=os.fsencode(name))
    ptr = object_open_mem(buffer, len(image), ctypes.byref(opts))
    return check_ptr(ptr, "open"), buffer


def attach_uprobe(
    prog: int, pid: int, binary: str, offset: int, func_name: str | None, retprobe: bool
) -> int:
    opts = UprobeOpts(sz=ctypes.sizeof(UprobeOpts), retprobe=retprobe)
    if func_name:
        opts.func_name = func_name.encode()
    return check_ptr(
        program_attach_uprobe_opts(prog, pid, os.fsencode(binary), offset, ctypes.byref(opts)),
        "attach uprobe",
    )


def attach_usdt(prog: int, pid: int, binary: str, provider: str, name: str) -> int:
    """``bpf_program__attach_usdt``: a link over one uprobe per call site of USDT probe
    ``provider:name`` in ``binary`` (``pid`` -1: every process). The object must
    include libbpf's ``<bpf/usdt.bpf.h>``, whose maps libbpf fills with the argument
    specs of each call site."""
    return check_ptr(
        program_attach_usdt(prog, pid, os.fsencode(binary), provider.encode(), name.encode(), None),
        "attach usdt",
    )


def xdp_link_create(prog_fd: int, ifindex: int, flags: int) -> int:
    """A BPF link attaching an XDP program to interface ``ifindex``; returns its fd.

    ``bpf_program__attach_xdp`` (libbpf 1.1) always passes flags 0, which lets the
    kernel pick the mode; BPF_LINK_CREATE for BPF_XDP takes the XDP_FLAGS_*_MODE bits
    in ``link_create.flags`` (``bpf_xdp_link_attach`` in the kernel's net/core/dev.c).
    """
    opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=flags)
    return check(bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts)), "link_create")


def tcx_link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """A BPF link attaching a tc program to interface ``ifindex`` through tcx
    (``BPF_TCX_INGRESS``/``BPF_TCX_EGRESS``, Linux 6.6+); returns its fd. libbpf 1.1
    predates tcx, but its ``bpf_link_create`` passes unknown attach types through with
    the interface as the target (the kernel's ``tcx_link_attach`` reads it so). An
    older kernel answers EINVAL."""
    opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts))
    return check(bpf_link_create(prog_fd, ifindex, attach_type, ctypes.byref(opts)), "link_create")


def tc_hook(ifindex: int, attach_point: int) -> TcHook:
    return TcHook(sz=ctypes.sizeof(TcHook), ifindex=ifindex, attach_point=attach_point)


def tc_opts(prog_fd: int = 0, handle: int = 0, priority: int = 0) -> TcOpts:
    return TcOpts(sz=ctypes.sizeof(TcOpts), prog_fd=prog_fd, handle=handle, priority=priority)


def test_run(prog_fd: int, ctx: bytes | None = None, repeat: int = 0) -> int:
    """Run a program once with BPF_PROG_TEST_RUN; return its return value."""
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), repeat=repeat)
    keep = None
    if ctx:
        keep = ctypes.create_string_buffer(ctx, len(ctx))
        opts.ctx_in = ctypes.addressof(keep)
        opts.ctx_size_in = len(ctx)
    check(bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    del keep
    return int(opts.retval)


def byref(obj: Any) -> Any:
    return ctypes.byref(obj)


def load_vmlinux_btf() -> int | None:
    ptr = btf_load_vmlinux()
    return ptr or None


# --- batched map reads ------------------------------------------------------------------


class MapBatchOpts(Structure):
    """``struct bpf_map_batch_opts``."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


bpf_map_lookup_batch = _fn(
    "bpf_map_lookup_batch",
    c_int,
    c_int,
    c_void_p,
    c_void_p,
    c_void_p,
    c_void_p,
    POINTER(c_uint32),
    POINTER(MapBatchOpts),
)

_ENOENT, _ENOSPC, _EINVAL, _ENOTSUPP, _EOPNOTSUPP = 2, 28, 22, 524, 95


def map_lookup_all(
    fd: int, key_size: int, value_size: int, chunk: int, limit: int
) -> tuple[bytes, bytes, int] | None:
    """Every entry of map ``fd``, read with BPF_MAP_LOOKUP_BATCH ``chunk`` entries per
    call: (keys, values, count), keys and values packed back to back (``value_size``
    bytes per entry: for per-CPU maps, the 8-byte-aligned value times the possible
    CPUs). Reads at most ``limit`` entries (a map being refilled cannot keep us going).

    None when the kernel has no batch lookup for this map type (EINVAL on the first
    call, ENOTSUPP/EOPNOTSUPP): read it key by key then. Raises ``OSError`` otherwise.
    The batch token is opaque (a bucket index for hash maps, a key for arrays): its
    buffer is as large as either.
    """
    chunk = max(1, min(chunk, limit))
    token_size = max(key_size, 8)
    tokens = [ctypes.create_string_buffer(token_size), ctypes.create_string_buffer(token_size)]
    keys = ctypes.create_string_buffer(chunk * key_size)
    values = ctypes.create_string_buffer(chunk * value_size)
    opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
    key_parts: list[bytes] = []
    value_parts: list[bytes] = []
    total = 0
    first = True
    while total < limit:
        count = c_uint32(min(chunk, limit - total))
        in_token = None if first else tokens[0]
        ret = bpf_map_lookup_batch(
            fd, in_token, tokens[1], keys, values, ctypes.byref(count), ctypes.byref(opts)
        )
        n = count.value if ret in (0, -_ENOENT) else 0
        if ret < 0 and ret != -_ENOENT:
            if ret == -_ENOSPC and chunk < limit:
                # A hash bucket holds more entries than fit: retry with room for it.
                chunk = min(chunk * 4, limit)
                keys = ctypes.create_string_buffer(chunk * key_size)
                values = ctypes.create_string_buffer(chunk * value_size)
                continue
            if first and ret in (-_EINVAL, -_ENOTSUPP, -_EOPNOTSUPP):
                return None
            check(ret, "BPF_MAP_LOOKUP_BATCH")
        if n:
            key_parts.append(ctypes.string_at(keys, n * key_size))
            value_parts.append(ctypes.string_at(values, n * value_size))
            total += n
        if ret == -_ENOENT or n == 0:
            break
        first = False
        tokens.reverse()  # this call's out token is the next call's in token
    return b"".join(key_parts), b"".join(value_parts), total


bpf_map_lookup_and_delete_elem = _fn(
    "bpf_map_lookup_and_delete_elem", c_int, c_int, c_void_p, c_void_p
)


def map_lookup_and_delete(fd: int, key: bytes, value: Any) -> bool:
    """Read the value at ``key`` into buffer ``value`` and delete the entry, as one
    BPF_MAP_LOOKUP_AND_DELETE_ELEM (hash maps: Linux 5.14+): whatever the kernel adds
    to the entry up to its removal is in the value read. False when ``key`` is absent;
    raises ``OSError`` otherwise."""
    ret = bpf_map_lookup_and_delete_elem(fd, key, value)
    if ret == -_ENOENT:
        return False
    check(ret, "BPF_MAP_LOOKUP_AND_DELETE_ELEM")
    return True


# --- libbpf's own ring buffer consumer ----------------------------------------------------

# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
RING_BUFFER_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)
_ring_buffer_new = _fn(
    "ring_buffer__new", c_void_p, c_int, RING_BUFFER_SAMPLE_FN, c_void_p, c_void_p
)
ring_buffer_consume = _fn("ring_buffer__consume", c_int, c_void_p)
ring_buffer_free = _fn("ring_buffer__free", None, c_void_p)


def ring_buffer_new(map_fd: int, callback: Any) -> int:
    """``ring_buffer__new`` over ring buffer map ``map_fd``; ``callback`` (a
    ``RING_BUFFER_SAMPLE_FN``) must stay referenced until ``ring_buffer_free``."""
    return check_ptr(_ring_buffer_new(map_fd, callback, None, None), "ring_buffer__new")


# --- what `bpfloom doctor` asks of libbpf -------------------------------------------------

probe_prog_type = _fn("libbpf_probe_bpf_prog_type", c_int, c_uint, c_void_p)
probe_map_type = _fn("libbpf_probe_bpf_map_type", c_int, c_uint, c_void_p)
version_string = _fn("libbpf_version_string", c_char_p)
program_attach_kprobe = _fn("bpf_program__attach_kprobe", LinkPtr, ProgPtr, c_bool, c_char_p)
program_attach_perf_event = _fn("bpf_program__attach_perf_event", LinkPtr, ProgPtr, c_int)
program_set_attach_target = _fn("bpf_program__set_attach_target", c_int, ProgPtr, c_int, c_char_p)


def library_path() -> str | None:
    """The file the loaded libbpf came from (from /proc/self/maps), if found."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(maxsplit=5)[-1].strip()
                if "/libbpf.so" in path:
                    return path
    except OSError:
        pass
    return None
