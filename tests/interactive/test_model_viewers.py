"""ReconstructionViewer and AttentionViewer on tiny initialised MAE checkpoints (2D and 3D)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from medjax.interactive.attention import cls_attention, rollout
from medjax.interactive.attention_viewer import AttentionViewer
from medjax.interactive.recon_viewer import ReconstructionViewer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.slow  # JAX compiles of tiny models: ~10 s per test on 2 busy cores


@pytest.fixture(scope="module")
def recon3d(run3d, volumes):
    return ReconstructionViewer(run3d["workdir"], str(volumes / "vol00.nii.gz"), seed=1)


def test_reconstruction_outputs_and_mask(recon3d):
    v = recon3d
    assert v.mask_ratio == 0.75
    for name in ("input", "masked", "reconstruction", "error", "mask"):
        assert v.outputs[name].shape == (16, 16, 16), name
    mask = v.outputs["mask"]
    # 8 patches of 8^3 voxels, round(8 * 0.25) = 2 visible -> 6 masked patches
    assert mask.sum() == 6 * 8**3
    visible = mask == 0
    np.testing.assert_array_equal(v.outputs["reconstruction"][visible], v.outputs["input"][visible])
    np.testing.assert_array_equal(v.outputs["masked"][visible], v.outputs["input"][visible])
    np.testing.assert_array_equal(v.outputs["masked"][~visible], 0.0)
    assert (v.outputs["error"][visible] == 0).all() and v.outputs["error"][~visible].max() > 0
    assert np.isfinite(v.loss)
    sl = v.slices("axial", 5)
    assert {k: a.shape for k, a in sl.items()} == {k: (16, 16) for k in ("input", "masked", "reconstruction",
                                                                        "error", "mask")}
    assert len(v.panels()) == 4


def test_reconstruction_controls(recon3d):
    v = recon3d
    first_mask = v.outputs["mask"].copy()
    png = bytes(v.image.value)
    masks = []
    for _ in range(3):  # 28 possible masks of 6 out of 8 patches: three draws cannot all repeat the first
        v._button.click()
        masks.append(v.outputs["mask"].copy())
    assert v.draw == 3
    assert any((m != first_mask).any() for m in masks)
    v._ratio.value = 0.5
    assert v.mask_ratio == 0.5 and v.outputs["mask"].sum() == 4 * 8**3
    v._plane.value = "sagittal"
    v._slice.value = 2
    assert v.index["sagittal"] == 2 and bytes(v.image.value) != png
    bundle = v._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]).startswith(PNG_MAGIC)
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_reconstruction_2d(run2d, volumes):
    v = ReconstructionViewer(run2d["workdir"], str(volumes / "vol01.nii.gz"), mask_ratio=0.5, interactive=False)
    assert v.outputs["input"].shape == (16, 16)
    assert v.outputs["mask"].sum() == 8 * 16  # 16 patches of 4x4, 8 masked
    assert v.planes == ("axial",)
    assert v.slices()["reconstruction"].shape == (16, 16)
    assert v.to_png().startswith(PNG_MAGIC)


def test_attention_viewer_3d_cls_and_rollout(run3d, volumes):
    v = AttentionViewer(run3d["workdir"], str(volumes / "vol00.nii.gz"))
    assert v.num_prefix == 1 and v.grid == (2, 2, 2) and v.patch == (8, 8, 8)
    assert len(v.attentions) == 2 and v.attentions[0].shape == (2, 9, 9)
    assert v.query == "cls" and v.layer == 1
    np.testing.assert_allclose(v.token_map(), cls_attention(v.attentions[1], "mean"), rtol=1e-6)
    heat = v.attention_map()
    assert heat.shape == (16, 16, 16)
    # nearest upsampling: each 8^3 patch carries its token's weight
    np.testing.assert_allclose(heat[:8, :8, :8], v.token_map()[0], rtol=1e-6)
    np.testing.assert_allclose(heat[8:, 8:, 8:], v.token_map()[7], rtol=1e-6)
    assert v.viewer.layers["overlay"].shape == (16, 16, 16)
    png = bytes(v.viewer.image.value)
    v._mode.value = "rollout"
    np.testing.assert_allclose(v.token_map(), rollout(v.attentions)[0, 1:], rtol=1e-6)
    assert bytes(v.viewer.image.value) != png
    v._head.value = 1
    v._layer.value = 0
    np.testing.assert_allclose(v.token_map(), rollout(v.attentions[:1], head_fusion=1)[0, 1:], rtol=1e-6)
    v._upsample.value = "linear"
    assert v.attention_map().shape == (16, 16, 16)
    assert "rollout of blocks 0-0, head 1" in v.describe()
    assert base64.b64decode(v._repr_mimebundle_()["image/png"]).startswith(PNG_MAGIC)


def test_attention_viewer_2d_without_cls_follows_the_query_patch(run2d, volumes):
    v = AttentionViewer(run2d["workdir"], str(volumes / "vol01.nii.gz"), head=0)
    assert v.num_prefix == 0 and v.grid == (4, 4) and v.query == "centre"
    assert v.attention_map().shape == (16, 16)
    q = v.query_patch()
    assert q in (5, 6, 9, 10)  # one of the four central patches of the 4x4 grid
    np.testing.assert_allclose(v.token_map(), v.attentions[-1][0, q], rtol=1e-6)
    v.set(query="received")
    np.testing.assert_allclose(v.token_map(), v.attentions[-1][0].mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="CLS"):
        v.set(query="cls")
    with pytest.raises(ValueError, match="layer 5 out of range"):
        v.set(layer=5)


def test_attention_viewer_on_a_bare_model(volumes):
    from flax import nnx

    from medjax.config import ModelConfig
    from medjax.models import ViT

    vit = ViT(ModelConfig(variant="Mu/4", cls_token=False), spatial_dims=3, input_size=(8, 8, 8), rngs=nnx.Rngs(0))
    v = AttentionViewer(vit, str(volumes / "vol00.nii.gz"), interactive=False)
    assert v.x.shape == (8, 8, 8, 1) and 0.0 <= v.x.min() and v.x.max() <= 1.0
    assert v.attention_map().shape == (8, 8, 8)
    # the query patch follows the axial slice
    v.viewer.set_slice("axial", 0)
    low = v.query_patch()
    v.viewer.set_slice("axial", 7)
    assert v.query_patch() == low + 1  # next patch along z (last grid axis varies fastest)
