"""Representation distillation on intermediate blocks (``distill.layers``) and attention maps
(``distill.attention_weight``): block pairing, the attention KL's values, zero loss on every term for a student
equal to its teacher (without masking), and positive, finite terms for a smaller student (projection, fewer heads).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.config.distill_schema import DistillConfig
from medjax.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from medjax.errors import ConfigError


def test_layer_pairs_even_and_explicit():
    from medjax.distill.layers import layer_pairs

    assert layer_pairs(("1", "2", "3"), 3, 12) == ((1, 4), (2, 8), (3, 12))
    assert layer_pairs(("1:2", "3:12"), 3, 12) == ((1, 2), (3, 12))
    assert layer_pairs(("1", "2"), 2, 2) == ((1, 1), (2, 2))
    for bad in (("0",), ("4",), ("1:13",), ("a",), ("1:2:3",)):
        with pytest.raises(ConfigError, match="distill.layers"):
            layer_pairs(bad, 3, 12)


def test_attention_kl_hand_values():
    from medjax.distill.losses import attention_kl

    t = jnp.array([0.75, 0.25]).reshape(1, 1, 1, 2)
    s = jnp.array([0.5, 0.5]).reshape(1, 1, 1, 2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(attention_kl(s, t)) == pytest.approx(kl, rel=1e-5)
    assert float(attention_kl(t, t)) == 0.0
    # 2 student heads (1, 0) and (0, 1) average to (1/2, 1/2) against the 1-head teacher
    s2 = jnp.array([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)
    assert float(attention_kl(s2, t)) == pytest.approx(kl, rel=1e-5)
    # same head counts: per head, then averaged
    t2 = jnp.concatenate([t, s], axis=1)
    s2b = jnp.concatenate([s, s], axis=1)
    assert float(attention_kl(s2b, t2)) == pytest.approx(kl / 2, rel=1e-5)
    g = jax.grad(lambda tt: attention_kl(s, tt))(t)
    assert not np.any(np.asarray(g))


def _cfg(variant: str, cls_token: bool = False, **distill) -> Config:
    return Config(name="tiny_layers", task="mae",
                  data=DataConfig(spatial_dims=3, crop_size=(16,), spacing=()),
                  model=ModelConfig(variant=variant, cls_token=cls_token),
                  train=TrainConfig(steps=1, batch_size=2),
                  distill=DistillConfig(**distill))


def _teacher(cfg):
    from medjax.distill.student import EncoderOnly
    from medjax.training.state import split_model

    m = EncoderOnly(cfg.model, spatial_dims=3, input_size=(16, 16, 16), rngs=nnx.Rngs(5))
    model_def, params, _ = split_model(m)
    return model_def, params, m.encoder


@pytest.fixture(scope="module")
def loss_of():
    """``loss_of(student_variant, mask_ratio, same, cls)``: the jitted distillation loss and its parts for a student
    of ``student_variant`` (``same``: initialised with the teacher's encoder) against a Mu/8 teacher, both with a
    CLS token when ``cls``."""
    from medjax.distill.step import distill_loss
    from medjax.distill.student import build_student

    teachers = {}
    images = jax.random.normal(jax.random.key(2), (2, 16, 16, 16, 1))

    def loss_of(variant, mask_ratio, same, cls=False):
        if cls not in teachers:
            teachers[cls] = _teacher(_cfg("Mu/8", cls))
        tdef, tparams, tenc = teachers[cls]
        cfg = _cfg(variant, cls, layers=("1", "2") if variant == "Mu/8" else ("1",), attention_weight=0.5,
                   layer_weight=2.0)
        student = build_student(cfg, tenc.width, seed=1, teacher_depth=len(tenc.blocks))
        if same:
            nnx.update(student.encoder, nnx.state(tdef.merge(tparams).encoder, nnx.Param))
        sdef, sparams, srest = nnx.split(student, nnx.Param, ...)

        @jax.jit
        def f(sp, tp):
            m = nnx.merge(sdef, sp, srest)
            return distill_loss(m, {"image": images}, jax.random.key(0), teacher_def=tdef, teacher_params=tp,
                                mask_ratio=mask_ratio, layer_weight=2.0, attention_weight=0.5, deterministic=True)

        loss, aux = f(sparams, tparams)
        return float(loss), {k: float(aux[k]) for k in ("final", "layer", "attention")}, student

    return loss_of


def test_student_equal_to_teacher_has_zero_loss_on_every_term(loss_of):
    for cls in (False, True):
        loss, parts, student = loss_of("Mu/8", 0.0, True, cls)
        assert student.layer_pairs == ((1, 1), (2, 2)) and student.layer_proj is None
        assert loss == pytest.approx(0.0, abs=1e-6)
        assert all(v == pytest.approx(0.0, abs=1e-6) for v in parts.values())
    # under masking the student sees fewer patches than the teacher, so even an equal student has work to do
    loss_m, parts_m, _ = loss_of("Mu/8", 0.5, True)
    assert all(v > 1e-4 for v in parts_m.values())
    loss_r, parts_r, _ = loss_of("Mu/8", 0.0, False)  # the same architecture, its own random weights
    assert all(v > 1e-4 for v in parts_r.values())
    for total, p in ((loss_m, parts_m), (loss_r, parts_r)):
        assert total == pytest.approx(p["final"] + 2.0 * p["layer"] + 0.5 * p["attention"], rel=1e-5)


def test_smaller_student_projects_layers_and_averages_heads(loss_of):
    # 1 block of width 32 with 1 head against the 2-block, width-64, 2-head teacher: block 1 -> teacher block 2
    loss, parts, student = loss_of("Mu/8:width=32,heads=1,depth=1", 0.5, False, True)
    assert student.layer_pairs == ((1, 2),) and len(student.layer_proj) == 1
    assert student.layer_proj[0].kernel.shape == (32, 64)
    assert np.isfinite(loss) and all(v > 0 for v in parts.values())


def test_distill_run_rejects_bad_layer_settings(tmp_path):
    from medjax.distill.run import distill

    cfg = dataclasses.replace(_cfg("Mu/8", layers=("1",)), distill=DistillConfig(teacher="x", attention_weight=-1.0))
    with pytest.raises(ConfigError, match="distill.attention_weight"):
        distill(cfg, tmp_path / "a", progress=False)
