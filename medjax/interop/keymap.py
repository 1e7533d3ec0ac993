"""Renaming a source state dict to canonical names (:mod:`medjax.interop.canonical`) by regular-expression rules,
and inferring sizes from the tensors when no config says them."""

from __future__ import annotations

import math
import re

import numpy as np

from medjax.interop.arch import check


def rename(sd: dict, rules, *, ignore=(), source: str) -> tuple[dict, list[str]]:
    """Apply ``rules`` ((regex, template) pairs; first full match wins; the template may use ``\\1``) to every key.

    Keys matching an ``ignore`` regex are dropped and returned; a key matching nothing is an error naming it.
    A template ending in ``.qkv.w``/``.qkv.b`` splits a fused (3 D, ...) tensor into q, k, v.
    """
    from medjax.interop.canonical import split_qkv

    out, dropped = {}, []
    compiled = [(re.compile(p), t) for p, t in rules]
    ignored = [re.compile(p) for p in ignore]
    for key in sorted(sd):
        for pat, tmpl in compiled:
            m = pat.fullmatch(key)
            if m:
                name = m.expand(tmpl)
                if name.endswith((".qkv.w", ".qkv.b")):
                    stem, wb = name[:-6], name[-1]
                    for part, arr in zip("qkv", split_qkv(sd[key], f"{source}: {key}")):
                        out[f"{stem}.{part}.{wb}"] = arr
                else:
                    out[name] = sd[key]
                break
        else:
            if any(p.fullmatch(key) for p in ignored):
                dropped.append(key)
            else:
                raise ValueError(f"{source}: tensor {key!r} is not part of this format's layout; check --format")
    return out, dropped


def depth_of(c: dict, prefix: str = "blocks.") -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in c if k.startswith(prefix)}
    check(ids == set(range(len(ids))), f"blocks are not numbered 0..N-1: {sorted(ids)[:8]}")
    return len(ids)


def block_complete(c: dict, depth: int, prefix: str, source: str, *, src_names: dict | None = None) -> bool:
    """Check every block holds every canonical tensor; returns whether q/k/v biases are present.

    Missing q/k/v biases (an attention without them) are filled with zeros."""
    from medjax.interop.canonical import BLOCK_KEYS

    has_bias = f"{prefix}0.q.b" in c if depth else True
    for i in range(depth):
        for k in BLOCK_KEYS:
            name = f"{prefix}{i}.{k}"
            if name not in c:
                if k in ("q.b", "k.b", "v.b") and not has_bias:
                    c[name] = np.zeros((c[f"{prefix}{i}.q.w"].shape[0],), np.float32)
                    continue
                raise ValueError(f"{source}: block {i} lacks its {k} tensor (canonical {name}); the file is "
                                 "incomplete or another format")
    return has_bias


def infer_grid(tokens: int, spatial_dims: int, source: str) -> tuple[int, ...]:
    """A cubic/square grid holding ``tokens`` patches; error when there is none (then pass --input-size)."""
    side = round(tokens ** (1.0 / spatial_dims))
    check(side ** spatial_dims == tokens, f"{source}: {tokens} position rows are not a square/cubic grid in "
                                          f"{spatial_dims}D; pass --input-size")
    return (side,) * spatial_dims


def native_size(tokens: int, *, hint, config_size, patch, spatial_dims: int, source: str) -> tuple[int, ...]:
    """The input size the weights were trained at: from the config, else the requested size ``hint`` when its grid
    holds exactly ``tokens`` patches, else the square/cubic grid of ``tokens`` (the caller then resizes)."""
    if config_size is not None:
        return size_tuple(config_size, spatial_dims)
    if hint is not None:
        size = size_tuple(hint, spatial_dims)
        if len(size) == len(patch) and math.prod(s // p for s, p in zip(size, patch)) == tokens:
            return size
    return tuple(g * p for g, p in zip(infer_grid(tokens, spatial_dims, source), patch))


def default_heads(width: int, heads: int | None, source: str) -> int:
    """``heads`` if given, else the ViT convention of 64-wide heads (the weights do not record the head count)."""
    heads = heads or max(1, width // 64)
    check(width % heads == 0, f"{source}: width {width} does not divide by {heads} heads; pass heads=")
    return heads


def size_tuple(v, n: int) -> tuple[int, ...]:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 else v


def prod(t) -> int:
    return math.prod(t)
