"""ViT size/patch variant strings, decoded in one place.

``"B/16"`` is ViT-Base with 16-voxel patches along every spatial dim (16³ in 3D, 16² in 2D);
``"B/16x16x8"`` gives a non-cubic patch (one size per spatial dim); ``"B/16:depth=6,heads=8"`` overrides sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ViTSize:
    width: int  # token width D (residual stream)
    depth: int  # transformer blocks
    heads: int  # attention heads (width must divide by heads)
    mlp_dim: int  # hidden width of the MLP blocks
    patch: tuple[int, ...]  # patch size in voxels/pixels, one entry per spatial dim


# name -> (width, depth, heads, mlp_dim); sizes of the ViT papers plus a micro size for tests
SIZES: dict[str, tuple[int, int, int, int]] = {
    "Mu": (64, 2, 2, 128),
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}

_OVERRIDABLE = ("width", "depth", "heads", "mlp_dim")


def decode_variant(variant: str, spatial_dims: int) -> ViTSize:
    """Decode ``"<size>/<patch>[:key=value,...]"`` for ``spatial_dims`` (2 or 3) spatial dims.

    ``<size>`` is one of :data:`SIZES`; ``<patch>`` is one integer (same for every dim) or one per spatial dim
    joined by ``x`` (``16x16x8``). Overrides (``width``, ``depth``, ``heads``, ``mlp_dim``) follow a colon.
    Raises ValueError naming the variant string for malformed input.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"variant {variant!r}: spatial_dims must be 2 or 3, got {spatial_dims}")
    if not isinstance(variant, str):
        raise ValueError(f"variant {variant!r}: expected a string such as 'B/16'")
    spec, _, overrides = variant.strip().partition(":")
    name, sep, patch_str = spec.partition("/")
    if not sep or name not in SIZES:
        raise ValueError(
            f"variant {variant!r}: expected '<size>/<patch>' with size in {sorted(SIZES)} (e.g. 'B/16', 'B/16x16x8')")
    try:
        patch = tuple(int(p) for p in patch_str.split("x"))
    except ValueError:
        raise ValueError(f"variant {variant!r}: patch {patch_str!r} must be integers like '16' or '16x16x8'") from None
    if any(p < 1 for p in patch):
        raise ValueError(f"variant {variant!r}: patch sizes must be positive, got {patch}")
    if len(patch) == 1:
        patch = patch * spatial_dims
    elif len(patch) != spatial_dims:
        raise ValueError(
            f"variant {variant!r}: patch {patch_str!r} has {len(patch)} dims but spatial_dims={spatial_dims}; "
            f"give one size or {spatial_dims} sizes joined by 'x'")
    width, depth, heads, mlp_dim = SIZES[name]
    size = ViTSize(width=width, depth=depth, heads=heads, mlp_dim=mlp_dim, patch=patch)
    if overrides:
        changes = {}
        for item in overrides.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in _OVERRIDABLE:
                raise ValueError(f"variant {variant!r}: override {item!r} must be key=int with key in {_OVERRIDABLE}")
            try:
                changes[key] = int(value)
            except ValueError:
                raise ValueError(f"variant {variant!r}: override {item!r} needs an integer value") from None
            if changes[key] < 1:
                raise ValueError(f"variant {variant!r}: override {item!r} must be positive")
        size = dataclasses.replace(size, **changes)
    if size.width % size.heads:
        raise ValueError(f"variant {variant!r}: width {size.width} must divide by heads {size.heads}")
    return size
