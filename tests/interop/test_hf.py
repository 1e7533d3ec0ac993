"""Hugging Face ViTMAE / ViT weights import into medjax models computing the same function."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.interop.conftest import nhwc, randomise, torch_or_skip

torch = torch_or_skip()
transformers = pytest.importorskip("transformers")

from medjax.interop import load  # noqa: E402
from medjax.interop.reference import mae_forward, masking_from_noise  # noqa: E402


def sincos_tables(model) -> None:
    """Fill ViTMAE's fixed sin-cos tables as in released checkpoints (transformers 5 leaves fresh models' at 0)."""
    model.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
    model.vit.embeddings.initialize_weights()
    model.decoder.initialize_weights(model.vit.embeddings.patch_embeddings.num_patches)
    assert float(model.decoder.decoder_pos_embed.abs().sum()) > 0


def _vitmae(tmp_path, *, norm_pix: bool, mask_ratio: float = 0.75, seed: int = 0, **sizes):
    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=16,
              patch_size=4, num_channels=3, decoder_hidden_size=16, decoder_num_hidden_layers=1,
              decoder_num_attention_heads=2, decoder_intermediate_size=40, mask_ratio=mask_ratio,
              norm_pix_loss=norm_pix)
    kw.update(sizes)
    torch.manual_seed(seed)
    model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**kw)).eval()
    sincos_tables(model)
    randomise(model, seed)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("norm_pix", [False, True])
def test_vitmae_encoder_and_mae_loss_match(tmp_path, norm_pix):
    model = _vitmae(tmp_path, norm_pix=norm_pix)
    cfg, mae = load(tmp_path, "hf-vitmae")
    assert cfg.model.pos_embed == "sincos" and cfg.model.sincos_axes == (1, 0)
    assert cfg.model.norm_eps == 1e-12 and cfg.model.decoder_mlp_dim == 40
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    xj = nhwc(x)
    # encoder: mask ratio 0 and increasing noise keep every patch in grid order
    model.config.mask_ratio = 0.0
    model.vit.embeddings.config.mask_ratio = 0.0
    noise = torch.arange(16, dtype=torch.float32).repeat(2, 1)
    with torch.no_grad():
        ref = model.vit(pixel_values=x, noise=noise).last_hidden_state.numpy()
    out = np.asarray(mae.encoder(xj))
    assert out.shape == ref.shape == (2, 17, 32)
    assert np.max(np.abs(out - ref)) < 1e-5
    # MAE: the same random mask -> the same reconstruction and loss
    model.config.mask_ratio = 0.75
    model.vit.embeddings.config.mask_ratio = 0.75
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        res = model(pixel_values=x, noise=noise)
    masking = masking_from_noise(noise.numpy(), 0.75)
    loss, pred, _ = mae_forward(mae, xj, masking)
    np.testing.assert_array_equal(np.asarray(masking.mask), res.mask.numpy())
    assert np.max(np.abs(np.asarray(pred) - res.logits.numpy())) < 1e-5
    assert abs(float(loss) - float(res.loss)) < 1e-5


def test_hf_vit_encoder_matches_and_pooler_is_dropped(tmp_path):
    kw = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=64, image_size=24,
              patch_size=8, num_channels=1)
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(**kw)).eval()
    randomise(model, 3, skip=())
    model.save_pretrained(tmp_path)
    cfg, vit = load(tmp_path, "hf-vit")
    assert cfg.model.pos_embed == "learned" and cfg.data.crop_size == (24, 24)
    x = torch.randn(2, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(pixel_values=x).last_hidden_state.numpy()
    out = np.asarray(vit(nhwc(x)))
    assert np.max(np.abs(out - ref)) < 1e-5


def test_old_hub_names_read_the_same(tmp_path):
    """Checkpoints saved by transformers 4 (vit.encoder.layer.N.attention.attention.query ...) import too."""
    from safetensors.numpy import load_file, save_file

    _vitmae(tmp_path / "new", norm_pix=True)
    sd = load_file(str(tmp_path / "new" / "model.safetensors"))
    ren = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
           "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense",
           "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    old = {}
    for k, v in sd.items():
        k2 = k.replace("vit.layers.", "vit.encoder.layer.")
        for a, b in ren.items():
            k2 = k2.replace(a, b)
        old[k2] = v
    (tmp_path / "old").mkdir()
    save_file(old, str(tmp_path / "old" / "model.safetensors"))
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    _, a = load(tmp_path / "new", "hf-vitmae")
    _, b = load(tmp_path / "old", "hf-vitmae")
    from flax import nnx

    from medjax.training.digest import params_digest

    assert params_digest(nnx.state(a, nnx.Param)) == params_digest(nnx.state(b, nnx.Param))
    assert json.loads((tmp_path / "old" / "config.json").read_text())["model_type"] == "vit_mae"


@pytest.mark.slow
def test_base_vitmae_b16_encoder_matches(tmp_path):
    """The standard configuration (ViT-B/16 MAE at 224 px, as facebook/vit-mae-base) checked live."""
    torch.manual_seed(0)
    model = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(mask_ratio=0.0)).eval()
    sincos_tables(model)
    randomise(model, 0, scale=0.02)
    model.save_pretrained(tmp_path)
    cfg, mae = load(tmp_path, "hf-vitmae")
    assert cfg.model.variant == "B/16:width=768,depth=12,heads=12,mlp_dim=3072"
    assert (cfg.model.decoder_width, cfg.model.decoder_depth, cfg.model.decoder_heads) == (512, 8, 16)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model.vit(pixel_values=x, noise=torch.arange(196.0)[None]).last_hidden_state.numpy()
    out = np.asarray(mae.encoder(nhwc(x)))
    assert np.max(np.abs(out - ref)) < 1e-5
