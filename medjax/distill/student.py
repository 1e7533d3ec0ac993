"""The student of representation distillation: a ViT encoder plus a learned projection to the teacher's width.

Parameters: ``encoder/...`` (a plain :class:`~medjax.models.vit.ViT`, where every fine-tuning model keeps its
encoder, so ``medjax finetune --init-from`` reads a distillation run like an MAE run) and, only when the widths
differ, ``proj/{kernel,bias}`` ``(D_student, D_teacher)`` (not used after distillation).
"""

from __future__ import annotations

import jax
from flax import nnx

from medjax.config.dims import broadcast_size
from medjax.models.layers import Dense
from medjax.models.vit import ViT


class EncoderOnly(nnx.Module):
    """A ViT kept at ``params["encoder"]`` (the teacher's form: an MAE's encoder without its decoder)."""

    def __init__(self, model_cfg, *, spatial_dims: int, input_size, rngs: nnx.Rngs):
        self.encoder = ViT(model_cfg, spatial_dims=spatial_dims, input_size=input_size, rngs=rngs)


class Student(nnx.Module):
    """Student encoder of ``cfg.model`` for ``cfg.data.crop_size`` crops, projected to ``teacher_width``.

    ``project(tokens)``: ``(B, T, D_student) -> (B, T, teacher_width)`` (identity when the widths are equal).
    """

    def __init__(self, cfg, teacher_width: int, *, rngs: nnx.Rngs):
        size = broadcast_size(cfg.data.crop_size, cfg.data.spatial_dims, "data.crop_size")
        self.encoder = ViT(cfg.model, spatial_dims=cfg.data.spatial_dims, input_size=size, rngs=rngs)
        width = self.encoder.width
        self.proj = (Dense(width, int(teacher_width), names=("embed", None), dtype=self.encoder.dtype, rngs=rngs)
                     if width != int(teacher_width) else None)

    def project(self, tokens: jax.Array) -> jax.Array:
        return tokens if self.proj is None else self.proj(tokens)


def build_student(cfg, teacher_width: int, seed: int | None = None) -> Student:
    """The :class:`Student` with parameters initialised from ``seed`` (default ``cfg.train.seed``)."""
    return Student(cfg, teacher_width, rngs=nnx.Rngs(cfg.train.seed if seed is None else seed))
