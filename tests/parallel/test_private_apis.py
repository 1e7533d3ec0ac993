"""The one place medjax reaches into JAX internals, checked against the installed JAX: fails loudly on a JAX
release that moves it (then update medjax.parallel.distributed.coordination_client)."""

from __future__ import annotations

import socket

from medjax.parallel.distributed import coordination_client, is_initialized
from medjax.parallel.testing import run_with_devices


def test_no_client_before_initialize():
    assert is_initialized() is False
    assert coordination_client() is None


def test_coordination_client_barrier_in_a_started_cluster():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run_with_devices(
        f"""
        import jax
        from medjax.parallel import distributed as d
        jax.distributed.initialize(coordinator_address="127.0.0.1:{port}", num_processes=1, process_id=0,
                                   initialization_timeout=60)
        client = d.coordination_client()
        client.wait_at_barrier("medjax-test/1", 10_000)  # what barrier() calls with several processes
        emit({{"initialized": d.is_initialized(), "client": type(client).__name__}})
        """,
        devices=1,
        timeout=120,
    )
    assert out == {"initialized": True, "client": "DistributedRuntimeClient"}
