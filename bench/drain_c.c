// SPDX-License-Identifier: Apache-2.0
/*
 * drain_c - the C baseline of the drain benchmark: libbpf's ring_buffer__consume.
 *
 *   drain_c OBJECT EVENTS_PER_ROUND ROUNDS
 *
 * OBJECT is bench/bpf/drain.bpf.o. Each round runs its `produce` program with
 * BPF_PROG_TEST_RUN (not timed), which writes EVENTS_PER_ROUND 32-byte records
 * into ring buffer `rb`, then times ring_buffer__consume() alone with a
 * callback that only counts (CLOCK_MONOTONIC around the call). Prints one JSON
 * line:
 *   {"consumer":"c_ring_buffer__consume","events":N,"seconds":S,
 *    "events_per_s":R,"dropped":D}
 * where N counts records consumed, S sums the timed consumes, and D is the
 * producer's `dropped` counter (failed reservations). Exits 1 with a message
 * on stderr on any failure, including N + D != EVENTS_PER_ROUND * ROUNDS.
 *
 * Built by `make bpf` (gcc -O2 -Wall ... -lbpf) against libbpf 1.1.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/bpf.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

/* Must match bench/bpf/drain.bpf.c. */
struct drain_args {
	uint64_t count;
	uint64_t flags;
};

#define RECORD_SIZE 32
/* bpf_loop()'s limit on iterations (BPF_MAX_LOOPS in kernel/bpf/bpf_iter.c). */
#define MAX_EVENTS_PER_ROUND (1ULL << 23)

static void fail(const char *fmt, ...)
{
	va_list ap;

	fputs("drain_c: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

/* libbpf's warnings (e.g. the verifier log) explain a failed load; its debug chatter does not. */
static int print_libbpf(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	return vfprintf(stderr, fmt, args);
}

static uint64_t parse_count(const char *arg, const char *what)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(arg, &end, 10);
	if (errno || end == arg || *end || v == 0 || arg[0] == '-')
		fail("%s must be a positive integer, got '%s'", what, arg);
	return v;
}

/* The trivial consumer: count, touch nothing. */
static int count_record(void *ctx, void *data, size_t size)
{
	(*(uint64_t *)ctx)++;
	return 0;
}

/* Offset of global `name` in internal map `sec` (".bss"), from the object's BTF. */
static long global_offset(struct bpf_object *obj, const char *sec, const char *name)
{
	struct btf *btf = bpf_object__btf(obj);
	const struct btf_var_secinfo *vsi;
	const struct btf_type *t;
	int id, i;

	if (!btf)
		return -1;
	id = btf__find_by_name_kind(btf, sec, BTF_KIND_DATASEC);
	if (id < 0)
		return -1;
	t = btf__type_by_id(btf, id);
	for (i = 0, vsi = btf_var_secinfos(t); i < btf_vlen(t); i++, vsi++) {
		const struct btf_type *var = btf__type_by_id(btf, vsi->type);

		if (strcmp(btf__name_by_offset(btf, var->name_off), name) == 0)
			return vsi->size == sizeof(uint64_t) ? (long)vsi->offset : -1;
	}
	return -1;
}

static uint64_t read_dropped(struct bpf_map *bss, long offset)
{
	size_t size = bpf_map__value_size(bss);
	unsigned char *value = calloc(1, size);
	uint32_t zero = 0;
	uint64_t dropped;

	if (!value)
		fail("out of memory");
	if (bpf_map_lookup_elem(bpf_map__fd(bss), &zero, value))
		fail("reading .bss: %s", strerror(errno));
	memcpy(&dropped, value + offset, sizeof(dropped));
	free(value);
	return dropped;
}

int main(int argc, char **argv)
{
	struct bpf_object *obj;
	struct bpf_program *prog;
	struct bpf_map *ring_map, *bss;
	struct ring_buffer *ring;
	uint64_t per_round, rounds, consumed = 0, dropped;
	double seconds = 0.0;
	long dropped_off;
	int err;

	if (argc != 4) {
		fprintf(stderr, "usage: %s OBJECT EVENTS_PER_ROUND ROUNDS\n", argv[0]);
		return 2;
	}
	per_round = parse_count(argv[2], "EVENTS_PER_ROUND");
	rounds = parse_count(argv[3], "ROUNDS");
	if (per_round > MAX_EVENTS_PER_ROUND)
		fail("EVENTS_PER_ROUND %" PRIu64 " is above bpf_loop's limit of %llu",
		     per_round, MAX_EVENTS_PER_ROUND);

	libbpf_set_print(print_libbpf);

	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj)
		fail("opening %s: %s", argv[1], strerror(errno));
	err = bpf_object__load(obj);
	if (err)
		fail("loading %s: %s (the verifier log, if any, is above)", argv[1], strerror(-err));

	prog = bpf_object__find_program_by_name(obj, "produce");
	if (!prog)
		fail("%s has no program 'produce'", argv[1]);
	ring_map = bpf_object__find_map_by_name(obj, "rb");
	if (!ring_map || bpf_map__type(ring_map) != BPF_MAP_TYPE_RINGBUF)
		fail("%s has no ring buffer map 'rb'", argv[1]);
	/* A round must fit: the consumer only runs after the producer is done. */
	if (per_round * (RECORD_SIZE + BPF_RINGBUF_HDR_SZ) > bpf_map__max_entries(ring_map))
		fail("a round of %" PRIu64 " records (%" PRIu64 " bytes) does not fit in the %u-byte ring",
		     per_round, per_round * (RECORD_SIZE + BPF_RINGBUF_HDR_SZ),
		     bpf_map__max_entries(ring_map));
	bss = bpf_object__find_map_by_name(obj, ".bss");
	dropped_off = bss ? global_offset(obj, ".bss", "dropped") : -1;
	if (dropped_off < 0)
		fail("%s has no __u64 global 'dropped' in .bss", argv[1]);

	ring = ring_buffer__new(bpf_map__fd(ring_map), count_record, &consumed, NULL);
	if (!ring)
		fail("ring_buffer__new: %s", strerror(errno));

	for (uint64_t r = 0; r < rounds; r++) {
		struct drain_args args = { .count = per_round, .flags = BPF_RB_NO_WAKEUP };
		LIBBPF_OPTS(bpf_test_run_opts, opts, .ctx_in = &args, .ctx_size_in = sizeof(args));
		struct timespec t0, t1;
		int n;

		err = bpf_prog_test_run_opts(bpf_program__fd(prog), &opts);
		if (err)
			fail("BPF_PROG_TEST_RUN of 'produce': %s", strerror(-err));
		if ((int)opts.retval < 0)
			fail("'produce' failed: %s", strerror(-(int)opts.retval));

		clock_gettime(CLOCK_MONOTONIC, &t0);
		n = ring_buffer__consume(ring);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (n < 0)
			fail("ring_buffer__consume: %s", strerror(-n));
		seconds += (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	}

	dropped = read_dropped(bss, dropped_off);
	printf("{\"consumer\":\"c_ring_buffer__consume\",\"events\":%" PRIu64
	       ",\"seconds\":%.6f,\"events_per_s\":%.0f,\"dropped\":%" PRIu64 "}\n",
	       consumed, seconds, seconds > 0 ? consumed / seconds : 0.0, dropped);
	fflush(stdout);

	ring_buffer__free(ring);
	bpf_object__close(obj);

	if (consumed + dropped != per_round * rounds)
		fail("%" PRIu64 " consumed + %" PRIu64 " dropped != %" PRIu64 " produced",
		     consumed, dropped, per_round * rounds);
	return 0;
}
