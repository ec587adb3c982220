/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * shapes.h - the decoding test program, shared by two objects:
 *
 *   shapes.bpf.o      `struct shapes` is only ever a local variable or a ring
 *                     buffer slot, so clang leaves it out of BTF: the runtime
 *                     must decode it from DWARF.
 *   shapes_btf.bpf.o  the same plus one unused global `struct shapes *`, which
 *                     puts the struct into BTF.
 *
 * Everything (types, maps, globals, programs) lives here so that the two
 * objects cannot drift apart; the .bpf.c files only add the licence and, for
 * the BTF variant, the anchor global.
 *
 * Emitters (each run increments `emit_count` once):
 *   tp_getpgid   SEC("tp/syscalls/sys_enter_getpgid"): when the caller's tgid
 *                is `target_pid` (0 = any process), builds one event on the
 *                stack and writes it both to ring buffer `rb` (bpfloom_output)
 *                and to perf event array `pb` (this CPU). Trigger: os.getpgid(0).
 *   emit_shapes  SEC("syscall"): run with BPF_PROG_TEST_RUN (no ctx needed);
 *                reserves, fills and submits one event in `rb` only (syscall
 *                programs cannot use perf event output). retval 0 = emitted,
 *                1 = ring full (counted in bpfloom_drops).
 *
 * Known values of every `struct shapes` (x86-64, little-endian; 240 bytes.
 * A perf sample of it is 244 bytes: perf pads raw data to 8 bytes with its
 * u32 size header, so decode by struct size, not by sample size):
 *
 *   field                    value
 *   ----------------------   -------------------------------------------------
 *   magic                    0xfeedfacecafebeef
 *   source                   1 = tp_getpgid, 2 = emit_shapes
 *   pid                      tgid of the process that ran the program
 *   s8                       -128
 *   u8                       255
 *   s16                      -32768
 *   u16                      65535
 *   s32                      -2147483648  (INT32_MIN)
 *   u32                      4294967295   (UINT32_MAX)
 *   s64                      -9223372036854775808  (INT64_MIN)
 *   u64                      18446744073709551615  (UINT64_MAX)
 *   flag                     true
 *   name[16]                 "hello", then NUL, then garbage; all 16 bytes:
 *                            b"hello\0GARBAGE\xff\x01Z"
 *   full[8]                  "ABCDEFGH" (all 8 bytes used, no NUL)
 *   ints[4]                  [-1, 0, 1, 2147483647]
 *   grid[2][3] (u16)         [[1, 2, 3], [400, 500, 65535]]
 *   inner.tag (u16)          0xbeef
 *   inner.pt.x, inner.pt.y   -7, 7
 *   inner.flags[3] (u8)      [1, 2, 3]
 *   val (union)              u = 0x41424344fffffffe, so i = -2 and
 *                            bytes = [0xfe, 0xff, 0xff, 0xff, 0x44, 0x43, 0x42, 0x41]
 *   color                    SHAPE_BLUE (4)
 *   color_unknown            42 (no enumerator has this value)
 *   bf_u3  (u32 : 3)         5
 *   bf_u12 (u32 : 12)        0xabc (2748)   bits 3..14, crosses byte 0/1
 *   bf_s5  (s32 : 5)         -11            bits 15..19, crosses byte 1/2
 *   bf_s7  (s32 : 7)         -50            bits 20..26, crosses byte 2/3
 *   bf_u1  (u32 : 1)         1              bit 27; the 32-bit unit is 0x0cead5e5
 *   id (const shape_id_t)    0xc0ffee (shape_id_t is a typedef of __u32)
 *   vol16 (volatile __u16)   0x1234
 *   cv_pt (const volatile shape_point_t)   x = -100, y = 100
 *   anon_a, anon_b           0xaaaa, 0x5555  (members of an anonymous struct)
 *   anon_word                0xdeadbeef      (anonymous union; anon_bytes =
 *                                             [0xef, 0xbe, 0xad, 0xde])
 *   globals.*                echo of the globals below, read at emission
 *   padding                  zero (the event is zeroed before it is filled)
 *
 * Globals, echoed into `globals` (default values; tests set them before load):
 *
 *   section  name        type                        default
 *   -------  ----------  --------------------------  ----------------------
 *   .rodata  g_s8        const volatile __s8         -5
 *   .rodata  g_u8        const volatile __u8         250
 *   .rodata  g_s16       const volatile __s16        -300
 *   .rodata  g_u16       const volatile __u16        60000
 *   .rodata  g_s32       const volatile __s32        -70000
 *   .rodata  g_s64       const volatile __s64        -5000000000
 *   .rodata  g_u32       const volatile __u32        4000000000
 *   .rodata  g_u64       const volatile __u64        18000000000000000000
 *   .rodata  g_bool      const volatile bool         false
 *   .rodata  g_str       const volatile char[16]     "default"
 *   .rodata  g_color     const volatile enum shape_color   SHAPE_GREEN (2)
 *   .rodata  target_pid  const volatile int          0 (filter, not echoed)
 *   .data    data_value  __u64                       0x1122334455667788
 *   .bss     emit_count  __u64                       0; +1 per program run,
 *                                                    echoed after the increment
 * (bpfloom.h adds .rodata bpfloom_wakeup_flags and the map bpfloom_drops.)
 *
 * Maps for map tests; no program touches them:
 *   by_key  HASH          struct shape_key -> struct shape_val, 128 entries
 *   arr     ARRAY         __u32 -> __u64, 8 entries
 *   pcpu    PERCPU_ARRAY  __u32 -> struct pcpu_stat, 4 entries
 */
