"""Encoder initialisation from an MAE checkpoint, with learned position embeddings resized to a new grid."""

import jax
import numpy as np
import pytest
from flax import nnx

from medjax.config.overrides import to_dict
from medjax.errors import CheckpointError
from medjax.finetune.init import load_encoder, resolve_checkpoint
from medjax.finetune.tasks import build_task_model
from medjax.models import MAE, resize_pos_embed
from medjax.training.checkpoint import Checkpointer
from medjax.training.state import split_model


def _mae_checkpoint(tmp_path, cfg):
    mae_cfg = cfg.model.__class__(variant="Mu/4", pos_embed="learned", decoder_width=16, decoder_depth=1,
                                  decoder_heads=2)
    mae = MAE(mae_cfg, spatial_dims=3, input_size=(8, 8, 8), rngs=nnx.Rngs(7))
    _, params, _ = split_model(mae)
    saved_cfg = to_dict(cfg)
    saved_cfg["model"] = to_dict(cfg)["model"] | {"variant": "Mu/4", "pos_embed": "learned"}
    saved_cfg["data"]["crop_size"] = [8]
    with Checkpointer(tmp_path / "mae", keep=1) as ck:
        ck.save(5, {"params": params}, meta={"config": saved_cfg}, force=True)
        ck.wait()
    return params


def test_load_encoder_copies_weights_and_resizes_pos_embed(tmp_path, tiny_cfg):
    cfg = tiny_cfg("classification")
    cfg = cfg.__class__(**{**cfg.__dict__, "data": cfg.data.__class__(spatial_dims=3, crop_size=(16,),
                                                                           spacing=())})
    mae_params = _mae_checkpoint(tmp_path, cfg)
    _, params, _ = split_model(build_task_model(cfg))
    new, report = load_encoder(params, tmp_path / "mae", grid=(4, 4, 4), num_prefix=1, spatial_dims=3)
    assert report["step"] == 5 and report["resized"][0]["old_grid"] == [2, 2, 2]
    assert new["encoder"]["pos_embed"].shape == (1, 1 + 64, 64)
    expected = resize_pos_embed(np.asarray(mae_params["encoder"]["pos_embed"]), (2, 2, 2), (4, 4, 4))
    np.testing.assert_allclose(new["encoder"]["pos_embed"], expected, rtol=1e-6)
    np.testing.assert_array_equal(new["encoder"]["blocks"][1]["mlp"]["fc1"]["kernel"],
                                  mae_params["encoder"]["blocks"][1]["mlp"]["fc1"]["kernel"])
    np.testing.assert_array_equal(new["head"]["kernel"], params["head"]["kernel"])  # head untouched
    assert jax.tree.structure(new) == jax.tree.structure(params)


def test_resolve_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        resolve_checkpoint(tmp_path)
