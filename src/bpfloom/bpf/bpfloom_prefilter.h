/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * bpfloom_prefilter.h - leave out, in the kernel, the events no detection rule can
 * match.
 *
 * User space (bpfloom/rules/_prefilter.py) derives from a rule set a disjunction of
 * clauses per event kind; a program emits an event only if some clause holds. A
 * clause checks facts the program has at hand: whether the call failed, and whether
 * the comm, the parent's comm, the path as given and the resolved path are in some
 * sets of strings. Comms are looked up in the hash map `bpfloom_comms`, paths in the
 * longest-prefix-match trie `bpfloom_paths` (an exact path is stored with its NUL, a
 * prefix without); each finds a bit mask, one bit per set. A fact the program could
 * not establish (a path it cut, a walk that did not finish) is left unchecked, so the
 * prefilter only ever lets too much through, never too little.
 *
 * Events left out are counted per CPU in `bpfloom_filtered`, apart from drops: they
 * were never meant to be emitted. With `bpfloom_prefilter` false (the default) every
 * event is emitted and nothing here runs.
 *
 * Include after bpfloom.h, once per object (it defines maps and globals).
 */
#ifndef __BPFLOOM_PREFILTER_H
#define __BPFLOOM_PREFILTER_H

#define BPFLOOM_MAX_CLAUSES 16
#define BPFLOOM_COMM_KEY 16
#define BPFLOOM_PATH_KEY 256

#define BPFLOOM_RET_FAILED 1	/* ret < 0 */
#define BPFLOOM_RET_OK 2
#define BPFLOOM_RET_ANY 3

/* Facts (bpfloom_facts.known, bpfloom_prefilter_needs). */
#define BPFLOOM_KNOW_COMM 1
#define BPFLOOM_KNOW_PCOMM 2
#define BPFLOOM_KNOW_PATH 4
#define BPFLOOM_KNOW_NPATH 8

struct bpfloom_clause {
	__u64 comm_in;		/* the comm is in every set of these bits */
	__u64 comm_out;		/* ... and in none of these */
	__u64 pcomm_in;
	__u64 pcomm_out;
	__u64 path_in;
	__u64 path_out;
	__u64 npath_in;
	__u64 npath_out;
	__u32 ret;		/* BPFLOOM_RET_* the call's result may be */
	__u32 unused;
};

/* What a program knows of one event. */
struct bpfloom_facts {
	__u64 comm, pcomm, path, npath;	/* the bits of the sets each value is in */
	__u32 ret;			/* BPFLOOM_RET_FAILED or BPFLOOM_RET_OK (or ANY) */
	__u32 known;			/* BPFLOOM_KNOW_* of the values above */
};

struct bpfloom_path_key {
	__u32 prefixlen;	/* in bits, as the trie wants */
	__u8 data[BPFLOOM_PATH_KEY];
};

const volatile bool bpfloom_prefilter = false;
const volatile __u32 bpfloom_prefilter_needs = 0;	/* BPFLOOM_KNOW_* some clause checks */
const volatile __u32 bpfloom_nclauses = 0;
const volatile struct bpfloom_clause bpfloom_clauses[BPFLOOM_MAX_CLAUSES] = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, char[BPFLOOM_COMM_KEY]);
	__type(value, __u64);
} bpfloom_comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct bpfloom_path_key);
	__type(value, __u64);
} bpfloom_paths SEC(".maps");

/* Events left out, one counter per CPU at key 0 (as bpfloom_drops). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bpfloom_filtered SEC(".maps");

/* The trie's lookup key is built here: too big for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpfloom_path_key);
} bpfloom_path_key_scratch SEC(".maps");

static __always_inline void bpfloom_count_filtered(void)
{
	__u32 zero = 0;
	__u64 *count = bpf_map_lookup_elem(&bpfloom_filtered, &zero);

	if (count)
		__sync_fetch_and_add(count, 1);	/* atomic: see bpfloom_count_drop() */
}

/* The comm sets `comm` (16 bytes, NUL-padded, on the stack or in a map) is in. */
static __always_inline void bpfloom_facts_comm(struct bpfloom_facts *f, const char *comm,
					      bool parent)
{
	__u64 *sets;

	if (!(bpfloom_prefilter_needs & (parent ? BPFLOOM_KNOW_PCOMM : BPFLOOM_KNOW_COMM)))
		return;
	sets = bpf_map_lookup_elem(&bpfloom_comms, comm);
	if (parent) {
		f->pcomm = sets ? *sets : 0;
		f->known |= BPFLOOM_KNOW_PCOMM;
	} else {
		f->comm = sets ? *sets : 0;
		f->known |= BPFLOOM_KNOW_COMM;
	}
}

/*
 * The path sets the C string `path` (BPFLOOM_PATH_KEY bytes of a map value) is in:
 * `know` is BPFLOOM_KNOW_PATH (the path as given) or BPFLOOM_KNOW_NPATH (resolved).
 */
static __always_inline void bpfloom_facts_path(struct bpfloom_facts *f, const char *path,
					      __u32 know)
{
	struct bpfloom_path_key *key;
	__u32 zero = 0;
	__u64 *sets;

	if (!(bpfloom_prefilter_needs & know))
		return;
	key = bpf_map_lookup_elem(&bpfloom_path_key_scratch, &zero);
	if (!key)
		return;		/* unknown: left unchecked */
	key->prefixlen = BPFLOOM_PATH_KEY * 8;
	if (bpf_probe_read_kernel(key->data, BPFLOOM_PATH_KEY, path))
		return;
	sets = bpf_map_lookup_elem(&bpfloom_paths, key);
	if (know == BPFLOOM_KNOW_PATH)
		f->path = sets ? *sets : 0;
	else
		f->npath = sets ? *sets : 0;
	f->known |= know;
}

static __always_inline bool bpfloom_sets_hold(bool known, __u64 sets, __u64 in, __u64 out)
{
	return !known || ((sets & in) == in && !(sets & out));
}

/* Whether some clause holds on what is known: the event may match a rule. */
static __always_inline bool bpfloom_prefilter_pass(const struct bpfloom_facts *f)
{
	for (__u32 i = 0; i < BPFLOOM_MAX_CLAUSES; i++) {
		const volatile struct bpfloom_clause *c = &bpfloom_clauses[i];

		if (i >= bpfloom_nclauses)
			break;
		if (!(c->ret & f->ret))
			continue;
		if (!bpfloom_sets_hold(f->known & BPFLOOM_KNOW_COMM, f->comm, c->comm_in, c->comm_out))
			continue;
		if (!bpfloom_sets_hold(f->known & BPFLOOM_KNOW_PCOMM, f->pcomm, c->pcomm_in,
				       c->pcomm_out))
			continue;
		if (!bpfloom_sets_hold(f->known & BPFLOOM_KNOW_PATH, f->path, c->path_in, c->path_out))
			continue;
		if (!bpfloom_sets_hold(f->known & BPFLOOM_KNOW_NPATH, f->npath, c->npath_in,
				       c->npath_out))
			continue;
		return true;
	}
	return false;
}

#endif /* __BPFLOOM_PREFILTER_H */
