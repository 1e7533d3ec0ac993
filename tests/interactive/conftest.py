"""Fixtures for the viewer tests: small NIfTI volumes and tiny MAE runs (config.json + an orbax checkpoint of an
initialised train state, written exactly as `medjax pretrain` writes them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

TINY = [
    "model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.crop_size=16", "data.spacing=2.0,2.0,2.0", "data.samples_per_volume=2", "data.workers=0",
    "train.batch_size=4", "train.warmup_steps=2", "train.lr=1e-3", "train.log_every=1",
    "checkpoint.every_steps=2", "checkpoint.keep=10",
]


def write_volumes(folder, n: int = 2, shape=(20, 22, 18), seed: int = 0) -> Path:
    """``n`` small NIfTI volumes (textured ellipsoids, 2 mm voxels, stored RAS) in ``folder``."""
    from medjax.data.testing import write_blob_volumes

    return Path(write_blob_volumes(folder, n, shape, seed, origin=(-20.0, -22.0, -18.0)))


def make_run(workdir: Path, overrides: list[str], data_dir: Path) -> dict:
    """Write ``workdir/config.json`` and a step-0 checkpoint of the initialised train state; returns facts."""
    from medjax.config import apply_overrides, get_preset, to_json
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.digest import params_digest
    from medjax.training.state import state_to_dict, train_state_spec

    cfg = apply_overrides(get_preset("demo"), TINY + [f"data.dir={data_dir}"] + overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(to_json(cfg) + "\n")
    spec = train_state_spec(cfg)
    state = spec.init()
    with Checkpointer(workdir, keep=3, async_save=False) as ckpt:
        ckpt.save(0, state_to_dict(state), meta={"step": 0, "loss": 1.25}, force=True)
        ckpt.wait()
    return {"workdir": workdir, "cfg": cfg, "digest": params_digest(state.params)}


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def volumes(tmp_path_factory) -> Path:
    return write_volumes(tmp_path_factory.mktemp("volumes"))


@pytest.fixture(scope="session")
def run3d(tmp_path_factory, volumes) -> dict:
    """3D MAE, 16^3 input, 8^3 patches (grid 2x2x2), CLS token, 2 blocks of 2 heads."""
    return make_run(tmp_path_factory.mktemp("run3d") / "run", [], volumes)


@pytest.fixture(scope="session")
def run2d(tmp_path_factory, volumes) -> dict:
    """2D MAE on axial slices, 16x16 input, 4x4 patches (grid 4x4), no CLS token."""
    return make_run(tmp_path_factory.mktemp("run2d") / "run",
                    ["data.spatial_dims=2", "model.variant=Mu/4", "model.cls_token=false"], volumes)
