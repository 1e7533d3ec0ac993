"""The format-neutral tensor set every key map goes through, and its conversion to and from medjax parameters.

Canonical names hold PyTorch layouts: Linear ``w`` is (out, in), a patch convolution ``patch.w`` is
(D, C, *patch); q/k/v are separate (a fused ``qkv`` (3 D, D) splits into q, k, v rows in that order)::

    patch.w patch.b cls (1, 1, D) pos (1, P + L, D: the CLS row first, zero when the source has none)
    blocks.N.{ln1,ln2}.{w,b}  blocks.N.{q,k,v,o,fc1,fc2}.{w,b}  norm.{w,b}
    dec.embed.{w,b} dec.mask (1, 1, Dd) dec.pos (1, 1 + L, Dd; a fixed table, checked) dec.blocks.N.*
    dec.norm.{w,b} dec.pred.{w,b}

medjax stores a Linear as kernel (in, out), the patch projection as a Linear over patches flattened in
(p_1, ..., p_n, C) order, attention q/k/v kernels as (D, heads, D/heads) and the output kernel as
(heads, D/heads, D). :func:`to_medjax` and :func:`from_medjax` are exact inverses (transposes and reshapes only).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from medjax.interop.arch import Arch, check

BLOCK_KEYS = ("ln1.w", "ln1.b", "q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w", "o.b", "ln2.w", "ln2.b",
              "fc1.w", "fc1.b", "fc2.w", "fc2.b")
SINCOS_TOL = 1e-4  # a stored table within this of a sin-cos layout is that fixed table (float32 rounding aside)


def split_qkv(w: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (3 D, ...) of a fused qkv weight or bias -> q, k, v (D, ...) each."""
    check(w.shape[0] % 3 == 0, f"{what}: fused qkv has {w.shape[0]} rows, not a multiple of 3")
    d = w.shape[0] // 3
    return w[:d], w[d:2 * d], w[2 * d:]


def conv_to_kernel(w: np.ndarray) -> np.ndarray:
    """Patch convolution (D, C, *p) -> medjax patch kernel (prod(p) * C, D), rows in (p_1..p_n, C) order."""
    n = w.ndim - 2
    perm = tuple(range(2, 2 + n)) + (1, 0)
    return np.ascontiguousarray(w.transpose(perm).reshape(-1, w.shape[0]))


def kernel_to_conv(k: np.ndarray, patch, channels: int) -> np.ndarray:
    """Inverse of :func:`conv_to_kernel`."""
    n = len(patch)
    w = k.reshape(*patch, channels, k.shape[-1])
    perm = (n + 1, n) + tuple(range(n))
    return np.ascontiguousarray(w.transpose(perm))


def _block_to_medjax(c: dict, pre: str, heads: int) -> dict:
    d_in = c[pre + "q.w"].shape[1]
    width = c[pre + "q.w"].shape[0]
    hd = width // heads
    out = {
        ("norm1", "scale"): c[pre + "ln1.w"], ("norm1", "bias"): c[pre + "ln1.b"],
        ("norm2", "scale"): c[pre + "ln2.w"], ("norm2", "bias"): c[pre + "ln2.b"],
        ("mlp", "fc1", "kernel"): c[pre + "fc1.w"].T, ("mlp", "fc1", "bias"): c[pre + "fc1.b"],
        ("mlp", "fc2", "kernel"): c[pre + "fc2.w"].T, ("mlp", "fc2", "bias"): c[pre + "fc2.b"],
        ("attn", "out_kernel"): c[pre + "o.w"].T.reshape(heads, hd, d_in), ("attn", "out_bias"): c[pre + "o.b"],
    }
    for n in "qkv":
        out[("attn", f"{n}_kernel")] = c[pre + f"{n}.w"].T.reshape(d_in, heads, hd)
        out[("attn", f"{n}_bias")] = c[pre + f"{n}.b"].reshape(heads, hd)
    return out


