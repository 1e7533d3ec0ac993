"""Masked autoencoder (MAE) for 2D and 3D images: a ViT encoder on visible patches, a light decoder.

The encoder (``MAE.encoder``) is a plain :class:`~medjax.models.vit.ViT`; fine-tuning loads its state directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.attention import attention_implementation
from medjax.models.block import Block, run_blocks
from medjax.models.layers import Dense, constrain, layer_norm, param_init
from medjax.models.masking import masked_mse, patch_norm_stats, random_masking
from medjax.models.patch_embed import patchify, unpatchify
from medjax.models.posembed import sincos_pos_embed
from medjax.models.vit import ViT


class MAE(nnx.Module):
    """MAE with a :class:`ViT` encoder and a Transformer decoder predicting patch pixels.

    Args:
      cfg: ``ModelConfig`` (encoder fields as :class:`ViT`, plus decoder_width, decoder_depth, decoder_heads,
        mask_ratio, norm_pix_loss).
      spatial_dims: 2 or 3.
      input_size: spatial size (pixels/voxels) of the training crops; int or 1-tuple broadcast.
      rngs: ``nnx.Rngs`` (``params``; ``dropout`` when the encoder uses dropout/drop-path).

    Attributes: ``encoder`` (ViT), ``patch``, ``grid``, ``num_patches`` (L), ``patch_dim`` (P = prod(patch) * C).
    """

    def __init__(self, cfg, *, spatial_dims: int, input_size: Sequence[int] | int, rngs: nnx.Rngs):
        self.encoder = ViT(cfg, spatial_dims=spatial_dims, input_size=input_size, rngs=rngs)
        enc = self.encoder
        self.patch, self.grid, self.num_patches = enc.patch, enc.grid, enc.num_patches
        self.in_channels = enc.in_channels
        self.patch_dim = math.prod(self.patch) * self.in_channels
        self.mask_ratio = float(cfg.mask_ratio)
        self.norm_pix_loss = bool(cfg.norm_pix_loss)
        self.norm_pix_ddof = int(getattr(cfg, "norm_pix_ddof", 0))
        norm_eps = float(getattr(cfg, "norm_eps", 1e-6))
        decoder_mlp = int(getattr(cfg, "decoder_mlp_dim", 0)) or 4 * int(cfg.decoder_width)
        self.dtype = enc.dtype
        dw = int(cfg.decoder_width)
        if dw % int(cfg.decoder_heads):
            raise ValueError(f"model.decoder_width={dw} must divide by model.decoder_heads={cfg.decoder_heads}")
        self.decoder_width = dw
        sincos_pos_embed(dw, self.grid, axes=enc.sincos_axes)  # validate the decoder width for this grid now
        impl = attention_implementation(cfg.attention)
        self.decoder_embed = Dense(enc.width, dw, names=("embed", None), dtype=self.dtype, rngs=rngs)
        self.mask_token = nnx.Param(param_init(nnx.initializers.normal(0.02), (None, None, "embed"))(
            rngs.params(), (1, 1, dw), jnp.float32))
        self.decoder_blocks = nnx.List([
            Block(dw, int(cfg.decoder_heads), decoder_mlp, dtype=self.dtype, implementation=impl, norm_eps=norm_eps,
                  remat=getattr(cfg, "remat", "none"), rngs=rngs)
            for _ in range(int(cfg.decoder_depth))
        ])
        self.decoder_norm = layer_norm(dw, epsilon=norm_eps, rngs=rngs)
        self.decoder_pred = Dense(dw, self.patch_dim, names=("embed", "patch"), dtype=self.dtype, rngs=rngs)

    def target(self, images: jax.Array) -> jax.Array:
        """Reconstruction target (B, L, P) float32: patch pixels, normalised per patch when norm_pix_loss."""
        patches = patchify(images.astype(jnp.float32), self.patch)
        if self.norm_pix_loss:
            mean, std = patch_norm_stats(patches, ddof=self.norm_pix_ddof)
            patches = (patches - mean) / std
        return patches

    def decode(self, latent: jax.Array, ids_restore: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Encoder tokens (B, P + K, D) and ids_restore (B, L) -> predicted patches (B, L, patch_dim) float32."""
        p = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        prefix, visible = x[:, :p], x[:, p:]
        masked = jnp.broadcast_to(self.mask_token[...].astype(x.dtype), (b, length - visible.shape[1], x.shape[-1]))
        x = jnp.concatenate([visible, masked], axis=1)
        x = jnp.take_along_axis(x, ids_restore[:, :, None], axis=1)  # back to grid order
        pe = jnp.asarray(sincos_pos_embed(self.decoder_width, self.grid, num_prefix=p, axes=self.encoder.sincos_axes))
        x = jnp.concatenate([prefix, x], axis=1) + pe.astype(x.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        x = run_blocks(self.decoder_blocks, x, deterministic=deterministic,
                       scan=bool(getattr(self.encoder, "scan_blocks", False)))
        x = self.decoder_norm(x)
        pred = self.decoder_pred(x)[:, p:].astype(jnp.float32)
        return constrain(pred, ("batch", "length", "patch"))

    def __call__(self, images: jax.Array, *, mask_key: jax.Array, mask_ratio: float | None = None,
                 deterministic: bool = True):
        """Masked reconstruction loss of images (B, *S, C).

        Args:
          mask_key: PRNG key drawing the per-sample masks.
          mask_ratio: static Python float overriding ``cfg.mask_ratio``.
          deterministic: disable dropout/drop-path in the encoder.

        Returns ``(loss, aux)``: loss a float32 scalar (MSE per patch, mean over masked patches);
        aux = {"pred": (B, L, P) float32, "mask": (B, L) float32 1=masked, "target": (B, L, P) float32}.
        """
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        masking = random_masking(mask_key, images.shape[0], self.num_patches, ratio)
        latent = self.encoder(images, deterministic=deterministic, visible_ids=masking.ids_keep)
        pred = self.decode(latent, masking.ids_restore, deterministic=deterministic)
        target = self.target(images)
        loss = masked_mse(pred, target, masking.mask)
        return loss, {"pred": pred, "mask": masking.mask, "target": target}

    def reconstruct(self, images: jax.Array, pred: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        """Images for display, each (B, *S, C) float32, in the input's intensity units.

        masked: the input with masked patches zeroed; recon: the prediction (de-normalised with each input
        patch's mean/std when norm_pix_loss) with visible patches pasted from the input; recon_only: the
        de-normalised prediction everywhere.
        """
        patches = patchify(images.astype(jnp.float32), self.patch)
        pred = pred.astype(jnp.float32)
        if self.norm_pix_loss:
            mean, std = patch_norm_stats(patches, ddof=self.norm_pix_ddof)
            pred = pred * std + mean
        m = mask.astype(jnp.float32)[:, :, None]
        c = self.in_channels
        return {
            "masked": unpatchify(patches * (1.0 - m), self.patch, self.grid, c),
            "recon": unpatchify(pred * m + patches * (1.0 - m), self.patch, self.grid, c),
            "recon_only": unpatchify(pred, self.patch, self.grid, c),
        }
