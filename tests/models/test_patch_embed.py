"""patchify/unpatchify are exact inverses in 2D and 3D; patch embedding shapes and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.models.patch_embed import PatchEmbed, patch_grid, patchify, unpatchify


@pytest.mark.parametrize("shape, patch", [((2, 8, 12, 3), (4, 2)), ((2, 8, 4, 6, 2), (4, 2, 3)), ((1, 4, 4, 4, 1), (4, 4, 4))])
def test_patchify_roundtrip(shape, patch):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    tokens = patchify(x, patch)
    grid = patch_grid(shape[1:-1], patch)
    assert tokens.shape == (shape[0], int(np.prod(grid)), int(np.prod(patch)) * shape[-1])
    np.testing.assert_array_equal(unpatchify(tokens, patch, grid, shape[-1]), x)


def test_patchify_layout_2d():
    # token l = row-major patch (gi, gj); within a patch: (pi, pj, c) order
    x = np.arange(4 * 4 * 2, dtype=np.float32).reshape(1, 4, 4, 2)
    tokens = np.asarray(patchify(x, (2, 2)))
    np.testing.assert_array_equal(tokens[0, 1], x[0, 0:2, 2:4, :].reshape(-1))
    np.testing.assert_array_equal(tokens[0, 2], x[0, 2:4, 0:2, :].reshape(-1))


def test_patch_embed_equals_strided_conv():
    embed = PatchEmbed((4, 4), 3, 8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    out = embed(x)
    kernel = embed.proj.kernel[...].reshape(4, 4, 3, 8)  # (p1, p2, C, D): HWIO
    conv = jax.lax.conv_general_dilated(x, kernel, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    conv = conv.reshape(2, -1, 8) + embed.proj.bias[...]
    assert out.shape == (2, 6, 8)
    np.testing.assert_allclose(out, conv, atol=1e-5)


def test_errors_name_sizes():
    with pytest.raises(ValueError, match=r"\(10, 8\).*\(4, 4\)"):
        patchify(jnp.zeros((1, 10, 8, 1)), (4, 4))
    embed = PatchEmbed((2, 2), 2, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_channels=2"):
        embed(jnp.zeros((1, 4, 4, 3)))
