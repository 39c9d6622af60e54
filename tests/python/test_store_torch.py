# SPDX-License-Identifier: Apache-2.0
"""ferry's Store and StoreServer with torch.distributed.TCPStore on the
other side, both directions: torch's client against ferry's server, and
ferry's client against torch's server. Skipped (with the reason) where
torch is older than 2.3, whose TCPStore speaks the protocol before the
VALIDATE query, which ferry's store does not (docs/STORE.md)."""
from datetime import timedelta

import pytest
import torch

import ferry

_version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
if _version < (2, 3):
    pytest.skip(f"torch {torch.__version__} speaks the TCPStore protocol of PyTorch before "
                "2.3, which ferry's store does not (docs/STORE.md)", allow_module_level=True)

import torch.distributed as dist  # noqa: E402


def test_torch_client_ferry_server():
    with ferry.StoreServer() as srv:
        t = dist.TCPStore("127.0.0.1", srv.port, is_master=False,
                          timeout=timedelta(seconds=10))
        t.set("alpha", "one")
        assert t.get("alpha") == b"one"
        assert t.add("n", 5) == 5
        with ferry.Store(srv.url, timeout=10) as st:
            # torch prefixes its keys with "/".
            assert st.get("/alpha") == b"one"
            st.set("/beta", b"two")
            assert st.add("/n", 1) == 6
        assert t.get("beta") == b"two"
        assert t.multi_get(["alpha", "beta"]) == [b"one", b"two"]


def test_ferry_client_torch_server():
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))
    with ferry.Store(f"tcp://127.0.0.1:{server.port}", timeout=10) as st:
        st.set("/from-ferry", b"hello")
        assert server.get("from-ferry") == b"hello"
        server.set("from-torch", "world")
        assert st.get("/from-torch") == b"world"
        assert st.add("/ctr", 3) == 3 and server.add("ctr", 1) == 4
        assert st.check(["/from-torch"]) and not st.check(["/missing"])
        st.wait(["/from-torch"], timeout=2)
        assert st.compare_set("/cas", b"", b"x") == b"x"
