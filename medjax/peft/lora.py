"""LoRA: low-rank updates with alpha scaling and input dropout on the encoder's projections.

For a projection ``y = x @ W + b`` LoRA adds ``(alpha / r) * dropout(x) @ A @ B`` with ``A (in, r)`` drawn from
N(0, 1/in) and ``B (r, out)`` zero, so an injected model computes exactly the base model at step 0 (Hu et al.
2021). flax's ``nnx.LoRA`` has neither the alpha scaling nor the dropout, hence these modules.

The wrapped modules keep the base module's attributes (same parameter paths, e.g.
``encoder/blocks/0/attn/q_kernel``) and add ``lora_<t>_a`` / ``lora_<t>_b`` beside them (``t`` in q, k, v, out)
or ``lora_a`` / ``lora_b`` on an MLP ``Dense`` (``fc1``, ``fc2``), so base checkpoints load unchanged and
:func:`medjax.peft.merge.merge_lora` can fold the updates back into the base kernels.

Shapes: attention q/k/v kernels are ``(D, heads, head_dim)`` (the update's B is ``(r, heads * head_dim)``),
the out kernel ``(heads, head_dim, D)`` (A is ``(heads * head_dim, r)``); Dense kernels ``(in, out)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.attention import MultiHeadAttention
from medjax.models.layers import Dense

_PROJ = ("q", "k", "v")


def _adopt(module, base) -> None:
    """Copy ``base``'s attributes (parameters, submodules, settings) onto the new ``module``."""
    for k, v in vars(base).items():
        if not k.startswith("_"):
            setattr(module, k, v)


def _pair(fan_in: int, fan_out: int, rank: int, rngs: nnx.Rngs) -> tuple[nnx.Param, nnx.Param]:
    a = jax.random.normal(rngs.params(), (fan_in, rank), jnp.float32) / jnp.sqrt(jnp.float32(fan_in))
    return nnx.Param(a), nnx.Param(jnp.zeros((rank, fan_out), jnp.float32))


class _LoRAMixin:
    """Scaling, dropout and the train/eval switch shared by the LoRA modules."""

    def _setup_lora(self, rank: int, alpha: float, dropout: float, rngs: nnx.Rngs) -> None:
        self.lora_rank = int(rank)
        self.lora_scale = float(alpha) / float(rank)
        self.lora_drop = nnx.Dropout(float(dropout), rngs=rngs) if dropout > 0 else None
        self.lora_deterministic = True  # set by the PEFT encoder from its ``deterministic`` argument

    def _lora_input(self, x: jax.Array) -> jax.Array:
        if self.lora_drop is None or self.lora_deterministic:
            return x
        return self.lora_drop(x, deterministic=False)

    def _delta(self, x: jax.Array, a, b) -> jax.Array:
        """``scale * x @ A @ B`` over the last axis of x, in the dtype of x."""
        h = self._lora_input(x) @ a[...].astype(x.dtype)
        return (h @ b[...].astype(x.dtype)) * jnp.asarray(self.lora_scale, x.dtype)


class LoRADense(_LoRAMixin, Dense):
    """A :class:`~medjax.models.layers.Dense` (kernel (in, out)) plus a LoRA update ``lora_a`` (in, r),
    ``lora_b`` (r, out). Input (..., in) -> (..., out)."""

    def __init__(self, base: Dense, *, rank: int, alpha: float, dropout: float = 0.0, rngs: nnx.Rngs):
        _adopt(self, base)
        fan_in, fan_out = base.kernel.shape
        self.lora_a, self.lora_b = _pair(fan_in, fan_out, rank, rngs)
        self._setup_lora(rank, alpha, dropout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        return y + self._delta(x.astype(self.dtype), self.lora_a, self.lora_b)


class LoRAAttention(_LoRAMixin, MultiHeadAttention):
    """:class:`~medjax.models.attention.MultiHeadAttention` with LoRA updates on ``targets`` (subset of q, k, v,
    out): parameters ``lora_<t>_a`` / ``lora_<t>_b``. Tokens (B, L, D) -> (B, L, D)."""

    def __init__(self, base: MultiHeadAttention, *, targets, rank: int, alpha: float, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        _adopt(self, base)
        self.lora_targets = tuple(t for t in ("q", "k", "v", "out") if t in targets)
        inner = self.heads * self.head_dim
        for t in self.lora_targets:
            fan_in, fan_out = (self.width, inner) if t in _PROJ else (inner, self.width)
            a, b = _pair(fan_in, fan_out, rank, rngs)
            setattr(self, f"lora_{t}_a", a)
            setattr(self, f"lora_{t}_b", b)
        self._setup_lora(rank, alpha, dropout, rngs)

    def _project(self, x, kernel, bias):
        y = super()._project(x, kernel, bias)
        for t in _PROJ:
            if t in self.lora_targets and kernel is getattr(self, f"{t}_kernel"):
                d = self._delta(x, getattr(self, f"lora_{t}_a"), getattr(self, f"lora_{t}_b"))
                y = y + d.reshape(y.shape)
        return y

    def _project_out(self, out):
        y = super()._project_out(out)
        if "out" in self.lora_targets:
            flat = out.astype(self.dtype).reshape(*out.shape[:2], -1)
            y = y + self._delta(flat, self.lora_out_a, self.lora_out_b).astype(y.dtype)
        return y


def inject_lora(encoder, *, targets, rank: int, alpha: float, dropout: float, rngs: nnx.Rngs) -> int:
    """Wrap the projections ``targets`` (q, k, v, out, mlp) of every block of ``encoder`` (a ViT) in place.

    Returns the number of wrapped modules."""
    targets = tuple(targets)
    attn_targets = [t for t in targets if t in ("q", "k", "v", "out")]
    count = 0
    for block in encoder.blocks:
        if attn_targets:
            block.attn = LoRAAttention(block.attn, targets=attn_targets, rank=rank, alpha=alpha, dropout=dropout,
                                       rngs=rngs)
            count += 1
        if "mlp" in targets:
            block.mlp.fc1 = LoRADense(block.mlp.fc1, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs)
            block.mlp.fc2 = LoRADense(block.mlp.fc2, rank=rank, alpha=alpha, dropout=dropout, rngs=rngs)
            count += 2
    return count
