# bpfloom build. `make demo` and `make test` are the two set-up commands in the README;
# both install everything first (scripts/setup.sh), so they work on a fresh machine.

CLANG     ?= clang-16
BPFTOOL   ?= bpftool
CC        := gcc
VENV      := .venv
BUILD     := build
ARCH      := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

# The kernel types header is generated from the running kernel's BTF, never committed.
VMLINUX_H := $(BUILD)/vmlinux.h
BPF_CFLAGS := -g -O2 -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BUILD) -Isrc/bpfloom/bpf -Wall -Wno-unused-function

# Every *.bpf.c in these folders is built into a *.bpf.o beside it.
BPF_SRC := $(wildcard src/bpfloom/bpf/*.bpf.c tests/bpf/*.bpf.c tests/bpf/ecli/*.bpf.c bench/bpf/*.bpf.c)
BPF_OBJ := $(BPF_SRC:.bpf.c=.bpf.o)
BPF_HDR := $(wildcard src/bpfloom/bpf/*.h tests/bpf/*.h tests/bpf/ecli/*.h bench/bpf/*.h)
# Native helpers (the C baseline consumer of bench/drain.py).
NATIVE  := $(BUILD)/drain_c

.PHONY: setup bpf demo test lint clean bpf-check-arm64 dist test-all
setup:
	bash scripts/setup.sh

bpf: $(BPF_OBJ) $(NATIVE)

$(VMLINUX_H):
	@mkdir -p $(BUILD)
	$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

%.bpf.o: %.bpf.c $(VMLINUX_H) $(BPF_HDR)
	$(CLANG) $(BPF_CFLAGS) -I$(dir $<) -c $< -o $@

# arm64: every BPF object compiled with -D__TARGET_ARCH_arm64 into build/arm64/ (a
# compile check of the arch-specific code; CO-RE objects need no arm64 kernel headers).
# On another architecture the vmlinux.h is that one's, and bpfloom.h declares arm64's
# struct user_pt_regs (BPFLOOM_FOREIGN_VMLINUX).
ARM64_OBJ    := $(addprefix $(BUILD)/arm64/,$(BPF_OBJ))
ARM64_CFLAGS := $(subst -D__TARGET_ARCH_$(ARCH),-D__TARGET_ARCH_arm64,$(BPF_CFLAGS)) \
                $(if $(filter arm64,$(ARCH)),,-DBPFLOOM_FOREIGN_VMLINUX)

bpf-check-arm64: $(ARM64_OBJ)
	@echo "bpf-check-arm64: $(words $(ARM64_OBJ)) objects compiled for arm64 in $(BUILD)/arm64"

$(BUILD)/arm64/%.bpf.o: %.bpf.c $(VMLINUX_H) $(BPF_HDR)
	@mkdir -p $(dir $@)
	$(CLANG) $(ARM64_CFLAGS) -I$(dir $<) -c $< -o $@

$(BUILD)/drain_c: bench/drain_c.c
	@mkdir -p $(BUILD)
	$(CC) -O2 -Wall -o $@ $< -lbpf

demo: setup
	$(VENV)/bin/bpfloom demo

test: setup
	CI=$${CI:-} $(VENV)/bin/python -m pytest -q

# An sdist and, built from it, a wheel with the compiled BPF objects (setup.py), in $(DIST).
DIST ?= dist
dist:
	rm -rf $(DIST)
	$(VENV)/bin/python -m build --outdir $(DIST) .

# Every supported Python: the unit tests (no kernel) on each extra one, in its own
# .venv-X.Y (from pyenv's newest X.Y.*, else pythonX.Y on PATH), and the whole suite on
# the default one (.venv).
EXTRA_PYTHONS ?= 3.12 3.13
PYENV_ROOT    ?= $(or $(shell pyenv root 2>/dev/null),$(HOME)/.pyenv)

.venv-%/.installed: pyproject.toml
	@py=$$(ls -d $(PYENV_ROOT)/versions/$*.*/bin/python$* 2>/dev/null | sort -V | tail -1); \
	 py=$${py:-$$(command -v python$*)}; \
	 if [ -z "$$py" ]; then echo "test-all: no Python $* (pyenv install $*)" >&2; exit 1; fi; \
	 if [ ! -x .venv-$*/bin/python ]; then "$$py" -m venv .venv-$*; fi
	.venv-$*/bin/python -m pip install -q --upgrade pip >/dev/null
	.venv-$*/bin/python -m pip install -q -e '.[test]'
	.venv-$*/bin/python -c "import bpfloom.cli, numpy, pyarrow, elftools, click, yaml, prometheus_client"
	@touch $@

test-all: setup $(foreach v,$(EXTRA_PYTHONS),.venv-$(v)/.installed)
	@set -e; for v in $(EXTRA_PYTHONS); do \
	    echo "test-all: unit tests on $$(.venv-$$v/bin/python -V)"; \
	    .venv-$$v/bin/python -m pytest -q -p no:cacheprovider -m "not kernel"; \
	done
	@echo "test-all: the whole suite on $$($(VENV)/bin/python -V)"
	CI=$${CI:-} $(VENV)/bin/python -m pytest -q

lint:
	$(VENV)/bin/ruff check src tests bench setup.py
	$(VENV)/bin/ruff format --check src tests bench setup.py
	$(VENV)/bin/mypy

clean:
	rm -rf $(BUILD) $(BPF_OBJ)
