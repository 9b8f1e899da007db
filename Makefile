# choreo: one vocabulary over CMake and scripts/. Every target installs what
# is missing first (scripts/deps.sh, Debian 12 packages), so each one works
# from a clean clone on its own.
#
#   make demo          build, start NATS and the services, run the demo
#   make test          format check, the whole suite, then again under ASan/UBSan
#   make up/status/down  the local stack in the background (scripts/stack.sh)
#   make cluster-up/cluster-status/cluster-down  the prod topology here: 3 NATS nodes,
#                      2 replicas of every service (scripts/cluster.py, deploy/README.md)
#   make bench         the saga benchmark (BENCH_FLOOR=1: and its floor, bench/README.md)
#   make bench-peer    choreo and the Go peer (../shared/peer-go) side by side, one table of ratios
#   make format        clang-format -i on the tracked C sources

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

BUILD_DIR ?= build
ASAN_DIR  ?= build-asan
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

# The sanitizer pass: stop at the first report, with a stack trace, leaks included.
SAN_ENV := ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# C sources to format: tracked and new (not ignored) files, or every *.c/*.h
# outside build dirs when this is not a git checkout. Generated code lives
# under build*/ and is excluded explicitly as well.
FORMAT_FILES = $(shell { git ls-files --cached --others --exclude-standard -- '*.c' '*.h' 2>/dev/null \
                   || find . -name '*.[ch]' -not -path './build*' -not -path './.git/*' | sed 's|^\./||'; } \
                 | grep -v -e '^build' -e '/gen/' -e '\.pb\.[ch]$$' -e '\.pb-c\.[ch]$$' | sort -u)

.PHONY: all deps build test test-asan demo up status down cluster-up cluster-status cluster-down bench bench-peer format format-check clean help

all: build

help:
	@sed -n '1,/^$$/p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

deps:
	bash scripts/deps.sh

build: deps
	cmake -S . -B $(BUILD_DIR) -DCHOREO_WERROR=ON $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j$(JOBS)

test: build format-check
	ctest --test-dir $(BUILD_DIR) --output-on-failure
	$(MAKE) --no-print-directory test-asan

# Unit and integration suites again, built with -fsanitize=address,undefined.
test-asan: deps
	cmake -S . -B $(ASAN_DIR) -DCHOREO_SANITIZE=ON -DCHOREO_WERROR=ON $(CMAKE_FLAGS)
	cmake --build $(ASAN_DIR) -j$(JOBS)
	$(SAN_ENV) ctest --test-dir $(ASAN_DIR) --output-on-failure -L 'unit|integration'

demo: build
	@test -f scripts/demo.sh || { echo "make demo: scripts/demo.sh is missing" >&2; exit 1; }
	bash scripts/demo.sh

up: build
	bash scripts/stack.sh up

status:
	bash scripts/stack.sh status

down:
	bash scripts/stack.sh down

cluster-up: build
	python3 scripts/cluster.py --build-dir $(BUILD_DIR) up

cluster-status:
	python3 scripts/cluster.py --build-dir $(BUILD_DIR) status

cluster-down:
	python3 scripts/cluster.py down

bench: build
	bash bench/run.sh

# Alternate runs of choreo-bench and the peer's run.sh; exits 0 without the peer.
bench-peer: build
	BUILD_DIR=$(BUILD_DIR) bash bench/peer.sh

format: deps
	@test -n "$(FORMAT_FILES)" || { echo "make format: no C sources found" >&2; exit 1; }
	clang-format -i $(FORMAT_FILES)

format-check: deps
	@test -n "$(FORMAT_FILES)" || { echo "make format-check: no C sources found" >&2; exit 1; }
	clang-format --dry-run -Werror $(FORMAT_FILES)

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR)
