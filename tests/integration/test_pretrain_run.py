"""End-to-end pretraining in-process on a tiny dataset: loss falls, files, metrics, resume, restart, NaN stop,
and every preset shrunk to a CPU-sized run."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from medjax.config import apply_overrides, get_preset
from medjax.errors import TrainingDivergedError
from medjax.training.checkpoint import Checkpointer
from medjax.training.digest import params_digest
from medjax.training.logging import read_metrics
from medjax.training.pretraining import pretrain

pytestmark = pytest.mark.slow

TINY = [
    "model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.crop_size=16", "data.spacing=2.0,2.0,2.0", "data.samples_per_volume=2", "data.workers=0",
    "train.batch_size=4", "train.warmup_steps=2", "train.lr=2e-3", "train.log_every=1",
    "checkpoint.every_steps=2", "checkpoint.keep=10",
]


@pytest.fixture(scope="module", autouse=True)
def _compile_cache(tmp_path_factory):
    """Share compiled programs between the runs of this module (the cache is keyed by the program)."""
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jaxcache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_compilation_cache_dir", old)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from medjax.data.testing import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("data"), n=3, layout="folder", with_labels=False)


def _cfg(dataset, *extra, preset="demo"):
    return apply_overrides(get_preset(preset), TINY + [f"data.dir={dataset}", *extra])


def test_run_resume_restart(dataset, tmp_path):
    work = tmp_path / "run"
    s = pretrain(_cfg(dataset, "train.steps=8"), work, progress=False)
    assert s["step"] == 8 and s["exit_code"] == 0 and s["resumed_from"] is None
    recs = read_metrics(work / "metrics.jsonl")
    assert [r["step"] for r in recs] == list(range(1, 9))
    assert set(recs[0]) == {"step", "loss", "lr", "grad_norm", "samples_per_s", "nonfinite_count", "time"}
    losses = [r["loss"] for r in recs]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert Checkpointer(work, read_only=True).all_steps() == [2, 4, 6, 8]
    for rel in ("config.json", "summary.json", "loss.png", "reconstructions/step_000008.png"):
        assert (work / rel).is_file(), rel
    assert any(p.name.startswith("events.out.tfevents") for p in (work / "tb").iterdir())
    restored, data_state, meta = Checkpointer(work, read_only=True).restore_unsharded(8)
    assert params_digest(restored["params"]) == s["params_digest"]
    assert meta["config"]["train"]["steps"] == 8 and meta["num_params"] == s["num_params"]
    assert data_state is not None

    s2 = pretrain(_cfg(dataset, "train.steps=10"), work, progress=False)
    assert s2["resumed_from"] == 8 and s2["step"] == 10
    assert [r["step"] for r in read_metrics(work / "metrics.jsonl")] == list(range(1, 11))

    s3 = pretrain(_cfg(dataset, "train.steps=2"), work, restart=True, progress=False)
    assert s3["resumed_from"] is None and s3["step"] == 2
    assert [r["step"] for r in read_metrics(work / "metrics.jsonl")] == [1, 2]
    assert Checkpointer(work, read_only=True).all_steps() == [2]


def test_nonfinite_stop_keeps_good_params(dataset, tmp_path):
    from medjax.training.state import train_state_spec

    cfg = _cfg(dataset, "train.steps=20", "train.lr=inf", "train.max_nonfinite=3", "checkpoint.every_steps=100")
    with pytest.raises(TrainingDivergedError, match="3 consecutive non-finite steps at step 3") as e:
        pretrain(cfg, tmp_path / "nan", progress=False)
    assert "checkpoints/3" in str(e.value)
    restored, _, _ = Checkpointer(tmp_path / "nan", read_only=True).restore_unsharded(3)
    assert int(restored["nonfinite_count"]) == 3 and int(restored["step"]) == 3
    init = train_state_spec(cfg).init()
    assert params_digest(restored["params"]) == params_digest(init.params)
    recs = read_metrics(tmp_path / "nan" / "metrics.jsonl")
    assert [r["nonfinite_count"] for r in recs] == [1, 2, 3]


@pytest.mark.parametrize("preset", ["mae3d_vitb16_96", "mae3d_ct_vitb16_96", "mae2d_vitb16_224"])
def test_presets_shrink_to_a_tiny_run(dataset, tmp_path, preset):
    extra = ["train.steps=2", "data.workers=0", "train.batch_size=2", "train.warmup_steps=1"]
    if preset.startswith("mae2d"):
        extra += ["data.crop_size=16,16"]
    cfg = _cfg(dataset, *extra, preset=preset)
    assert cfg.name == preset
    s = pretrain(cfg, tmp_path / preset, progress=False)
    assert s["step"] == 2 and np.isfinite(s["final_loss"])
    assert os.path.isfile(s["reconstruction_png"])
