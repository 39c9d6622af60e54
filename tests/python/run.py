#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Runs one pytest file of the Python tests for CTest.

Usage: run.py TEST_FILE [MODULE...]

Exits 77 (skipped, with a "skip: REASON" line, as every skipped test of the
suite does) when pytest or one of the MODULEs the file needs cannot be
imported, when the ferry package was not built (FERRY_PYTHON_SKIP), or when
every test of the file skipped; a file whose dependency is missing is never
reported as passed. Otherwise pytest's own exit status, after listing any
tests that skipped inside a passing file with their reasons.
"""
import importlib
import os
import sys


def skip(reason):
    print(f"skip: {reason}")
    sys.exit(77)


def main():
    path, needs = sys.argv[1], sys.argv[2:]
    if os.environ.get("FERRY_PYTHON_SKIP"):
        skip(f"the Python package was not built: {os.environ['FERRY_PYTHON_SKIP']}")
    for name in ["pytest", "numpy"] + needs:
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or a broken install
            pkg = {"pytest": "python3-pytest", "numpy": "python3-numpy",
                   "torch": "python3-torch"}.get(name, name)
            skip(f"{name} is not importable in {sys.executable} ({e}); Debian: "
                 f"apt-get install {pkg}")
    import pytest

    class Outcomes:
        def __init__(self):
            self.passed, self.failed, self.skipped = 0, 0, []

        def pytest_collectreport(self, report):
            # A file that skips itself (pytest.skip(allow_module_level=True)).
            if report.skipped:
                self.pytest_runtest_logreport(report)

        def pytest_runtest_logreport(self, report):
            if report.skipped:
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
                reason = reason.replace("Skipped: ", "", 1)
                self.skipped.append((report.nodeid, reason))
            elif report.failed:
                self.failed += 1
            elif report.when == "call" and report.passed:
                self.passed += 1

    out = Outcomes()
    rc = pytest.main([path, "-v", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                      "-o", "addopts=",
                      "-W", "error::pytest.PytestUnraisableExceptionWarning"], plugins=[out])
    for nodeid, reason in out.skipped:
        print(f"skipped: {nodeid}: {reason}")
    # pytest says 5 (no tests ran) when the file skipped itself whole.
    if rc in (0, 5) and out.passed == 0 and out.failed == 0 and out.skipped:
        skip(f"every test skipped: {out.skipped[0][1]}")
    sys.exit(int(rc))


if __name__ == "__main__":
    main()
