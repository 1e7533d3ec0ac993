"""Representation-distillation settings (the ``distill`` section of :class:`~medjax.config.Config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DistillConfig:
    teacher: str = ""  # teacher run or checkpoint folder (MAE, distilled or imported encoder); `distill --teacher`
    loss: str = "smooth_l1"  # per-token feature matching: "smooth_l1" (Huber-like) or "cosine" (1 - cosine similarity)
    beta: float = 1.0  # smooth_l1: the |error| below which the loss is quadratic (in feature units)
    mask_ratio: float = 0.0  # fraction of patches hidden from the student (the teacher sees all); 0: none hidden
    init_from: str = ""  # run whose encoder initialises the student (same architecture); "" = random initialisation
    layers: tuple[str, ...] = ()  # intermediate blocks to match: "S:T" pairs (1-based) or "S" (T mapped evenly); ()
    layer_weight: float = 1.0  # weight of the intermediate-layer loss (each pair's loss averaged over the pairs)
    attention_weight: float = 0.0  # weight of the attention-map KL on the same block pairs (last blocks if none); 0
