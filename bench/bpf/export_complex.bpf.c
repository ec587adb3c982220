// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* export_complex.bpf.c - the COMPLEX probe of bench/export.py (see export_overhead.h). */
#define COMPLEX
#include "export_overhead.h"
