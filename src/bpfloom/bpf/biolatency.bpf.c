// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * biolatency: block I/O latency as log2 histograms, as libbpf-tools'
 * biolatency: from a request's issue to the device (or, with targ_queued, from
 * its insertion into the I/O scheduler's queue) to its completion.
 *
 * tp_btf programs on block_rq_insert, block_rq_issue and block_rq_complete.
 * The start time is kept per request; the completion adds the request's latency
 * to a histogram keyed by disk (targ_per_disk) and flags (targ_per_flag), or to
 * the one histogram of everything. Histograms only grow: user space reads
 * differences.
 *
 * The flags key is not the kernel's cmd_flags as it is: the REQ_* flag bits have
 * moved between kernel versions, so the program looks each one up in this
 * kernel's enum req_flag_bits (CO-RE enum relocations) and sets bpfloom's own,
 * fixed bits (BIO_* below, named in bpfloom/tools/biolatency.py); the operation
 * (REQ_OP_*) stays in the low 8 bits.
 */
#include "bpfloom.h"
#include "bpfloom_hist.h"

#define REQ_OP_BITS 8
#define REQ_OP_MASK ((1U << REQ_OP_BITS) - 1)
#define MINORBITS 20	/* the kernel's dev_t: major << 20 | minor */

/* bpfloom's flag bits, above the operation. */
#define BIO_NOWAIT	(1U << 8)
#define BIO_BACKGROUND	(1U << 9)
#define BIO_RAHEAD	(1U << 10)
#define BIO_PREFLUSH	(1U << 11)
#define BIO_FUA		(1U << 12)
#define BIO_INTEGRITY	(1U << 13)
#define BIO_IDLE	(1U << 14)
#define BIO_NOMERGE	(1U << 15)
#define BIO_PRIO	(1U << 16)
#define BIO_META	(1U << 17)
#define BIO_SYNC	(1U << 18)

struct biolatency_key {
	__u32 dev;	/* targ_per_disk: the disk's dev_t (kernel encoding) */
	__u32 flags;	/* targ_per_flag: REQ_OP_* | BIO_* */
};

struct biolatency_hist {
	__u64 slots[BPFLOOM_HIST_SLOTS];
};

const volatile bool targ_per_disk = false;
const volatile bool targ_per_flag = false;
const volatile bool targ_queued = false;	/* -Q: from insertion, not issue */
const volatile bool filter_dev = false;
const volatile __u32 targ_dev = 0;		/* with filter_dev: only this disk */
const volatile __u32 targ_unit = BPFLOOM_USECS;	/* enum bpfloom_hist_unit */

/* Start time per request (its address). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct biolatency_key);
	__type(value, struct biolatency_hist);
} hists SEC(".maps");

/* Before 5.16 a request named its disk itself. */
struct request___pre516 {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

static __always_inline __u32 request_dev(struct request *rq)
{
	struct request___pre516 *old = (void *)rq;
	struct gendisk *disk;

	if (bpf_core_field_exists(old->rq_disk))
		disk = BPF_CORE_READ(old, rq_disk);
	else
		disk = BPF_CORE_READ(rq, q, disk);
	if (!disk)
		return 0;
	return ((__u32)BPF_CORE_READ(disk, major) << MINORBITS) | BPF_CORE_READ(disk, first_minor);
}

/* Sets `ours` in `out` when this kernel has flag bit `name` and it is set in `opf`. */
#define MAP_FLAG(out, opf, name, ours)                                               \
	do {                                                                         \
		if (bpf_core_enum_value_exists(enum req_flag_bits, name) &&          \
		    ((opf) >> bpf_core_enum_value(enum req_flag_bits, name)) & 1)     \
			(out) |= (ours);                                             \
	} while (0)

static __always_inline __u32 request_flags(struct request *rq)
{
	__u32 opf = BPF_CORE_READ(rq, cmd_flags);
	__u32 out = opf & REQ_OP_MASK;

	MAP_FLAG(out, opf, __REQ_NOWAIT, BIO_NOWAIT);
	MAP_FLAG(out, opf, __REQ_BACKGROUND, BIO_BACKGROUND);
	MAP_FLAG(out, opf, __REQ_RAHEAD, BIO_RAHEAD);
	MAP_FLAG(out, opf, __REQ_PREFLUSH, BIO_PREFLUSH);
	MAP_FLAG(out, opf, __REQ_FUA, BIO_FUA);
	MAP_FLAG(out, opf, __REQ_INTEGRITY, BIO_INTEGRITY);
	MAP_FLAG(out, opf, __REQ_IDLE, BIO_IDLE);
	MAP_FLAG(out, opf, __REQ_NOMERGE, BIO_NOMERGE);
	MAP_FLAG(out, opf, __REQ_PRIO, BIO_PRIO);
	MAP_FLAG(out, opf, __REQ_META, BIO_META);
	MAP_FLAG(out, opf, __REQ_SYNC, BIO_SYNC);
	return out;
}

static __always_inline void request_start(struct request *rq, bool issue)
{
	__u64 key = (__u64)rq, ts;

	/*
	 * -Q with an I/O scheduler: the insertion's time stands. Without one,
	 * a request is not always inserted, and its issue time is taken (as
	 * libbpf-tools does).
	 */
	if (issue && targ_queued && BPF_CORE_READ(rq, q, elevator))
		return;
	if (filter_dev && request_dev(rq) != targ_dev)
		return;
	ts = bpf_ktime_get_ns();
	if (bpf_map_update_elem(&start, &key, &ts, BPF_ANY))
		bpfloom_count_drop();	/* the map is full: this request is not measured */
}

/* Attached only with targ_queued (autoload is switched off otherwise). */
SEC("tp_btf/block_rq_insert")
int BPF_PROG(block_rq_insert, struct request *rq)
{
	request_start(rq, false);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_rq_issue, struct request *rq)
{
	request_start(rq, true);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	struct biolatency_key hkey = {};
	struct biolatency_hist zero = {}, *hist;
	__u64 key = (__u64)rq, *tsp;
	__s64 delta;

	tsp = bpf_map_lookup_elem(&start, &key);
	if (!tsp)
		return 0;
	delta = (__s64)(bpf_ktime_get_ns() - *tsp);
	bpf_map_delete_elem(&start, &key);
	if (delta < 0)
		return 0;

	if (targ_per_disk)
		hkey.dev = request_dev(rq);
	if (targ_per_flag)
		hkey.flags = request_flags(rq);
	hist = bpf_map_lookup_elem(&hists, &hkey);
	if (!hist) {
		/* NOEXIST: another CPU may have made it meanwhile; that is fine. */
		bpf_map_update_elem(&hists, &hkey, &zero, BPF_NOEXIST);
		hist = bpf_map_lookup_elem(&hists, &hkey);
		if (!hist) {
			bpfloom_count_drop();	/* the map is full */
			return 0;
		}
	}
	__sync_fetch_and_add(&hist->slots[bpfloom_hist_slot(delta, targ_unit)], 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
