"""Adapting imported 2D weights: 2D->3D inflation, position interpolation, in-channel changes, decoder drop."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from tests.interop.conftest import randomise, torch_or_skip

torch = torch_or_skip()
transformers = pytest.importorskip("transformers")

from medjax.interop import load  # noqa: E402
from medjax.training.digest import params_digest  # noqa: E402


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfvit")
    torch.manual_seed(0)
    kw = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=64, image_size=16,
              patch_size=4, num_channels=3)
    model = transformers.ViTModel(transformers.ViTConfig(**kw))
    randomise(model, 2, skip=())
    model.save_pretrained(d)
    return d


def _img(c=3, seed=0):
    return np.random.default_rng(seed).normal(size=(2, 16, 16, c)).astype(np.float32)


def _volume(img, mode, depth=12, patch=4):
    if mode == "repeat":  # constant along depth
        return np.repeat(img[:, :, :, None, :], depth, axis=3)
    vol = np.random.default_rng(1).normal(size=img.shape[:3] + (depth, img.shape[-1])).astype(np.float32)
    vol[:, :, :, patch // 2::patch, :] = img[:, :, :, None, :]  # only each depth patch's centre slice matters
    return vol


@pytest.mark.parametrize("mode", ["repeat", "centre"])
def test_inflated_patch_tokens_equal_2d(hf_vit, mode):
    _, vit2 = load(hf_vit, "hf-vit")
    cfg, vit3 = load(hf_vit, "hf-vit", spatial_dims=3, input_size=(16, 16, 12), depth_patch=4, inflate=mode)
    assert cfg.data.spatial_dims == 3 and vit3.patch == (4, 4, 4) and vit3.grid == (4, 4, 3)
    img = _img()
    e2 = np.asarray(vit2.embed(img))[:, 1:].reshape(2, 4, 4, 1, -1)
    e3 = np.asarray(vit3.embed(_volume(img, mode)))[:, 1:].reshape(2, 4, 4, 3, -1)
    assert np.max(np.abs(e3 - e2)) < 1e-5


@pytest.mark.parametrize("mode", ["repeat", "centre"])
def test_inflated_encoder_without_cls_equals_2d(tmp_path, mode):
    monai_nets = pytest.importorskip("monai.networks.nets")
    from tests.interop.conftest import save_state

    torch.manual_seed(0)
    net = monai_nets.ViT(in_channels=1, img_size=(16, 16), patch_size=(4, 4), hidden_size=48, mlp_dim=64,
                         num_layers=2, num_heads=4, spatial_dims=2)
    randomise(net, 3, skip=())
    save_state(net, tmp_path / "vit2d.safetensors")
    _, vit2 = load(tmp_path / "vit2d.safetensors", "monai-vit", heads=4)
    _, vit3 = load(tmp_path / "vit2d.safetensors", "monai-vit", heads=4, spatial_dims=3, input_size=(16, 16, 12),
                   depth_patch=4, inflate=mode)
    img = _img(1)
    t2 = np.asarray(vit2(img)).reshape(2, 4, 4, 1, -1)
    t3 = np.asarray(vit3(_volume(img, mode))).reshape(2, 4, 4, 3, -1)
    assert np.max(np.abs(t3 - t2)) < 1e-5


def test_position_interpolation_to_new_grid(hf_vit):
    from medjax.models import resize_pos_embed

    _, vit = load(hf_vit, "hf-vit")
    _, big = load(hf_vit, "hf-vit", input_size=24)
    assert big.grid == (6, 6)
    want = resize_pos_embed(np.asarray(vit.pos_embed[...]), (4, 4), (6, 6))
    np.testing.assert_allclose(np.asarray(big.pos_embed[...]), np.asarray(want), atol=1e-7)
    assert np.asarray(big(np.zeros((1, 24, 24, 3), np.float32))).shape == (1, 37, 48)


def test_rgb_to_grey_and_grey_to_many(hf_vit, tmp_path):
    _, rgb = load(hf_vit, "hf-vit")
    _, grey = load(hf_vit, "hf-vit", in_channels=1)
    g = _img(1)
    np.testing.assert_allclose(np.asarray(grey(g)), np.asarray(rgb(np.repeat(g, 3, axis=-1))), atol=1e-5)
    # 1 -> 4: the grey model exported and re-imported with 4 channels
    from medjax.interop.load import read

    imp = read(hf_vit, "hf-vit", in_channels=1)
    from medjax.interop.adapt import adapt_channels
    from medjax.interop.load import Imported, build

    c4, a4 = adapt_channels(imp.tensors, imp.arch, 4)
    _, four = build(Imported(a4, c4, {}))
    np.testing.assert_allclose(np.asarray(four(np.repeat(g, 4, axis=-1))), np.asarray(grey(g)), atol=1e-5)
    with pytest.raises(ValueError, match="ambiguous"):
        adapt_channels(c4, a4, 3)


def test_drop_decoder_keeps_encoder(tmp_path):
    from tests.interop.test_hf import _vitmae

    _vitmae(tmp_path, norm_pix=True)
    _, mae = load(tmp_path, "hf-vitmae")
    _, vit = load(tmp_path, "hf-vitmae", decoder=False)
    assert type(vit).__name__ == "ViT"
    assert params_digest(nnx.state(vit, nnx.Param)) == params_digest(nnx.state(mae.encoder, nnx.Param))


def test_cli_import_inflates(hf_vit, tmp_path, capsys):
    import json

    from medjax.cli import main

    rc = main(["import-weights", str(hf_vit), "--format", "hf-vit", "--out", str(tmp_path / "w"), "--spatial-dims",
               "3", "--input-size", "16", "16", "8", "--in-channels", "1", "--set", "model.decoder_width=16",
               "model.decoder_depth=1", "model.decoder_heads=2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["imported"]["adapted"][0].startswith("inflated 2D -> 3D")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["data"]["spatial_dims"] == 3 and cfg["data"]["crop_size"] == [16, 16, 8]
    assert cfg["model"]["in_channels"] == 1 and cfg["model"]["pos_embed"] == "learned"


def test_channel_adaptation_keeps_mae_decoder(tmp_path):
    from medjax.interop.reference import mae_forward, masking_from_noise
    from tests.interop.test_hf import _vitmae

    _vitmae(tmp_path, norm_pix=False)
    _, rgb = load(tmp_path, "hf-vitmae")
    cfg, grey = load(tmp_path, "hf-vitmae", in_channels=1)
    assert cfg.model.in_channels == 1 and type(grey).__name__ == "MAE"
    g = _img(1)
    masking = masking_from_noise(np.random.default_rng(0).random((2, 16)), 0.75)
    _, p1, _ = mae_forward(grey, g, masking)
    _, p3, _ = mae_forward(rgb, np.repeat(g, 3, axis=-1), masking)
    want = np.asarray(p3).reshape(2, 16, 16, 3).mean(-1)
    np.testing.assert_allclose(np.asarray(p1).reshape(2, 16, 16), want, atol=1e-5)
