// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* export_simple.bpf.c - the SIMPLE probe of bench/export.py (see export_overhead.h). */
#define SIMPLE
#include "export_overhead.h"
