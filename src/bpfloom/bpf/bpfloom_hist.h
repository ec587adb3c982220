/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * bpfloom_hist.h - log2 histograms kept in maps, for the metric tools
 * (runqlat, biolatency, hardirqs, softirqs, syscount's latency histogram).
 *
 * A histogram is a struct with a `slots` array (user space recognises it by
 * that member, see bpfloom/histogram.py). Slot i counts values in
 * [2^i, 2^(i+1)); slot 0 also counts 0, as libbpf-tools' print_log2_hist
 * lays it out. Values past the last slot are counted in the last slot.
 *
 * Counters only grow: user space reads differences between reads, so no
 * sample is lost between a read and a reset.
 *
 * Include after bpfloom.h.
 */
#ifndef __BPFLOOM_HIST_H
#define __BPFLOOM_HIST_H

/* 2^26 usecs is 67 s, 2^26 nsecs 67 ms: enough for every tool's unit. */
#define BPFLOOM_HIST_SLOTS 27

/* Units of a histogram's values; a const volatile global picks one before load. */
enum bpfloom_hist_unit {
	BPFLOOM_NSECS = 0,
	BPFLOOM_USECS = 1,
	BPFLOOM_MSECS = 2,
};

/* floor(log2(v)) for v > 0, 0 for v == 0: a binary search over the bits. */
static __always_inline __u32 bpfloom_log2(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

/* `ns` nanoseconds in `unit`. */
static __always_inline __u64 bpfloom_in_unit(__u64 ns, __u32 unit)
{
	if (unit == BPFLOOM_MSECS)
		return ns / 1000000;
	if (unit == BPFLOOM_USECS)
		return ns / 1000;
	return ns;
}

/* The slot of a duration of `ns` nanoseconds in `unit`, clamped to the last one. */
static __always_inline __u32 bpfloom_hist_slot(__u64 ns, __u32 unit)
{
	__u32 slot = bpfloom_log2(bpfloom_in_unit(ns, unit));

	return slot < BPFLOOM_HIST_SLOTS ? slot : BPFLOOM_HIST_SLOTS - 1;
}

#endif /* __BPFLOOM_HIST_H */
