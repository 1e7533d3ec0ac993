"""Tiny federated runs: a Mu/8 MAE on 16^3 crops of small blob volumes, two sites."""

from __future__ import annotations

import pytest

TINY = [
    "model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.crop_size=16", "data.spacing=2.0,2.0,2.0", "data.samples_per_volume=2", "data.workers=0",
    "train.batch_size=4", "train.warmup_steps=2", "train.lr=1e-3", "train.log_every=1",
    "federated.local_steps=2",
]


@pytest.fixture(scope="module")
def site_dirs(tmp_path_factory):
    from medjax.data.testing import write_blob_volumes

    root = tmp_path_factory.mktemp("sites")
    return [write_blob_volumes(root / "site-a", 2, seed=1), write_blob_volumes(root / "site-b", 3, seed=2)]


def tiny_cfg(data_dir, *extra):
    from medjax.config import apply_overrides, get_preset

    return apply_overrides(get_preset("demo"), TINY + [f"data.dir={data_dir}", *extra])
