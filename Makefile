# SPDX-License-Identifier: Apache-2.0
# The project's single entry point: every way to build, test, benchmark or
# install ferry starts here, and CI runs `make test` (.ci/run). CMake does
# the real work; this file only names the usual configurations so that a
# developer, CI and a packager all run the same commands.
#
#   make deps       check the Debian packages the test suite needs (install
#                   as root); every target checks those it uses itself
#   make build      configure build/ with warnings as errors, build it
#   make test       build, then run the whole test suite
#   make bench      build, then run ferry-bench with its default sweep
#   make sanitize   ASan + UBSan build in build-asan/, run the test suite
#   make tsan       TSan build in build-tsan/, run the unit, xfer and comm tests
#   make install    install build/ under PREFIX (default /usr/local);
#                   DESTDIR is honoured for staged installs
#   make clean      remove the build directories
#
# Any variable below can be overridden: make test TEST_JOBS=4

BUILD_DIR ?= build
ASAN_DIR  ?= build-asan
TSAN_DIR  ?= build-tsan
PREFIX    ?= /usr/local
# The interpreter the Python package is built and tested with: Debian's,
# whose packages (python3-dev, -numpy, -pytest, -torch) the suite installs.
# A `python3` earlier on PATH may be another interpreter without them.
PYTHON    ?= /usr/bin/python3

# Compile on every core; run two tests at a time. The multi-process tests
# start several ranks each, so more parallel tests than that oversubscribe
# CI's 2 cores and turn timeouts into flaky failures.
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
TEST_JOBS ?= 2

# $(call ctest,DIR) [ARGS]: ctest in DIR, then each skipped test with its
# reason (tests/ctest-summary); the exit status is ctest's.
# --no-tests=error: a suite that finds no test must fail, not pass (ctest
# 3.17; the build itself needs CMake 3.15).
ctest = tests/ctest-summary $(1) --output-on-failure --no-tests=error -j $(TEST_JOBS)

# Sanitizer settings. Instrumented code checks transferred bytes 5 to 20
# times slower, so the sanitizer runs post each transfer test's request 20
# times instead of 100 (FERRY_TEST_ITERS): memory and thread errors show on
# the first posts, and `make test` keeps the full count. UBSan only reports
# and carries on unless told to stop, so halt_on_error makes every finding
# fail its test. LeakSanitizer runs with ASan; UCX frees what it allocates
# once ferry destroys its agents, except in one error path of its own
# (tests/lsan.supp).
ASAN_ENV = FERRY_TEST_ITERS=20 \
           ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1 \
           LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp \
           UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

# UCX_MEM_EVENTS=no: UCX's memory hooks (libucm) take a lock inside madvise,
# which glibc calls while a thread exits, after TSan has torn down that
# thread's state, and the process crashes in TSan. Without the hooks UCX
# only loses its registration cache, which the tests do not depend on.
TSAN_ENV = FERRY_TEST_ITERS=20 UCX_MEM_EVENTS=no \
           TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1

# cmake --build runs make again underneath; without this, every line of its
# output is wrapped in "Entering directory" noise.
MAKEFLAGS += --no-print-directory

.PHONY: all deps deps-build deps-test build test bench sanitize tsan install clean

all: build

# Each target checks only the Debian packages it uses; each check names the
# package that provides what it looks for. As root (CI, containers) the
# missing packages are installed; otherwise the command to run is printed
# and make stops, rather than calling sudo.
#
# Building and installing need the compiler, CMake, pkg-config, UCX's
# development files, OpenSSL's (libcrypto: HMAC-SHA-256 for the job
# secret), and libcurl and jansson for the etcd directory (src/dir/; a
# build without them leaves it out, its calls then return
# FERRY_ERR_UNSUPPORTED). ferry-bench (`make bench`) needs nothing more.
BUILD_DEPS = \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	pkg-config --exists ucx 2>/dev/null || missing="$$missing libucx-dev"; \
	pkg-config --exists libcrypto 2>/dev/null || missing="$$missing libssl-dev"; \
	pkg-config --exists libcurl 2>/dev/null || missing="$$missing libcurl4-openssl-dev"; \
	pkg-config --exists jansson 2>/dev/null || missing="$$missing libjansson-dev";

