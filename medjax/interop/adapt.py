"""Adapting imported weights to other inputs, on the canonical tensors (:mod:`medjax.interop.canonical`).

- :func:`inflate_3d`: a 2D network to volumes. The patch kernel (D, C, p1, p2) gains a depth axis of ``depth``
  voxels (the volume's last spatial axis, the axis 2D slices are drawn along): ``"repeat"`` copies it over depth
  and divides by ``depth``, so a volume constant along depth gives exactly the 2D patch tokens; ``"centre"`` puts
  it on the centre slice and zeros elsewhere, so each 3D patch sees its centre slice. The position table is
  repeated over the new grid axis (a sin-cos one too, becoming learned). The rule, tested: on a depth-constant
  volume (``"centre"``: a volume whose patch-centre slices hold the image) every 3D patch token (i, j, k) entering
  the transformer equals the 2D token (i, j); without a CLS token the whole encoder output does too (attention
  over identical copies of every key gives the same weights). A CLS token is a single key among copies, so its
  attention weight shrinks by the number of depth patches and outputs are close but not equal.
- :func:`resize_positions`: a learned table interpolated to a new grid (bi/trilinear,
  :func:`medjax.models.resize_pos_embed`); fixed sin-cos tables are rebuilt for any grid by the model itself.
- :func:`adapt_channels`: C -> 1 by summing the kernels over channels (an image replicated over C channels gives
  the same tokens as its single-channel copy), 1 -> N by repeating and dividing by N (the same rule backwards).

The MAE decoder predicts patch pixels, (p_1, ..., p_n, C) per patch: a channel change averages (C -> 1) or repeats
(1 -> N) its per-channel predictions, so the adapted MAE predicts, for an image, the channel mean of what the
original predicted for the image replicated over its channels; a new input size keeps it (fixed tables are rebuilt);
inflation drops it (the medjax decoder then starts from its seeded initialisation).
"""

from __future__ import annotations

import math

import numpy as np

from medjax.interop.arch import Arch, check

INFLATE_MODES = ("repeat", "centre")


def drop_decoder(c: dict, arch: Arch) -> tuple[dict, Arch]:
    return {k: v for k, v in c.items() if not k.startswith("dec.")}, arch


def _grid_part(c: dict, arch: Arch) -> tuple[np.ndarray, np.ndarray]:
    prefix = 1 if arch.cls_token else 0
    return c["pos"][:, :prefix], c["pos"][0, prefix:].reshape(*arch.grid, -1)


def inflate_3d(c: dict, arch: Arch, *, depth: int, mode: str = "repeat",
               depth_size: int | None = None) -> tuple[dict, Arch]:
    """2D -> 3D (see module doc). ``depth``: patch voxels along the new axis; ``depth_size``: input voxels along it
    (default ``depth``: one patch deep)."""
    from medjax.models.posembed import sincos_pos_embed

    check(arch.spatial_dims == 2, f"inflation needs a 2D network, this one has spatial_dims={arch.spatial_dims}")
    check(mode in INFLATE_MODES, f"inflate mode {mode!r}: use one of {INFLATE_MODES}")
    depth = int(depth)
    depth_size = int(depth_size or depth)
    check(depth >= 1 and depth_size % depth == 0,
          f"depth size {depth_size} must be a multiple of the depth patch {depth}")
    c = dict(c)
    w = c["patch.w"]
    if mode == "repeat":
        w3 = np.repeat(w[..., None], depth, axis=-1) / depth
    else:
        w3 = np.zeros(w.shape + (depth,), w.dtype)
        w3[..., depth // 2] = w
    c["patch.w"] = w3.astype(np.float32)
    if arch.pos_embed == "sincos":
        prefix = 1 if arch.cls_token else 0
        c["pos"] = np.asarray(sincos_pos_embed(arch.width, arch.grid, num_prefix=prefix, axes=arch.sincos_axes))
    prefix_rows, grid = _grid_part(c, arch)
    g3 = depth_size // depth
    grid3 = np.repeat(grid[:, :, None, :], g3, axis=2)
    c["pos"] = np.concatenate([prefix_rows, grid3.reshape(1, -1, grid.shape[-1])], axis=1).astype(np.float32)
    c, arch = drop_decoder(c, arch)
    arch = arch.replace(spatial_dims=3, input_size=tuple(arch.input_size) + (depth_size,),
                        patch=tuple(arch.patch) + (depth,), pos_embed="learned", sincos_axes=(), decoder=None)
    return c, arch


def resize_positions(c: dict, arch: Arch, input_size) -> tuple[dict, Arch]:
    """Rebuild for ``input_size`` (one entry per spatial dim): a learned table is interpolated to the new grid."""
    from medjax.models.posembed import resize_pos_embed

    input_size = tuple(int(s) for s in input_size)
    check(len(input_size) == arch.spatial_dims, f"input size {input_size} needs {arch.spatial_dims} entries")
    check(all(s % p == 0 for s, p in zip(input_size, arch.patch)),
          f"input size {input_size} does not divide by the patch {arch.patch}")
    new = arch.replace(input_size=input_size)
    if new.grid == arch.grid:
        return c, new
    c = dict(c)
    if arch.pos_embed == "learned":
        c["pos"] = np.asarray(resize_pos_embed(c["pos"], arch.grid, new.grid), np.float32)
    else:
        c.pop("pos", None)
    c.pop("dec.pos", None)  # fixed decoder tables are rebuilt by the model for the new grid
    return c, new


def adapt_channels(c: dict, arch: Arch, in_channels: int) -> tuple[dict, Arch]:
    """C -> 1 (sum over channels) or 1 -> N (repeat, divide by N); see module doc."""
    n = int(in_channels)
    if n == arch.in_channels:
        return c, arch
    w = c["patch.w"]
    if n == 1:
        w = w.sum(axis=1, keepdims=True)
    elif arch.in_channels == 1:
        w = np.repeat(w, n, axis=1) / n
    else:
        raise ValueError(f"in-channel adaptation maps C -> 1 or 1 -> N; {arch.in_channels} -> {n} is ambiguous "
                         "(go through 1 channel explicitly if that is what you mean)")
    c = dict(c)
    c["patch.w"] = w.astype(np.float32)
    if "dec.pred.w" in c:  # pixel predictions per channel: C -> 1 averages them, 1 -> N repeats them
        for key in ("dec.pred.w", "dec.pred.b"):
            v = c[key]
            v = v.reshape(-1, arch.in_channels, *v.shape[1:])
            v = v.mean(axis=1, keepdims=True) if n == 1 else np.repeat(v, n, axis=1)
            c[key] = v.reshape(-1, *v.shape[2:]).astype(np.float32)
    return c, arch.replace(in_channels=n)


def grid_tokens(arch: Arch) -> int:
    return math.prod(arch.grid)
