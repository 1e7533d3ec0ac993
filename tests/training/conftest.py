"""Fixtures for training tests: a tiny config and a small stand-in masked autoencoder (fast on CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from medjax.config.schema import Config, DataConfig, ModelConfig, TrainConfig


class TinyMaskedAE(nnx.Module):
    """A two-layer masked autoencoder on flattened ``(B, *S, C)`` inputs: random voxels are hidden, the loss is the
    mean squared error on the hidden ones. Same call signature as the MAE."""

    def __init__(self, size: int, hidden: int = 8, *, rngs: nnx.Rngs):
        self.enc = nnx.Linear(size, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.dec = nnx.Linear(hidden, size, rngs=rngs)
        self.mask_token = nnx.Param(jnp.zeros((1, size)))

    def __call__(self, images, *, mask_key, mask_ratio=None, deterministic=True):
        x = images.reshape(images.shape[0], -1)
        mask = jax.random.uniform(mask_key, x.shape) < (mask_ratio or 0.5)
        visible = jnp.where(mask, self.mask_token[...], x)
        pred = self.dec(jax.nn.gelu(self.norm(self.enc(visible))))
        err = jnp.where(mask, (pred - x) ** 2, 0.0)
        loss = err.sum() / jnp.maximum(mask.sum(), 1)
        return loss, {"pred": pred, "mask": mask, "target": x}


@pytest.fixture
def tiny_cfg() -> Config:
    return Config(
        name="tiny",
        data=DataConfig(crop_size=(4,), spatial_dims=3),
        model=ModelConfig(variant="Mu/4"),
        train=TrainConfig(steps=20, batch_size=4, lr=1e-2, warmup_steps=2, grad_clip=1.0, weight_decay=0.05),
    )


@pytest.fixture
def tiny_model_factory():
    def make(seed: int = 0, size: int = 4 * 4 * 4):
        return TinyMaskedAE(size, rngs=nnx.Rngs(seed))

    return make


def write_volumes(folder, n: int = 3, shape=(20, 20, 20), seed: int = 0) -> str:
    """Write ``n`` small NIfTI volumes (bright ellipsoids with texture, 2 mm voxels) to ``folder``; returns it."""
    from medjax.data.testing import write_blob_volumes

    return write_blob_volumes(folder, n, shape, seed)


TINY_OVERRIDES = [
    "model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.crop_size=16", "data.spacing=2.0,2.0,2.0", "data.samples_per_volume=2", "data.workers=0",
    "train.batch_size=4", "train.warmup_steps=2", "train.lr=1e-3", "train.log_every=1",
    "checkpoint.every_steps=2", "checkpoint.keep=10",
]


@pytest.fixture
def volumes(tmp_path_factory):
    return write_volumes(tmp_path_factory.mktemp("vols"))


@pytest.fixture
def tiny_run_cfg(volumes):
    from medjax.config import apply_overrides, get_preset

    return apply_overrides(get_preset("demo"), TINY_OVERRIDES + [f"data.dir={volumes}", "train.steps=6"])