# The suite adds: etcd (etcd-server), which the directory tests start on
# loopback ports (test_dir_*); ucx_info (ucx-utils), which test_ferry_info compares
# ferry-info's UCX version with; $(PYTHON) (python3), which runs
# bench_outputs and the torch interoperability tests, with its headers
# (python3-dev) for the Python package and numpy, pytest and torch
# (python3-numpy, python3-pytest, python3-torch) for its tests, pip
# (python3-pip) for the test that installs it; readelf and
# nm (binutils), with which test_install checks the installed library and
# tools. iproute2 (`ip`) serves only the two-namespace test, which needs
# root anyway, so it is asked for only as root.
PY_HAS = $(PYTHON) -c 'import sys, importlib; importlib.import_module(sys.argv[1])' 2>/dev/null
TEST_DEPS = $(BUILD_DEPS) \
	command -v ucx_info >/dev/null || missing="$$missing ucx-utils"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	if [ -x $(PYTHON) ]; then \
		$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || missing="$$missing python3-dev"; \
		$(PY_HAS) numpy || missing="$$missing python3-numpy"; \
		$(PY_HAS) pytest || missing="$$missing python3-pytest"; \
		$(PY_HAS) torch || missing="$$missing python3-torch"; \
		$(PY_HAS) pip || missing="$$missing python3-pip"; \
	else \
		missing="$$missing python3 python3-dev python3-numpy python3-pytest python3-torch python3-pip"; \
	fi; \
	command -v readelf >/dev/null || missing="$$missing binutils"; \
	if [ "$$(id -u)" = 0 ] && ! command -v ip >/dev/null; then \
		missing="$$missing iproute2"; \
	fi;

# $(call check_deps,WHAT,CHECKS): runs CHECKS, which collect the names of
# missing packages in $$missing, then installs them or says how.
define check_deps
	@missing=""; $(2) \
	if [ -z "$$missing" ]; then \
		echo "deps: what $(1) needs is present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "deps: installing$$missing for $(1)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update && apt-get install -y $$missing; \
	else \
		echo "deps: $(1) needs missing packages; install them with:"; \
		echo "  sudo apt-get install -y$$missing"; \
		exit 1; \
	fi
endef

deps: deps-test

deps-build:
	$(call check_deps,building,$(BUILD_DEPS))

deps-test:
	$(call check_deps,the test suite,$(TEST_DEPS))

build: deps-build
	cmake -S . -B $(BUILD_DIR) -DFERRY_WERROR=ON -DFERRY_PYTHON=$(PYTHON)
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: deps-test build
	$(call ctest,$(BUILD_DIR))

bench: build
	$(BUILD_DIR)/tools/ferry-bench

# Sanitizer builds leave -Werror to `make build`: they exist to catch
# run-time errors, and a sanitizer's extra code can draw false-positive
# warnings from the optimizer.
sanitize: deps-test
	cmake -S . -B $(ASAN_DIR) -DFERRY_SANITIZE=address,undefined -DFERRY_PYTHON=$(PYTHON)
	cmake --build $(ASAN_DIR) -j $(JOBS)
	$(ASAN_ENV) $(call ctest,$(ASAN_DIR))

tsan: deps-test
	cmake -S . -B $(TSAN_DIR) -DFERRY_SANITIZE=thread
	cmake --build $(TSAN_DIR) -j $(JOBS)
	$(TSAN_ENV) $(call ctest,$(TSAN_DIR)) -L 'unit|xfer|comm'

install: build
	cmake --install $(BUILD_DIR) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(TSAN_DIR)
