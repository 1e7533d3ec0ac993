"""MONAI's UNETR decoder on a medjax ViT encoder, parameter for parameter (for imported MONAI UNETR weights).

MONAI's UNETR (``monai.networks.nets.UNETR``, 16-voxel patches, ``norm_name="instance"``, ``res_block=True``,
``conv_block=True``) differs from medjax's own :class:`~medjax.models.heads.UNETR` decoder, so imported weights
run here. Weights keep MONAI's names (``encoder1.layer.conv1.conv.weight``, ...) and PyTorch layouts
(convolutions (O, I, *k), transposed convolutions (I, O, *k)); inputs and outputs are channels last:
images (B, *S, C) -> logits (B, *S, K). Instance norms have no affine parameters (MONAI's default), eps 1e-5;
LeakyReLU slope 0.01; skip features come from encoder blocks 4, 7, 10 (MONAI's ``hidden_states_out[3/6/9]``).
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.vit import ViT

_EPS = 1e-5


def _conv(x, w, pad: int):
    """Stride-1 convolution, x (B, *S, I), w (O, I, *k) -> (B, *S', O); no bias."""
    n = x.ndim - 2
    sp = "DHW"[-n:] if n <= 3 else None
    dn = ("N" + sp + "C", "OI" + sp, "N" + sp + "C")
    return jax.lax.conv_general_dilated(x, w, (1,) * n, [(pad, pad)] * n, dimension_numbers=dn,
                                        precision=jax.lax.Precision.HIGHEST)


def _up2(x, w):
    """Transposed convolution kernel 2 stride 2 (non-overlapping): x (B, *S, I), w (I, O, 2, ...) -> (B, *2S, O)."""
    n = x.ndim - 2
    s = string.ascii_lowercase[:n]
    k = string.ascii_uppercase[:n]
    y = jnp.einsum(f"z{s}i,io{k}->z{''.join(a + b for a, b in zip(s, k))}o", x, w,
                   precision=jax.lax.Precision.HIGHEST)
    shape = (x.shape[0],) + tuple(2 * d for d in x.shape[1:-1]) + (w.shape[1],)
    return y.reshape(shape)


def _inorm(x):
    axes = tuple(range(1, x.ndim - 1))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + _EPS)


def _lrelu(x):
    return jnp.where(x >= 0, x, 0.01 * x)


class MonaiUNETR(nnx.Module):
    """MONAI UNETR with a medjax :class:`ViT` encoder at ``.encoder`` and MONAI-named decoder weights.

    Args:
      cfg: ``ModelConfig`` of the encoder (16-voxel patches, at least 10 blocks).
      spatial_dims, input_size: as :class:`ViT`.
      weights: MONAI decoder tensors (every state-dict entry not under ``vit.``), PyTorch layouts.
    """

    def __init__(self, cfg, *, spatial_dims: int, input_size, weights: dict, rngs: nnx.Rngs):
        self.encoder = ViT(cfg, spatial_dims=spatial_dims, input_size=input_size, rngs=rngs)
        if any(p != 16 for p in self.encoder.patch) or len(self.encoder.blocks) < 10:
            raise ValueError("MONAI's UNETR needs 16-voxel patches and at least 10 encoder blocks, got patch "
                             f"{self.encoder.patch} and {len(self.encoder.blocks)} blocks")
        self.weights = nnx.Dict({k.replace(".", "__"): nnx.Param(jnp.asarray(v, jnp.float32))
                                 for k, v in weights.items()})

    def _w(self, name: str):
        return self.weights[name.replace(".", "__")][...]

    def _has(self, name: str) -> bool:
        return name.replace(".", "__") in self.weights

    def _res(self, pre: str, x):
        out = _lrelu(_inorm(_conv(x, self._w(pre + "conv1.conv.weight"), 1)))
        out = _inorm(_conv(out, self._w(pre + "conv2.conv.weight"), 1))
        res = _inorm(_conv(x, self._w(pre + "conv3.conv.weight"), 0)) if self._has(pre + "conv3.conv.weight") else x
        return _lrelu(out + res)

    def _prup(self, pre: str, x):
        x = _up2(x, self._w(pre + "transp_conv_init.conv.weight"))
        i = 0
        while self._has(f"{pre}blocks.{i}.0.conv.weight"):
            x = self._res(f"{pre}blocks.{i}.1.", _up2(x, self._w(f"{pre}blocks.{i}.0.conv.weight")))
            i += 1
        return x

    def _upblock(self, pre: str, x, skip):
        x = _up2(x, self._w(pre + "transp_conv.conv.weight"))
        return self._res(pre + "conv_block.", jnp.concatenate([x, skip], axis=-1))

    def __call__(self, images: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Logits (B, *S, K) float32 of images (B, *S, C)."""
        x = images.astype(jnp.float32)
        tokens, layers = self.encoder(x, deterministic=deterministic, return_layers=(4, 7, 10))
        p = self.encoder.num_prefix_tokens
        grid = self.encoder.grid

        def feat(t):
            return t[:, p:].astype(jnp.float32).reshape(t.shape[0], *grid, t.shape[-1])

        enc1 = self._res("encoder1.layer.", x)
        enc2 = self._prup("encoder2.", feat(layers[0]))
        enc3 = self._prup("encoder3.", feat(layers[1]))
        enc4 = self._prup("encoder4.", feat(layers[2]))
        dec3 = self._upblock("decoder5.", feat(tokens), enc4)
        dec2 = self._upblock("decoder4.", dec3, enc3)
        dec1 = self._upblock("decoder3.", dec2, enc2)
        out = self._upblock("decoder2.", dec1, enc1)
        return _conv(out, self._w("out.conv.conv.weight"), 0) + self._w("out.conv.conv.bias")


def monai_decoder_weights(state_dict: dict) -> dict:
    """The UNETR decoder tensors of a MONAI UNETR state dict (everything outside ``vit.``)."""
    return {k: v for k, v in state_dict.items() if not k.startswith("vit.")}


__all__ = ["MonaiUNETR", "monai_decoder_weights"]
