"""The PEFT encoder: a ViT that carries prompt tokens and switches LoRA dropout between training and evaluation.

:class:`PeftViT` keeps every attribute (and parameter path) of the :class:`~medjax.models.vit.ViT` it wraps, so
heads that call ``self.encoder(images, ...)`` and slice off ``num_prefix_tokens`` work unchanged: prompt tokens
are inserted after the prefix (CLS) tokens and removed again from every output.

Prompts (Jia et al. 2022, visual prompt tuning): ``prompt`` is (1, N, D) for shallow prompts (inserted once,
after the position embedding; they carry no position) or (depth, N, D) for deep prompts (block ``i`` sees its own
N prompt tokens in place of those the previous block produced). Initialised N(0, 0.02).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.layers import constrain
from medjax.models.vit import ViT


class PeftViT(ViT):
    """A :class:`~medjax.models.vit.ViT` with optional prompt tokens. Images (B, *S, C) -> tokens (B, P + L, D)."""

    def __init__(self, base: ViT, *, prompt_tokens: int = 0, prompt_deep: bool = False, rngs: nnx.Rngs):
        for k, v in vars(base).items():
            if not k.startswith("_"):
                setattr(self, k, v)
        self.num_prompts = int(prompt_tokens)
        if self.num_prompts:
            rows = len(self.blocks) if prompt_deep else 1
            self.prompt = nnx.Param(0.02 * jax.random.normal(rngs.params(), (rows, self.num_prompts, self.width),
                                                             jnp.float32))
        else:
            self.prompt = None

    def _set_deterministic(self, deterministic: bool) -> None:
        for _, module in nnx.iter_graph(self):
            if hasattr(module, "lora_deterministic"):
                module.lora_deterministic = bool(deterministic)

    def _prompts(self, h: jax.Array, i: int) -> jax.Array:
        """Tokens (B, P + L, D) -> (B, P + N + L, D) (i == 0) or with the N prompt rows replaced (deep, i > 0)."""
        p, n = self.num_prefix_tokens, self.num_prompts
        rows = jnp.broadcast_to(self.prompt[...][i][None].astype(h.dtype), (h.shape[0], n, h.shape[-1]))
        if i == 0:
            return jnp.concatenate([h[:, :p], rows, h[:, p:]], axis=1)
        return jnp.concatenate([h[:, :p], rows, h[:, p + n:]], axis=1)

    def _enter_block(self, h: jax.Array, i: int) -> jax.Array:
        if self.prompt is None:
            return h
        if i == 1:
            h = self._prompts(h, 0)
        elif self.prompt.shape[0] > 1:  # deep prompts: block i sees its own
            h = self._prompts(h, i - 1)
        return constrain(h, ("batch", "length", "embed"))

    def _exit_tokens(self, h: jax.Array) -> jax.Array:
        p, n = self.num_prefix_tokens, self.num_prompts
        return jnp.concatenate([h[:, :p], h[:, p + n:]], axis=1) if n else h

    def _exit_attention(self, w: jax.Array) -> jax.Array:
        if not self.num_prompts:
            return w
        p, n = self.num_prefix_tokens, self.num_prompts
        keep = jnp.asarray([j for j in range(w.shape[-1]) if not p <= j < p + n])
        return w[:, :, keep][:, :, :, keep]

    def __call__(self, x: jax.Array, *, deterministic: bool = True, return_attention: bool = False,
                 return_layers: Sequence[int] = (), visible_ids: jax.Array | None = None):
        """As :meth:`ViT.__call__`; prompt tokens never appear in the outputs (attention rows/columns of the
        prompts are dropped too)."""
        self._set_deterministic(deterministic)
        return super().__call__(x, deterministic=deterministic, return_attention=return_attention,
                                return_layers=return_layers, visible_ids=visible_ids)
