"""Tiny real NIfTI volumes with bright cubes and an MAE run directory, shared by the probe, features and
label-efficiency tests (module-scoped fixtures)."""

import json

import numpy as np
import pytest
from flax import nnx

from medjax.config.finetune_schema import FinetuneConfig
from medjax.config.overrides import to_dict
from medjax.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from medjax.models import MAE
from medjax.training.checkpoint import Checkpointer
from medjax.training.state import split_model

SIDE, WIN = 16, 8  # volumes 16^3, windows 8^3 without overlap: 8 windows per volume


def _cube_volume(corner):
    """Image: a dim ramp (0.1 .. 0.25 along x) with a bright 8^3 cube at window ``corner`` (or none); label: the
    cube."""
    img = np.broadcast_to(0.1 + 0.01 * np.arange(SIDE, dtype=np.float32)[:, None, None], (SIDE,) * 3).copy()
    lab = np.zeros((SIDE,) * 3, np.uint8)
    if corner is not None:
        sl = tuple(slice(c * WIN, (c + 1) * WIN) for c in corner)
        img[sl], lab[sl] = 2.0, 1
    return img, lab


@pytest.fixture(scope="module")
def cube_data(tmp_path_factory):
    """12 volumes (train 8, held out 4), every other one with a cube; a JSON manifest of image/label files."""
    from medjax.data.io_nifti import write_nifti

    root = tmp_path_factory.mktemp("probe_data")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    entries = []
    corners = [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 0), (1, 1, 1), (0, 1, 0)]
    for i in range(12):
        img, lab = _cube_volume(corners[i // 2] if i % 2 == 0 else None)
        write_nifti(str(root / f"v{i:02d}.nii.gz"), img, affine)
        write_nifti(str(root / f"v{i:02d}_lab.nii.gz"), lab, affine)
        entries.append({"id": f"v{i:02d}", "image": f"v{i:02d}.nii.gz", "label": f"v{i:02d}_lab.nii.gz"})
    (root / "data.json").write_text(json.dumps({"training": entries}))
    return root


def probe_cfg(root) -> Config:
    return Config(
        name="tiny_probe", task="classification",
        data=DataConfig(dir=str(root / "data.json"), spatial_dims=3, crop_size=(WIN,), spacing=(), intensity="none",
                        crop_foreground=False, augment=False),
        model=ModelConfig(variant="Mu/4", pos_embed="learned", decoder_width=16, decoder_depth=1, decoder_heads=2),
        train=TrainConfig(steps=1, batch_size=2),
        finetune=FinetuneConfig(num_classes=2, class_from_label=True, min_object_voxels=8, val_records=4,
                                eval_overlap=0.0, eval_batch=8),
    )


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory, cube_data):
    """A pretraining run directory (an MAE checkpoint at step 3 with its saved config)."""
    cfg = probe_cfg(cube_data)
    mae = MAE(cfg.model, spatial_dims=3, input_size=(WIN,) * 3, rngs=nnx.Rngs(11))
    _, params, _ = split_model(mae)
    run = tmp_path_factory.mktemp("mae")
    saved = to_dict(cfg) | {"task": "mae"}
    with Checkpointer(run, keep=1) as ck:
        ck.save(3, {"params": params}, meta={"config": saved, "loss": 0.5}, force=True)
        ck.wait()
    return run, params
