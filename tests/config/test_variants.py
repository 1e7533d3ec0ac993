"""decode_variant: the size table, patch parsing, overrides and errors."""

import pytest

from medjax.config.variants import ViTSize, decode_variant


@pytest.mark.parametrize(
    "name, sizes",
    [("Mu", (64, 2, 2, 128)), ("Ti", (192, 12, 3, 768)), ("S", (384, 12, 6, 1536)), ("B", (768, 12, 12, 3072)),
     ("L", (1024, 24, 16, 4096)), ("H", (1280, 32, 16, 5120))],
)
def test_size_table(name, sizes):
    v = decode_variant(f"{name}/16", 3)
    assert (v.width, v.depth, v.heads, v.mlp_dim) == sizes
    assert v.patch == (16, 16, 16)


def test_patch_broadcast_and_non_cubic():
    assert decode_variant("B/16", 2).patch == (16, 16)
    assert decode_variant("Ti/8", 3).patch == (8, 8, 8)
    assert decode_variant("B/16x16x8", 3) == ViTSize(768, 12, 12, 3072, (16, 16, 8))
    assert decode_variant("S/16x8", 2).patch == (16, 8)


def test_overrides():
    v = decode_variant("B/16:depth=6,heads=8", 3)
    assert (v.width, v.depth, v.heads, v.mlp_dim, v.patch) == (768, 6, 8, 3072, (16, 16, 16))


@pytest.mark.parametrize(
    "variant, dims, match",
    [("B/16x16", 3, "has 2 dims"), ("B/16x16x8", 2, "has 3 dims"), ("X/16", 3, "size in"), ("B16", 3, "size in"),
     ("B/a", 3, "must be integers"), ("B/0", 3, "positive"), ("B/16:depth=x", 3, "integer"),
     ("B/16:foo=1", 3, "override"), ("B/16:heads=7", 3, "divide by heads"), ("B/16", 4, "spatial_dims")],
)
def test_errors_name_the_variant(variant, dims, match):
    with pytest.raises(ValueError, match=match) as info:
        decode_variant(variant, dims)
    assert repr(variant) in str(info.value)