#ifndef __SHAPES_H
#define __SHAPES_H

#include "bpfloom.h"

#define SHAPES_MAGIC 0xfeedfacecafebeefULL

enum shape_color {
	SHAPE_RED = 1,
	SHAPE_GREEN = 2,
	SHAPE_BLUE = 4,
};

enum shape_source {
	SHAPES_FROM_TRACEPOINT = 1,
	SHAPES_FROM_SYSCALL = 2,
};

typedef __u32 shape_id_t;

typedef struct shape_point {
	__s32 x;
	__s32 y;
} shape_point_t;

struct shape_inner {
	__u16 tag;
	struct shape_point pt;
	__u8 flags[3];
};

union shape_value {
	__u64 u;
	__s32 i;
	__u8 bytes[8];
};

/* Echo of the globals, so tests can see that setting them before load worked. */
struct shapes_globals {
	__s8 g_s8;
	__u8 g_u8;
	__s16 g_s16;
	__u16 g_u16;
	__s32 g_s32;
	__u32 g_u32;
	__s64 g_s64;
	__u64 g_u64;
	bool g_bool;
	char g_str[16];
	enum shape_color g_color;
	__u64 data_value;
	__u64 emit_count;
};

struct shapes {
	__u64 magic;
	__u32 source; /* enum shape_source */
	__u32 pid;
	__s8 s8;
	__u8 u8;
	__s16 s16;
	__u16 u16;
	__s32 s32;
	__u32 u32;
	__s64 s64;
	__u64 u64;
	bool flag;
	char name[16];
	char full[8];
	__s32 ints[4];
	__u16 grid[2][3];
	struct shape_inner inner;
	union shape_value val;
	enum shape_color color;
	enum shape_color color_unknown;
	__u32 bf_u3 : 3;
	__u32 bf_u12 : 12;
	__s32 bf_s5 : 5;
	__s32 bf_s7 : 7;
	__u32 bf_u1 : 1;
	const shape_id_t id;
	volatile __u16 vol16;
	const volatile shape_point_t cv_pt;
	struct {
		__u16 anon_a;
		__u16 anon_b;
	};
	union {
		__u32 anon_word;
		__u8 anon_bytes[4];
	};
	struct shapes_globals globals;
};

/* Map key/value types: in BTF through __type(), unlike struct shapes. */
struct shape_key {
	__u32 a;
	__u16 b;
	char tag[6];
};

struct shape_val {
	__u64 count;
	__s32 delta;
	char label[12];
};

struct pcpu_stat {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} rb SEC(".maps");

/* No __type(): a perf event array holds perf event fds, one per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} pb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, struct shape_key);
	__type(value, struct shape_val);
} by_key SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} arr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct pcpu_stat);
} pcpu SEC(".maps");

const volatile __s8 g_s8 = -5;
const volatile __u8 g_u8 = 250;
const volatile __s16 g_s16 = -300;
const volatile __u16 g_u16 = 60000;
const volatile __s32 g_s32 = -70000;
const volatile __u32 g_u32 = 4000000000U;
const volatile __s64 g_s64 = -5000000000LL;
const volatile __u64 g_u64 = 18000000000000000000ULL;
const volatile bool g_bool = false;
const volatile char g_str[16] = "default";
const volatile enum shape_color g_color = SHAPE_GREEN;

/* Filter of tp_getpgid: only this tgid; 0 = any process. */
const volatile int target_pid = 0;

__u64 data_value = 0x1122334455667788ULL;
__u64 emit_count;

