"""`medjax bench train` on a tiny model prints one valid JSON line with the documented fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
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


def test_bench_train_threads_pins_the_process_to_that_many_cores():
    """``--threads 1`` must really run on one core: XLA's flags alone leave its CPU runtime on every core."""
    def cmd(threads):
        return [sys.executable, "-m", "medjax", "bench", "train", "--config", "mae2d_vitb16_224",
                "--threads", str(threads), *TINY_BENCH, "data.crop_size=32,32"]

    p = subprocess.run(cmd(1), capture_output=True, text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["cpu_threads"] == 1 and r["cpu_cores"] == 1
    too_many = len(os.sched_getaffinity(0)) + 1
    p = subprocess.run(cmd(too_many), capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode != 0 and f"--threads {too_many}: this process may use only" in p.stderr


def test_peak_lookup():
    assert peak_tflops(_Dev("NVIDIA H100 80GB HBM3")) == 989.0
    assert peak_tflops(_Dev("TPU v5p")) == 459.0
    assert peak_tflops(_Dev("TPU v5 lite")) == 197.0
    assert peak_tflops(_Dev("cpu")) is None


TINY_BENCH = ["--steps", "2", "--batch", "2", "--set", "model.variant=Mu/8", "model.decoder_width=32",
              "model.decoder_depth=1", "model.decoder_heads=2", "model.dtype=float32"]


@pytest.mark.parametrize("config,peer,crop,library", [
    ("mae3d_vitb16_96", "monai", "data.crop_size=16", "monai"),
    ("mae2d_vitb16_224", "hf", "data.crop_size=32,32", "transformers"),
])
def test_bench_train_runs_the_peer_and_prints_the_ratio(config, peer, crop, library):
    pytest.importorskip("torch")
    pytest.importorskip(library)
    cmd = [sys.executable, "-m", "medjax", "bench", "train", "--config", config, "--peer", peer, "--repeat", "2",
           *TINY_BENCH, crop]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["peer"] == peer and r["peer_library"].startswith(library) and "peer_error" not in r
    assert r["peer_samples_per_s"] > 0 and r["peer_time_to_first_step_s"] > 0
    assert r["ratio"] == pytest.approx(r["samples_per_s"] / r["peer_samples_per_s"])
    assert len(r["rounds"]) == 2 and all(x["peer_samples_per_s"] > 0 for x in r["rounds"])
    assert max(x["samples_per_s"] for x in r["rounds"]) == r["samples_per_s"]
    # the peer is the same model: parameter counts agree to within the position tables and CLS/bias details
    assert abs(r["peer_params"] - r["params"]) / r["params"] < 0.05
    assert r["time_to_first_step_s"] >= r["compile_s"] > 0
    assert np.isfinite(r["peer_final_loss"]) and np.isfinite(r["final_loss"])
    # the human summary on stderr names both and the ratio
    summary = [line for line in p.stderr.splitlines() if line.startswith("medjax ")][-1]
    assert f"ratio {r['ratio']:.2f}x" in summary and peer in summary


def test_pretrain_profile_writes_a_tensorboard_trace(tmp_path):
    from medjax.data.testing import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data", n=2, layout="folder", with_labels=False)
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "medjax", "pretrain", "--config", "demo", "--workdir", str(work), "--no-progress",
           "--profile", "2", "--set", f"data.dir={data}", "model.variant=Mu/8", "model.decoder_width=32",
           "model.decoder_depth=1", "model.decoder_heads=2", "data.crop_size=16", "data.spacing=2.0,2.0,2.0",
           "data.workers=0", "train.batch_size=2", "train.steps=4", "checkpoint.every_steps=100"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 0, p.stderr[-2000:]
    traces = list((work / "tb" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    from jax.profiler import ProfileData

    names = {ev.name for plane in ProfileData.from_file(str(traces[0])).planes for line in plane.lines
             for ev in line.events}
    assert any("step" in n for n in names)  # the jitted train step ran inside the trace
