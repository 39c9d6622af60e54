# The project's single entry point: every way to build, test, benchmark or
# install ferry starts here, and CI runs `make test` (.ci/run). CMake does
# the real work; this file only names the usual configurations so that a
# developer, CI and a packager all run the same commands.
#
#   make deps       check the Debian packages the build needs (install as root)
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

# Compile on every core; run two tests at a time. The multi-process tests
# start several ranks each, so more parallel tests than that oversubscribe
# CI's 2 cores and turn timeouts into flaky failures.
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
TEST_JOBS ?= 2

# --no-tests=error: a suite that finds no test must fail, not pass.
CTEST = ctest --output-on-failure --no-tests=error -j $(TEST_JOBS)

# Sanitizer settings. Instrumented code checks transferred bytes 5 to 20
# times slower, so the sanitizer runs post each transfer test's request 20
# times instead of 100 (FERRY_TEST_ITERS): memory and thread errors show on
# the first posts, and `make test` keeps the full count. UBSan only reports
# and carries on unless told to stop, so halt_on_error makes every finding
# fail its test. LeakSanitizer runs with ASan and needs no suppressions: UCX
# frees what it allocates once ferry destroys its agents.
ASAN_ENV = FERRY_TEST_ITERS=20 \
           ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:detect_stack_use_after_return=1 \
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

.PHONY: all deps build test bench sanitize tsan install clean

all: build

# Each check names the Debian package that provides what it looks for.
# As root (CI, containers) the missing packages are installed; otherwise the
# command to run is printed and make stops, rather than calling sudo.
# iproute2 (`ip`) serves only the two-namespace test, which needs root
# anyway, so it is asked for only as root.
deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
	command -v readelf >/dev/null || missing="$$missing binutils"; \
	command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	pkg-config --exists ucx 2>/dev/null || missing="$$missing libucx-dev"; \
	command -v ucx_perftest >/dev/null || missing="$$missing ucx-utils"; \
	if [ "$$(id -u)" = 0 ] && ! command -v ip >/dev/null; then \
		missing="$$missing iproute2"; \
	fi; \
	if [ -z "$$missing" ]; then \
		echo "deps: cmake, gcc, pkg-config, libucx-dev and ucx-utils are present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "deps: installing$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update && apt-get install -y $$missing; \
	else \
		echo "deps: missing packages; install them with:"; \
		echo "  sudo apt-get install -y$$missing"; \
		exit 1; \
	fi

build: deps
	cmake -S . -B $(BUILD_DIR) -DFERRY_WERROR=ON
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	$(CTEST) --test-dir $(BUILD_DIR)

bench: build
	$(BUILD_DIR)/tools/ferry-bench

# Sanitizer builds leave -Werror to `make build`: they exist to catch
# run-time errors, and a sanitizer's extra code can draw false-positive
# warnings from the optimizer.
sanitize: deps
	cmake -S . -B $(ASAN_DIR) -DFERRY_SANITIZE=address,undefined
	cmake --build $(ASAN_DIR) -j $(JOBS)
	$(ASAN_ENV) $(CTEST) --test-dir $(ASAN_DIR)

tsan: deps
	cmake -S . -B $(TSAN_DIR) -DFERRY_SANITIZE=thread
	cmake --build $(TSAN_DIR) -j $(JOBS)
	$(TSAN_ENV) $(CTEST) --test-dir $(TSAN_DIR) -L 'unit|xfer|comm'

install: build
	cmake --install $(BUILD_DIR) --prefix $(PREFIX)

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(TSAN_DIR)
