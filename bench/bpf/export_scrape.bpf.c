// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * export_scrape.bpf.c - the map bench/export.py scrapes (config: export_scrape.yaml).
 *
 * `bench_requests_total` holds up to 100 000 counters keyed by (id, kind), as an
 * ebpf_exporter counter map. The benchmark fills it from user space; the program
 * only makes the object a loadable one (it counts getppid calls by caller).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct request_key {
	u32 id;
	u32 kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 100000);
	__type(key, struct request_key);
	__type(value, u64);
} bench_requests_total SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	struct request_key key = { .id = bpf_get_current_pid_tgid() >> 32 };
	u64 one = 1, *count = bpf_map_lookup_elem(&bench_requests_total, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	else
		bpf_map_update_elem(&bench_requests_total, &key, &one, BPF_NOEXIST);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
