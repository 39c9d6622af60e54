# SPDX-License-Identifier: Apache-2.0
"""Builds the extension module ferry._ferry (src/*.c) against libferry.

The metadata lives in pyproject.toml; this file only describes the
extension, which setuptools cannot take from pyproject.toml. libferry's
headers and library come from, in order:
  - FERRY_INCLUDE_DIR and FERRY_LIBRARY_DIR (e.g. the repository's include/
    and a build directory, as tests/python/install.sh does);
  - pkg-config ferry (after `make install`; PKG_CONFIG_PATH for a prefix).
A library outside the system's directories gets a run path. The module uses
the limited API of Python 3.11, so the wheel is tagged abi3 (cp311-abi3)
and serves every later Python.
"""
import glob
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def ferry_flags():
    inc, lib = os.environ.get("FERRY_INCLUDE_DIR"), os.environ.get("FERRY_LIBRARY_DIR")
    if inc and lib:
        return [os.path.abspath(inc)], [os.path.abspath(lib)]
    try:
        out = subprocess.run(["pkg-config", "--cflags", "--libs", "ferry"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit("ferry: libferry was not found: install it (make install; set "
                 "PKG_CONFIG_PATH for a prefix outside pkg-config's path) or set "
                 f"FERRY_INCLUDE_DIR and FERRY_LIBRARY_DIR ({e})")
    words = shlex.split(out)
    return ([w[2:] for w in words if w.startswith("-I")],
            [w[2:] for w in words if w.startswith("-L")])


include_dirs, library_dirs = ferry_flags()
system = {"/usr/lib", "/lib", "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/local/lib"}
rpath = [d for d in library_dirs if os.path.realpath(d) not in system]

setup(
    ext_modules=[
        Extension(
            "ferry._ferry",
            sources=sorted(os.path.relpath(p, HERE)
                           for p in glob.glob(os.path.join(HERE, "src", "*.c"))),
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            runtime_library_dirs=rpath,
            libraries=["ferry"],
            define_macros=[("Py_LIMITED_API", "0x030B0000"), ("_GNU_SOURCE", None)],
            extra_compile_args=["-std=c11"],
            py_limited_api=True,
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
