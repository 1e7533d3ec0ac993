"""FSDP memory: per-device bytes of parameters + optimizer state are ~1/N of the total over N devices, from the
shardings, from the materialised arrays and from the compiled train step (`medjax bench train --compile-only`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medjax.parallel.testing import spawn_with_devices


TINY = ["model.variant=Mu/8", "data.crop_size=16", "model.decoder_width=32", "model.decoder_depth=1",
        "model.decoder_heads=2", "model.dtype=float32", "train.batch_size=8"]
MESHES = {"dp": ["mesh.data=8", "mesh.fsdp=1"], "fsdp": ["mesh.data=1", "mesh.fsdp=8"]}

ARRAYS = """
from medjax.config import apply_overrides, get_preset
from medjax.parallel.sharding import device_bytes, sharded_bytes
from medjax.training.state import train_state_spec
out = {{}}
for name, mesh in {meshes!r}.items():
    spec = train_state_spec(apply_overrides(get_preset("demo"), {tiny!r} + mesh))
    state = spec.init()
    held = device_bytes(state)
    out[name] = {{"computed": sharded_bytes(spec.abstract, spec.shardings), "held": sorted(set(held.values())),
                 "devices": len(held)}}
emit(out)
"""


def _bench(mesh):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "medjax", "bench", "train", "--config", "demo", "--compile-only",
           "--set", *TINY, *mesh]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_demo_fsdp_preset():
    from medjax.config import get_preset
    from medjax.parallel.mesh import mesh_shape

    cfg = get_preset("demo_fsdp")
    assert cfg.name == "demo_fsdp" and cfg.model == get_preset("demo").model
    assert mesh_shape(cfg.mesh, 8) == (1, 8, 1) and mesh_shape(cfg.mesh, 1) == (1, 1, 1)
    assert cfg.train.batch_size % 8 == 0


@pytest.mark.slow  # 8-device subprocesses compiling a tiny MAE step twice (~45 s on 2 cores)
def test_fsdp_state_is_one_eighth_per_device():
    arrays = spawn_with_devices(ARRAYS.format(meshes=MESHES, tiny=TINY), 8)
    benches = {name: _bench(mesh) for name, mesh in MESHES.items()}
    report = {}
    for name, proc in benches.items():
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        lines = [line for line in out.splitlines() if line.strip()]
        assert len(lines) == 1, out
        report[name] = json.loads(lines[0])
    held = arrays.result(400)

    dp, fsdp = report["dp"], report["fsdp"]
    total = dp["state_bytes_total"]
    assert fsdp["state_bytes_total"] == total and dp["params"] == fsdp["params"]
    # AdamW: parameters + two moments in float32, plus a few scalars
    assert 12 * dp["params"] <= total < 12 * dp["params"] + 1024
    assert dp["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1} and fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # DP: every device holds everything; FSDP: 1/8 of what can be split, plus the few replicated leaves
    assert dp["state_bytes_per_device"] == total
    rep = fsdp["state_bytes_replicated"]
    assert 8 * fsdp["state_bytes_per_device"] == total + 7 * rep
    assert rep < 0.02 * total
    assert 1 / 8 <= fsdp["state_fraction_per_device"] < 1 / 8 * 1.15

    # the arrays really created on the 8 devices hold exactly what the shardings say
    for name in MESHES:
        assert held[name]["devices"] == 8
        assert held[name]["held"] == [report[name]["state_bytes_per_device"]]
        assert held[name]["computed"]["per_device"] == report[name]["state_bytes_per_device"]

    # the compiled step's arguments are the device's state shards plus its 1/8 of the batch (8 x 16^3 float32)
    batch_shard = 8 * 16**3 * 4 // 8
    for r in (dp, fsdp):
        assert r["compiled_argument_bytes"] == r["state_bytes_per_device"] + batch_shard
        assert r["compiled_alias_bytes"] == r["state_bytes_per_device"]  # the donated state is updated in place
    assert fsdp["compiled_bytes_per_device"] < dp["compiled_bytes_per_device"]
