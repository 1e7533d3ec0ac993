"""`medjax bench train` on a tiny model prints one valid JSON line with the documented fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medjax.training.bench import peak_tflops

pytestmark = pytest.mark.slow


def test_bench_train_prints_one_json_line():
    cmd = [sys.executable, "-m", "medjax", "bench", "train", "--config", "mae3d_vitb16_96", "--steps", "2",
           "--batch", "2", "--peak-tflops", "1.0", "--set", "model.variant=Mu/8", "data.crop_size=16",
           "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.dtype=float32"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [line for line in p.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    r = json.loads(lines[0])
    for key in ("samples_per_s", "step_time_s", "compile_s", "model_tflops_per_s", "mfu", "peak_memory_bytes",
                "state_bytes_per_device", "compiled_bytes_per_device", "flops_per_sample", "params"):
        assert key in r, key
    assert r["batch"] == 2 and r["steps"] == 2 and r["input"] == [16, 16, 16, 1]
    assert r["samples_per_s"] > 0 and r["step_time_s"] > 0 and r["compile_s"] > 0
    assert r["mfu"] == pytest.approx(r["model_tflops_per_s"] / (1.0 * r["devices"]))
    # AdamW state: params + two moments, float32 -> at least 12 bytes per parameter on one CPU device
    assert r["state_bytes_per_device"] >= 12 * r["params"]
    # 8 patches of 8^3 voxels: the encoder sees 2 + CLS tokens, the decoder 8 + CLS; 6 x params x tokens bounds
    assert 6 * r["params"] * 3 < r["flops_per_sample"] < 6 * r["params"] * 9 + 12 * 2 * 9**2 * 64


class _Dev:
    def __init__(self, kind):
        self.device_kind = kind


def test_peak_lookup():
    assert peak_tflops(_Dev("NVIDIA H100 80GB HBM3")) == 989.0
    assert peak_tflops(_Dev("TPU v5p")) == 459.0
    assert peak_tflops(_Dev("TPU v5 lite")) == 197.0
    assert peak_tflops(_Dev("cpu")) is None
