#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Interoperability of ferry's store with PyTorch's c10d TCPStore.

Both directions, against the real thing: torch's TCPStore client talks to
the ferry-store process, and ferry's client (libferry through ctypes) talks
to a TCPStore server that torch starts. Exits 77 (skipped) when torch is not
importable. Usage: torch_store.py LIBFERRY FERRY_STORE
"""
import ctypes
import subprocess
import sys
from datetime import timedelta

try:
    import torch.distributed as dist
except Exception as e:  # no torch here: nothing to interoperate with
    print(f"skip: torch is not importable ({e})")
    sys.exit(77)

lib_path, tool = sys.argv[1], sys.argv[2]
failures = 0


def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print(f"FAIL: {what}")
    else:
        print(f"ok: {what}")


def torch_client_against_ferry_server():
    proc = subprocess.Popen([tool, "--bind", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.split()[-1])
        st = dist.TCPStore("127.0.0.1", port, is_master=False,
                           timeout=timedelta(seconds=10))
        st.set("alpha", "one")
        check(st.get("alpha") == b"one", "torch set/get through ferry-store")
        check(st.add("ctr", 5) == 5 and st.add("ctr", -2) == 3,
              "torch add through ferry-store")
        check(st.compare_set("cas", "", "x") == b"x",
              "torch compare_set creates through ferry-store")
        check(st.check(["alpha"]) and not st.check(["missing"]),
              "torch check through ferry-store")
        st.wait(["alpha"], timedelta(seconds=2))
        try:
            st.wait(["missing"], timedelta(milliseconds=300))
            check(False, "torch wait on a missing key times out")
        except Exception:
            check(True, "torch wait on a missing key times out")
        st.append("app", "ab")
        st.append("app", "cd")
        check(st.get("app") == b"abcd", "torch append through ferry-store")
        st.multi_set(["m1", "m2"], ["v1", "v2"])
        check(st.multi_get(["m1", "m2"]) == [b"v1", b"v2"],
              "torch multi_set/multi_get through ferry-store")
        check(st.num_keys() >= 6, f"torch num_keys through ferry-store ({st.num_keys()})")
        check(st.delete_key("alpha") and not st.check(["alpha"]),
              "torch delete_key through ferry-store")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ferry_client_against_torch_server():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))
    lib = ctypes.CDLL(lib_path)
    lib.ferry_store_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p,
                                        ctypes.POINTER(ctypes.c_void_p)]
    lib.ferry_store_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                    ctypes.c_char_p, ctypes.c_size_t]
    lib.ferry_store_get.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                    ctypes.POINTER(ctypes.c_void_p),
                                    ctypes.POINTER(ctypes.c_size_t)]
    lib.ferry_store_add.argtypes = [ctypes.c_void_p, ctypes.c_char_p,
                                    ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]
    lib.ferry_store_close.argtypes = [ctypes.c_void_p]
    lib.ferry_store_free.argtypes = [ctypes.c_void_p]
    lib.ferry_last_error.restype = ctypes.c_char_p
    h = ctypes.c_void_p()
    url = f"tcp://127.0.0.1:{server.port}".encode()
    st = lib.ferry_store_connect(url, None, ctypes.byref(h))
    check(st == 0, f"ferry connects to torch's TCPStore ({lib.ferry_last_error()})")
    if st != 0:
        return
    # torch's client prefixes its keys with "/".
    check(lib.ferry_store_set(h, b"/from-ferry", b"hello", 5) == 0, "ferry set on torch")
    check(server.get("from-ferry") == b"hello", "torch reads what ferry set")
    server.set("from-torch", "world")
    v, n = ctypes.c_void_p(), ctypes.c_size_t()
    st = lib.ferry_store_get(h, b"/from-torch", ctypes.byref(v), ctypes.byref(n))
    check(st == 0 and ctypes.string_at(v, n.value) == b"world",
          "ferry reads what torch set")
    if st == 0:
        lib.ferry_store_free(v)
    out = ctypes.c_int64()
    server.add("n", 40)
    st = lib.ferry_store_add(h, b"/n", 2, ctypes.byref(out))
    check(st == 0 and out.value == 42 and server.add("n", 0) == 42,
          "ferry add on torch's counter")
    lib.ferry_store_close(h)


torch_client_against_ferry_server()
ferry_client_against_torch_server()
print(f"torch {dist.__name__}: {failures} failure(s)")
sys.exit(1 if failures else 0)
