// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* export_empty.bpf.c - the EMPTY probe of bench/export.py (see export_overhead.h). */
#define EMPTY
#include "export_overhead.h"
