"""The student of representation distillation: a ViT encoder plus a learned projection to the teacher's width.

Parameters: ``encoder/...`` (a plain :class:`~medjax.models.vit.ViT`, where every fine-tuning model keeps its
encoder, so ``medjax finetune --init-from`` reads a distillation run like an MAE run) and, only when the widths
differ, ``proj/{kernel,bias}`` ``(D_student, D_teacher)`` and, with ``distill.layers``, one such projection per
block pair at ``layer_proj/<i>/...`` (none of them used after distillation).
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

    def __init__(self, cfg, teacher_width: int, *, teacher_depth: int = 0, rngs: nnx.Rngs):
        from medjax.distill.layers import layer_pairs

        size = broadcast_size(cfg.data.crop_size, cfg.data.spatial_dims, "data.crop_size")
        self.encoder = ViT(cfg.model, spatial_dims=cfg.data.spatial_dims, input_size=size, rngs=rngs)
        width, tw = self.encoder.width, int(teacher_width)
        self.proj = (Dense(width, tw, names=("embed", None), dtype=self.encoder.dtype, rngs=rngs)
                     if width != tw else None)
        layers = tuple(getattr(cfg.distill, "layers", ()))
        if layers and teacher_depth < 1:
            raise ValueError("distill.layers needs the teacher's depth (build_student(..., teacher_depth=...))")
        #: ((student block, teacher block), ...) matched on intermediate tokens (1-based)
        self.layer_pairs = layer_pairs(layers, len(self.encoder.blocks), teacher_depth) if layers else ()
        self.layer_proj = (nnx.List([Dense(width, tw, names=("embed", None), dtype=self.encoder.dtype, rngs=rngs)
                                     for _ in self.layer_pairs]) if self.layer_pairs and width != tw else None)

    def project(self, tokens: jax.Array) -> jax.Array:
        return tokens if self.proj is None else self.proj(tokens)

    def project_layer(self, i: int, tokens: jax.Array) -> jax.Array:
        """Intermediate tokens of pair ``i`` (B, T, D_student) -> (B, T, teacher_width)."""
        return tokens if self.layer_proj is None else self.layer_proj[i](tokens)


def build_student(cfg, teacher_width: int, seed: int | None = None, *, teacher_depth: int = 0) -> Student:
    """The :class:`Student` with parameters initialised from ``seed`` (default ``cfg.train.seed``); ``teacher_depth``
    (blocks) resolves ``cfg.distill.layers``."""
    return Student(cfg, teacher_width, teacher_depth=teacher_depth,
                   rngs=nnx.Rngs(cfg.train.seed if seed is None else seed))
