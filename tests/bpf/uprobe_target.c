// SPDX-License-Identifier: Apache-2.0
/*
 * uprobe_target.c - userspace target of the uprobe tests (built by the tests).
 *
 *   gcc -O1 -g -o uprobe_target tests/bpf/uprobe_target.c
 *   ./uprobe_target N [--wait]
 *
 * Calls bpfloom_probe_me(i) for i = 0 .. N-1 (N defaults to 1); each call
 * returns 2 * i + 1. With --wait it first prints "ready PID" and blocks until a
 * line (or EOF) arrives on stdin, so a test can attach to this very pid first.
 * Exits 0 after printing "done SUM" (SUM = N * N, the sum of all returns).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Kept out of line and unchanged so the symbol's address is the real entry:
 * noinline alone still lets gcc clone or specialise the function (.constprop,
 * .isra), which a uprobe on the symbol would then never see.
 */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, noipa, used))
#else
__attribute__((noinline, optnone, used))
#endif
int bpfloom_probe_me(int x)
{
	return 2 * x + 1;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
	long long sum = 0;

	if (argc > 2 && strcmp(argv[2], "--wait") == 0) {
		char line[64];

		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin) && ferror(stdin))
			return 1;
	}
	for (long i = 0; i < n; i++)
		sum += bpfloom_probe_me((int)i);
	printf("done %lld\n", sum);
	return 0;
}
