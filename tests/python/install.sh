#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The package as a user installs it: `pip install --no-build-isolation` of a
# copy of python/ (so the source tree gets no build files), offline, into a
# scratch directory, against this build's libferry (FERRY_INCLUDE_DIR,
# FERRY_LIBRARY_DIR); then the installed package moves bytes over a
# loopback peer, and the module is the abi3 build with its type stubs.
# Skipped (77) without pip or the package's build.
#
# Usage: install.sh PYTHON SOURCE_DIR LIBFERRY
set -eu

py=$1 src=$2 lib=$3
[ -z "${FERRY_PYTHON_SKIP:-}" ] || { echo "skip: the Python package was not built: $FERRY_PYTHON_SKIP"; exit 77; }
"$py" -m pip --version >/dev/null 2>&1 ||
    { echo "skip: pip is not importable in $py (Debian: apt-get install python3-pip)"; exit 77; }

export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ferry-pyinstall.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/python" "$tmp/pkg"
rm -rf "$tmp/pkg/build" "$tmp/pkg"/*.egg-info
FERRY_INCLUDE_DIR=$src/include FERRY_LIBRARY_DIR=$(dirname "$lib") \
    "$py" -m pip install --no-build-isolation --no-deps --no-index --quiet \
    --target "$tmp/site" "$tmp/pkg"
ls "$tmp/site/ferry/_ferry.abi3.so" "$tmp/site/ferry/_ferry.pyi" "$tmp/site/ferry/py.typed" >/dev/null
cd "$tmp"
PYTHONPATH=$tmp/site "$py" - <<'PY'
import ferry
assert ferry.__file__.startswith(__import__("os").getcwd()), ferry.__file__
with ferry.Agent(name="installed") as a:
    buf = bytearray(b"x" * 64 + bytes(64))
    a.register(buf)
    me = a.load_peer(a.metadata())
    base = ferry.describe(buf)[0]
    x = a.prepare("write", (base, 64), me, (base + 64, 64))
    x.post() or x.wait(10)
    assert buf[64:] == b"x" * 64
print("install: ferry", ferry.version(), "from", ferry.__file__, "moved 64 bytes")
PY
