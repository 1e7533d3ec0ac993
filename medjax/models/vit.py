"""Vision Transformer encoder for 2D and 3D images (one code path keyed by ``spatial_dims``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medjax.models.attention import attention_implementation
from medjax.models.block import Block, run_blocks
from medjax.models.layers import compute_dtype, constrain, layer_norm, param_init
from medjax.models.patch_embed import PatchEmbed, patch_grid
from medjax.models.posembed import resize_pos_embed, sincos_pos_embed
from medjax.config.dims import broadcast_size
from medjax.config.variants import decode_variant

_POS_EMBED = ("sincos", "learned")


class ViT(nnx.Module):
    """ViT encoder: patch embed, optional CLS token, position embedding, pre-norm blocks, final LayerNorm.

    Args:
      cfg: ``ModelConfig`` (variant, in_channels, pos_embed, cls_token, dtype, attention, dropout, drop_path).
      spatial_dims: 2 (images (B, H, W, C)) or 3 (volumes (B, X, Y, Z, C)).
      input_size: spatial size in pixels/voxels the position embedding is built for (int or 1-tuple broadcast).
      rngs: ``nnx.Rngs`` with a ``params`` stream (and ``dropout`` when dropout/drop_path > 0).

    Attributes: ``grid`` (patches per spatial dim), ``num_patches`` (L), ``num_prefix_tokens`` (1 with CLS, else
    0), ``width`` (D), ``patch``, ``size`` (the decoded :class:`ViTSize`).
    """

    def __init__(self, cfg, *, spatial_dims: int, input_size: Sequence[int] | int, rngs: nnx.Rngs):
        self.size = decode_variant(cfg.variant, spatial_dims)
        self.spatial_dims = int(spatial_dims)
        self.input_size = broadcast_size(input_size, spatial_dims)
        self.patch = self.size.patch
        self.grid = patch_grid(self.input_size, self.patch)
        self.num_patches = math.prod(self.grid)
        self.num_prefix_tokens = 1 if cfg.cls_token else 0
        self.width = self.size.width
        self.in_channels = int(cfg.in_channels)
        if cfg.pos_embed not in _POS_EMBED:
            raise ValueError(f"model.pos_embed={cfg.pos_embed!r} is not supported; use one of {_POS_EMBED}")
        self.pos_embed_kind = cfg.pos_embed
        self.sincos_axes = tuple(getattr(cfg, "sincos_axes", ()))
        norm_eps = float(getattr(cfg, "norm_eps", 1e-6))
        self.dtype = compute_dtype(cfg.dtype)
        impl = attention_implementation(cfg.attention)
        d = self.width

        self.patch_embed = PatchEmbed(self.patch, self.in_channels, d, dtype=self.dtype, rngs=rngs)
        normal = nnx.initializers.normal(0.02)
        self.cls_token = (nnx.Param(param_init(normal, (None, None, "embed"))(rngs.params(), (1, 1, d), jnp.float32))
                          if cfg.cls_token else None)
        if cfg.pos_embed == "learned":
            n = self.num_prefix_tokens + self.num_patches
            self.pos_embed = nnx.Param(param_init(normal, (None, "length", "embed"))(
                rngs.params(), (1, n, d), jnp.float32))
        else:
            sincos_pos_embed(d, self.grid, axes=self.sincos_axes)  # validate width and axes now
            self.pos_embed = None
        rates = np.linspace(0.0, float(cfg.drop_path), self.size.depth) if self.size.depth else []
        self.blocks = nnx.List([
            Block(d, self.size.heads, self.size.mlp_dim, dropout=cfg.dropout, drop_path=float(r), dtype=self.dtype,
                  implementation=impl, norm_eps=norm_eps, remat=getattr(cfg, "remat", "none"), rngs=rngs)
            for r in rates
        ])
        self.norm = layer_norm(d, epsilon=norm_eps, rngs=rngs)
        self.scan_blocks = bool(getattr(cfg, "scan_blocks", False))

    def position_embedding(self) -> jax.Array:
        """(1, P + L, D) float32: prefix rows first (zero for sin-cos), then the grid in patch order."""
        if self.pos_embed is not None:
            return self.pos_embed[...]
        return jnp.asarray(sincos_pos_embed(self.width, self.grid, num_prefix=self.num_prefix_tokens,
                                            axes=self.sincos_axes))

    def embed(self, x: jax.Array, visible_ids: jax.Array | None = None) -> jax.Array:
        """Patch-embed (B, *S, C), add positions, keep ``visible_ids`` (B, K) patches if given, prepend CLS.

        Returns (B, P + L or P + K, D) in the compute dtype.
        """
        spatial = tuple(x.shape[1:-1])
        if spatial != self.input_size:
            raise ValueError(f"ViT built for input size {self.input_size} got images of spatial size {spatial} "
                             f"(shape {x.shape}); build the model for this size or resize the position embedding")
        tokens = self.patch_embed(x)
        pe = self.position_embedding()
        p = self.num_prefix_tokens
        tokens = tokens + pe[:, p:].astype(tokens.dtype)
        if visible_ids is not None:
            tokens = jnp.take_along_axis(tokens, visible_ids[:, :, None].astype(jnp.int32), axis=1)
        if self.cls_token is not None:
            cls = (self.cls_token[...] + pe[:, :p]).astype(tokens.dtype)
            tokens = jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width)), tokens], axis=1)
        return constrain(tokens, ("batch", "length", "embed"))

    # Hooks for encoders that carry extra tokens through the blocks (medjax.peft's prompt tokens): identity here.
    def _enter_block(self, h: jax.Array, i: int) -> jax.Array:
        """Tokens (B, T, D) about to enter block ``i`` (1-based)."""
        return h

    def _exit_tokens(self, h: jax.Array) -> jax.Array:
        """Tokens (B, T, D) leaving the encoder (returned layers, and before the final norm)."""
        return h

    def _exit_attention(self, w: jax.Array) -> jax.Array:
        """Attention weights (B, heads, T, T) returned to the caller."""
        return w

    def __call__(self, x: jax.Array, *, deterministic: bool = True, return_attention: bool = False,
                 return_layers: Sequence[int] = (), visible_ids: jax.Array | None = None):
        """Encode images x (B, *S, C) to tokens (B, P + L, D) float32 (after the final LayerNorm).

        Args:
          deterministic: disable dropout/drop-path.
          return_attention: also return a list (one per block) of (B, heads, T, T) float32 weights.
          return_layers: 1-based block numbers whose outputs (B, T, D), before the final norm, are also returned
            (e.g. (3, 6, 9, 12) for UNETR skip connections).
          visible_ids: (B, K) int patch indices (into the L grid patches) to encode; the others are dropped
            (MAE). T = P + K then.

        Returns ``tokens``; or a tuple ``(tokens, attentions)``, ``(tokens, layers)`` or
        ``(tokens, attentions, layers)`` when those are requested.
        """
        return_layers = tuple(int(i) for i in return_layers)
        bad = [i for i in return_layers if not 1 <= i <= len(self.blocks)]
        if bad:
            raise ValueError(f"return_layers {bad} out of range: blocks are numbered 1..{len(self.blocks)}")
        h = self.embed(x, visible_ids)
        attentions, layers = [], {}
        if self.scan_blocks and not return_attention and type(self)._enter_block is ViT._enter_block:
            # scanned segments between the returned layers (run_blocks falls back to a loop where it must)
            start = 0
            for end in sorted(set(return_layers) | {len(self.blocks)}):
                h = run_blocks(self.blocks[start:end], h, deterministic=deterministic, scan=True)
                if end in return_layers:
                    layers[end] = self._exit_tokens(h)
                start = end
        else:
            for i, block in enumerate(self.blocks, start=1):
                h = self._enter_block(h, i)
                if return_attention:
                    h, w = block(h, deterministic=deterministic, return_attention=True)
                    attentions.append(self._exit_attention(w))
                else:
                    h = block(h, deterministic=deterministic)
                if i in return_layers:
                    layers[i] = self._exit_tokens(h)
        tokens = self.norm(self._exit_tokens(h))
        out = (tokens,)
        if return_attention:
            out += (attentions,)
        if return_layers:
            out += ([layers[i] for i in return_layers],)
        return out if len(out) > 1 else tokens
