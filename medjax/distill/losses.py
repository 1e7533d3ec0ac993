"""Distillation losses: per-token feature matching and soft-target KL with a temperature.

All losses return float32 scalars (means over the batch and tokens) and are exactly 0 when the student's
features or logits equal the teacher's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FEATURE_LOSSES = ("smooth_l1", "cosine")


def smooth_l1(student: jax.Array, teacher: jax.Array, beta: float = 1.0) -> jax.Array:
    """Smooth-L1 between ``(..., D)`` features: ``0.5 e^2 / beta`` for ``|e| < beta``, else ``|e| - 0.5 beta``,
    averaged over every element. ``beta`` in feature units (> 0)."""
    if beta <= 0:
        raise ValueError(f"distill.beta={beta}: must be > 0")
    e = jnp.abs(student.astype(jnp.float32) - teacher.astype(jnp.float32))
    return jnp.mean(jnp.where(e < beta, 0.5 * e * e / beta, e - 0.5 * beta))


def cosine_distance(student: jax.Array, teacher: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``1 - cos(student, teacher)`` per token over the last axis of ``(..., D)``, averaged over tokens."""
    s = student.astype(jnp.float32)
    t = teacher.astype(jnp.float32)
    dot = jnp.sum(s * t, axis=-1)
    norm = jnp.sqrt(jnp.sum(s * s, axis=-1) * jnp.sum(t * t, axis=-1))
    return jnp.mean(1.0 - dot / jnp.maximum(norm, eps))


def feature_loss(student: jax.Array, teacher: jax.Array, kind: str = "smooth_l1", *, beta: float = 1.0) -> jax.Array:
    """Feature-matching loss ``kind`` (``distill.loss``) between student and teacher tokens ``(B, T, D)``.

    The teacher's tokens carry no gradient (``stop_gradient``)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student tokens {student.shape} and teacher tokens {teacher.shape} differ; project the "
                         "student to the teacher's width and give both the same patch grid")
    teacher = jax.lax.stop_gradient(teacher)
    if kind == "smooth_l1":
        return smooth_l1(student, teacher, beta)
    if kind == "cosine":
        return cosine_distance(student, teacher)
    raise ValueError(f"distill.loss={kind!r} is not supported; use one of {FEATURE_LOSSES}")


def soft_target_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Hinton's soft-target loss: ``T^2 * KL(softmax(t / T) || softmax(s / T))`` over the last (class) axis,
    averaged over the other axes. The ``T^2`` keeps gradient magnitudes comparable across temperatures.

    Args: logits ``(..., K)``; ``temperature`` T > 0. The teacher's logits carry no gradient.
    The gradient w.r.t. the student logits is ``T * (softmax(s / T) - softmax(t / T)) / N`` (N: the rows).
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    log_p = jax.nn.log_softmax(t, axis=-1)
    log_q = jax.nn.log_softmax(s, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return (temperature ** 2) * jnp.mean(kl)


def bernoulli_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 1.0) -> jax.Array:
    """Soft targets for independent sigmoid outputs (e.g. detection heat maps): ``T^2 * KL(Bern(sigmoid(t / T)) ||
    Bern(sigmoid(s / T)))`` averaged over every element of ``(...)`` logits. The teacher carries no gradient."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    p = jax.nn.sigmoid(t)
    kl = (p * (jax.nn.log_sigmoid(t) - jax.nn.log_sigmoid(s))
          + (1.0 - p) * (jax.nn.log_sigmoid(-t) - jax.nn.log_sigmoid(-s)))
    return (temperature ** 2) * jnp.mean(kl)


def spatial_attention_loss(student: jax.Array, teacher: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Attention transfer (Zagoruyko & Komodakis) for feature maps whose channel counts differ: per sample, the map
    ``mean_c f^2`` over the voxels of ``(B, *S, C)`` features, scaled to unit L2 norm; the loss is the squared L2
    distance between the student's and the teacher's maps (in [0, 4]), averaged over the batch."""
    if student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(f"student features {student.shape} and teacher features {teacher.shape} cover different "
                         "voxels; both must be computed on the same crop")

    def unit_map(f):
        a = jnp.mean(jnp.square(f.astype(jnp.float32)), axis=-1).reshape(f.shape[0], -1)
        return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)

    d = unit_map(student) - unit_map(jax.lax.stop_gradient(teacher))
    return jnp.mean(jnp.sum(d * d, axis=-1))


def attention_kl(student_attn: jax.Array, teacher_attn: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``KL(teacher || student)`` between attention distributions ``(B, H, T, T)`` (rows sum to 1 over the last axis),
    summed over keys and averaged over batch, heads and queries. When the head counts differ, each model's heads are
    averaged first (a mean of distributions is a distribution). The teacher carries no gradient."""
    s = student_attn.astype(jnp.float32)
    t = jax.lax.stop_gradient(teacher_attn).astype(jnp.float32)
    if s.shape[-2:] != t.shape[-2:] or s.shape[0] != t.shape[0]:
        raise ValueError(f"student attention {s.shape} and teacher attention {t.shape} cover different tokens")
    if s.shape[1] != t.shape[1]:
        s, t = jnp.mean(s, axis=1, keepdims=True), jnp.mean(t, axis=1, keepdims=True)
    kl = jnp.sum(t * (jnp.log(jnp.maximum(t, eps)) - jnp.log(jnp.maximum(s, eps))), axis=-1)
    return jnp.mean(kl)
