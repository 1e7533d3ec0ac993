"""Sliding-window inference with the segmentation model equals one full pass when the volume fits a window."""

import jax
import numpy as np
import pytest

from medjax.finetune.predict import Predictor
from medjax.finetune.tasks import build_task_model
from medjax.training.state import split_model


@pytest.mark.slow
def test_sliding_window_equals_full_pass(tiny_cfg):
    cfg = tiny_cfg("segmentation")
    model_def, params, ms = split_model(build_task_model(cfg))
    volume = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    probs = Predictor(cfg, model_def, params, ms).segment(volume)
    full_pass = jax.jit(lambda x, p, s: jax.nn.softmax(model_def.merge(p, s)(x), axis=-1))
    full = full_pass(volume[None], params, ms)[0]
    np.testing.assert_allclose(probs, np.asarray(full), atol=1e-5)
    # a smaller volume is padded to the window and cropped back
    small = Predictor(cfg, model_def, params, ms).segment(volume[:6, :7])
    assert small.shape == (6, 7, 8, 3)