/*
 * Fills *e with the known values above. Always inlined: an out-of-line
 * function would put its `struct shapes *` parameter, and so the struct,
 * into BTF (clang emits BTF for every function it keeps).
 */
static __always_inline void shapes_fill(struct shapes *e, __u32 source, __u32 pid)
{
	/* Zero first: a ring buffer slot holds stale bytes, padding included. */
	__builtin_memset(e, 0, sizeof(*e));

	e->magic = SHAPES_MAGIC;
	e->source = source;
	e->pid = pid;

	e->s8 = -128;
	e->u8 = 255;
	e->s16 = -32768;
	e->u16 = 65535;
	e->s32 = -2147483647 - 1;
	e->u32 = 4294967295U;
	e->s64 = -9223372036854775807LL - 1;
	e->u64 = 18446744073709551615ULL;
	e->flag = true;

	/* 16 bytes with garbage after the NUL; the string literal's own NUL is not copied. */
	__builtin_memcpy(e->name, "hello\0GARBAGE\xff\x01Z", sizeof(e->name));
	__builtin_memcpy(e->full, "ABCDEFGH", sizeof(e->full));

	e->ints[0] = -1;
	e->ints[1] = 0;
	e->ints[2] = 1;
	e->ints[3] = 2147483647;

	e->grid[0][0] = 1;
	e->grid[0][1] = 2;
	e->grid[0][2] = 3;
	e->grid[1][0] = 400;
	e->grid[1][1] = 500;
	e->grid[1][2] = 65535;

	e->inner.tag = 0xbeef;
	e->inner.pt.x = -7;
	e->inner.pt.y = 7;
	e->inner.flags[0] = 1;
	e->inner.flags[1] = 2;
	e->inner.flags[2] = 3;

	e->val.u = 0x41424344fffffffeULL;

	e->color = SHAPE_BLUE;
	e->color_unknown = (enum shape_color)42;

	e->bf_u3 = 5;
	e->bf_u12 = 0xabc;
	e->bf_s5 = -11;
	e->bf_s7 = -50;
	e->bf_u1 = 1;

	/* The qualifiers are there for the type decoder; the fill writes through them. */
	*(shape_id_t *)&e->id = 0xc0ffee;
	e->vol16 = 0x1234;
	((shape_point_t *)&e->cv_pt)->x = -100;
	((shape_point_t *)&e->cv_pt)->y = 100;

	e->anon_a = 0xaaaa;
	e->anon_b = 0x5555;
	e->anon_word = 0xdeadbeef;

	e->globals.g_s8 = g_s8;
	e->globals.g_u8 = g_u8;
	e->globals.g_s16 = g_s16;
	e->globals.g_u16 = g_u16;
	e->globals.g_s32 = g_s32;
	e->globals.g_u32 = g_u32;
	e->globals.g_s64 = g_s64;
	e->globals.g_u64 = g_u64;
	e->globals.g_bool = g_bool;
#pragma unroll
	for (int i = 0; i < sizeof(e->globals.g_str); i++)
		e->globals.g_str[i] = g_str[i];
	e->globals.g_color = g_color;
	e->globals.data_value = data_value;
	e->globals.emit_count = emit_count;
}

/*
 * Counts one program run. The result of __sync_fetch_and_add is not used, so
 * clang needs no -mcpu=v3 (BPF_FETCH); a concurrent run on another CPU may
 * make two events echo the same count, which tests running alone never see.
 */
static __always_inline void shapes_count_run(void)
{
	__sync_fetch_and_add(&emit_count, 1);
}

SEC("tp/syscalls/sys_enter_getpgid")
int tp_getpgid(struct trace_event_raw_sys_enter *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct shapes e;

	if (target_pid && tgid != target_pid)
		return 0;

	shapes_count_run();
	/*
	 * Built once on the stack and copied to both transports, so that each
	 * receives the event even when the other is full.
	 */
	shapes_fill(&e, SHAPES_FROM_TRACEPOINT, tgid);
	bpfloom_output(&rb, &e, sizeof(e));
	bpf_perf_event_output(ctx, &pb, BPF_F_CURRENT_CPU, &e, sizeof(e));
	return 0;
}

SEC("syscall")
int emit_shapes(void *ctx)
{
	struct shapes *e;

	shapes_count_run();
	e = bpfloom_reserve(&rb, sizeof(*e));
	if (!e)
		return 1;
	shapes_fill(e, SHAPES_FROM_SYSCALL, bpf_get_current_pid_tgid() >> 32);
	bpfloom_submit(e);
	return 0;
}

#endif /* __SHAPES_H */