def _block_from_medjax(f: dict, pre: str) -> dict:
    a = {k[1]: v for k, v in f.items() if k[0] == "attn"}
    d_in = a["q_kernel"].shape[0]
    out = {pre + "ln1.w": f[("norm1", "scale")], pre + "ln1.b": f[("norm1", "bias")],
           pre + "ln2.w": f[("norm2", "scale")], pre + "ln2.b": f[("norm2", "bias")],
           pre + "fc1.w": f[("mlp", "fc1", "kernel")].T, pre + "fc1.b": f[("mlp", "fc1", "bias")],
           pre + "fc2.w": f[("mlp", "fc2", "kernel")].T, pre + "fc2.b": f[("mlp", "fc2", "bias")],
           pre + "o.w": a["out_kernel"].reshape(-1, a["out_kernel"].shape[-1]).T, pre + "o.b": a["out_bias"]}
    for n in "qkv":
        out[pre + f"{n}.w"] = a[f"{n}_kernel"].reshape(d_in, -1).T
        out[pre + f"{n}.b"] = a[f"{n}_bias"].reshape(-1)
    return out


def sincos_table(width: int, grid, axes=()) -> np.ndarray:
    """(prod(grid), width) float32 fixed sin-cos rows in ``axes`` layout (no prefix rows)."""
    from medjax.models.posembed import sincos_pos_embed

    return np.asarray(sincos_pos_embed(width, grid, axes=axes))[0]


def match_sincos(table: np.ndarray, grid) -> tuple[int, ...] | None:
    """The channel layout (``axes``) of a fixed sin-cos ``table`` (L, D) on ``grid``, or None when it is none."""
    n = len(grid)
    if table.shape[0] != math.prod(grid):
        return None
    for axes in [()] + [p for p in itertools.permutations(range(n)) if p != tuple(range(n))]:
        try:
            ref = sincos_table(table.shape[1], grid, axes)
        except ValueError:
            return None
        if np.max(np.abs(ref - table)) < SINCOS_TOL:
            return tuple(axes)
    return None


def to_medjax(c: dict, arch: Arch) -> dict[tuple[str, ...], np.ndarray]:
    """Canonical tensors -> flat medjax MAE parameters ``{("encoder", "blocks", "0", ...): array}``.

    Decoder entries appear only when ``c`` has them (``dec.*``)."""
    out = {("encoder", "patch_embed", "proj", "kernel"): conv_to_kernel(c["patch.w"]),
           ("encoder", "patch_embed", "proj", "bias"): c["patch.b"],
           ("encoder", "norm", "scale"): c["norm.w"], ("encoder", "norm", "bias"): c["norm.b"]}
    if arch.cls_token:
        out[("encoder", "cls_token")] = c["cls"].reshape(1, 1, -1)
    if arch.pos_embed == "learned":
        out[("encoder", "pos_embed")] = c["pos"]
    for i in range(arch.depth):
        for k, v in _block_to_medjax(c, f"blocks.{i}.", arch.heads).items():
            out[("encoder", "blocks", str(i)) + k] = v
    if "dec.embed.w" in c and arch.decoder is not None:
        out[("decoder_embed", "kernel")] = c["dec.embed.w"].T
        out[("decoder_embed", "bias")] = c["dec.embed.b"]
        out[("mask_token",)] = c["dec.mask"].reshape(1, 1, -1)
        out[("decoder_norm", "scale")] = c["dec.norm.w"]
        out[("decoder_norm", "bias")] = c["dec.norm.b"]
        out[("decoder_pred", "kernel")] = c["dec.pred.w"].T
        out[("decoder_pred", "bias")] = c["dec.pred.b"]
        for i in range(arch.decoder.depth):
            for k, v in _block_to_medjax(c, f"dec.blocks.{i}.", arch.decoder.heads).items():
                out[("decoder_blocks", str(i)) + k] = v
    return {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in out.items()}


def from_medjax(flat: dict[tuple[str, ...], np.ndarray], arch: Arch, *, decoder: bool = True) -> dict:
    """Flat medjax MAE (or ViT under ``encoder``) parameters -> canonical tensors.

    ``pos`` is always present: a sin-cos model gets its fixed table (with the zero CLS row); ``dec.pos`` likewise
    when ``decoder``."""
    from medjax.models.posembed import sincos_pos_embed

    g = lambda *k: np.asarray(flat[k], np.float32)  # noqa: E731
    c = {"patch.w": kernel_to_conv(g("encoder", "patch_embed", "proj", "kernel"), arch.patch, arch.in_channels),
         "patch.b": g("encoder", "patch_embed", "proj", "bias"),
         "norm.w": g("encoder", "norm", "scale"), "norm.b": g("encoder", "norm", "bias")}
    prefix = 1 if arch.cls_token else 0
    if arch.cls_token:
        c["cls"] = g("encoder", "cls_token")
    if arch.pos_embed == "learned":
        c["pos"] = g("encoder", "pos_embed")
    else:
        c["pos"] = np.asarray(sincos_pos_embed(arch.width, arch.grid, num_prefix=prefix, axes=arch.sincos_axes))
    for i in range(arch.depth):
        sub = {k[3:]: np.asarray(v, np.float32) for k, v in flat.items() if k[:3] == ("encoder", "blocks", str(i))}
        c.update(_block_from_medjax(sub, f"blocks.{i}."))
    if decoder and arch.decoder is not None and ("decoder_embed", "kernel") in flat:
        c["dec.embed.w"], c["dec.embed.b"] = g("decoder_embed", "kernel").T, g("decoder_embed", "bias")
        c["dec.mask"] = g("mask_token")
        c["dec.norm.w"], c["dec.norm.b"] = g("decoder_norm", "scale"), g("decoder_norm", "bias")
        c["dec.pred.w"], c["dec.pred.b"] = g("decoder_pred", "kernel").T, g("decoder_pred", "bias")
        c["dec.pos"] = np.asarray(sincos_pos_embed(arch.decoder.width, arch.grid, num_prefix=prefix,
                                                   axes=arch.sincos_axes))
        for i in range(arch.decoder.depth):
            sub = {k[2:]: np.asarray(v, np.float32) for k, v in flat.items() if k[:2] == ("decoder_blocks", str(i))}
            c.update(_block_from_medjax(sub, f"dec.blocks.{i}."))
    return {k: np.ascontiguousarray(v) for k, v in c.items()}


def resolve_pos(c: dict, arch: Arch, *, source: str) -> Arch:
    """Decide learned vs fixed sin-cos from the canonical ``pos`` (and ``dec.pos``) tables; returns the arch.

    A ``pos`` whose grid rows equal a sin-cos layout (and whose CLS row is zero) becomes ``pos_embed="sincos"``
    with that layout (no parameter); anything else is a learned embedding. The decoder of an MAE must hold a
    fixed table in the same layout (medjax's MAE decoder has no learned position embedding): otherwise an error
    names ``dec.pos`` in ``source``.
    """
    prefix = 1 if arch.cls_token else 0
    pos = c["pos"]
    check(pos.shape == (1, prefix + math.prod(arch.grid), arch.width),
          f"{source}: position embedding has shape {pos.shape}, expected (1, {prefix + math.prod(arch.grid)}, "
          f"{arch.width}) for grid {arch.grid}; pass the input size it was trained at (--input-size)")
    axes = match_sincos(pos[0, prefix:], arch.grid)
    if axes is not None and prefix and np.any(pos[0, 0] != 0):
        axes = None
    if axes is not None:
        arch = arch.replace(pos_embed="sincos", sincos_axes=axes)
    else:
        arch = arch.replace(pos_embed="learned", sincos_axes=())
    if "dec.pos" in c and arch.decoder is not None:
        dpos = c["dec.pos"]
        dax = match_sincos(dpos[0, dpos.shape[1] - math.prod(arch.grid):], arch.grid)
        check(dax is not None, f"{source}: the decoder position embedding is not a fixed sin-cos table; medjax's MAE "
                               "decoder uses fixed sin-cos positions (import with the decoder dropped)")
        if arch.pos_embed == "learned":
            arch = arch.replace(sincos_axes=dax)
        check(dax == arch.sincos_axes, f"{source}: encoder and decoder sin-cos tables use different layouts "
                                       f"({arch.sincos_axes} vs {dax})")
    return arch
