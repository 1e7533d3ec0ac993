"""MONAI ViT / UNETR encoder / MaskedAutoEncoderViT and timm-layout ViT weights import with equal outputs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.interop.conftest import nhwc, randomise, save_state, torch_or_skip

torch = torch_or_skip()
monai_nets = pytest.importorskip("monai.networks.nets")

from medjax.interop import load  # noqa: E402
from medjax.interop.reference import mae_forward, masking_from_keep  # noqa: E402


def _x(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dims,qkv_bias,cls", [(3, False, False), (3, True, True), (2, False, True)])
def test_monai_vit_matches(tmp_path, dims, qkv_bias, cls):
    size = (16, 16, 8)[:dims] if dims == 3 else (16, 12)
    patch = (8, 4, 4)[:dims] if dims == 3 else (4, 4)
    torch.manual_seed(0)
    net = monai_nets.ViT(in_channels=2, img_size=size, patch_size=patch, hidden_size=48, mlp_dim=64, num_layers=2,
                         num_heads=4, spatial_dims=dims, qkv_bias=qkv_bias, classification=cls).eval()
    randomise(net, 5, skip=())
    save_state(net, tmp_path / "vit.safetensors")
    cfg, vit = load(tmp_path / "vit.safetensors", "monai-vit", input_size=size, heads=4)
    assert cfg.model.norm_eps == 1e-5 and cfg.model.cls_token == cls and cfg.data.spatial_dims == dims
    x = _x((2, 2) + size)
    with torch.no_grad():
        _, hidden = net(x)
        ref = net.norm(hidden[-1]).numpy()
    out = np.asarray(vit(nhwc(x)))
    assert out.shape == ref.shape
    assert np.max(np.abs(out - ref)) < 1e-5


def test_monai_unetr_encoder_matches_and_decoder_is_reported(tmp_path):
    torch.manual_seed(0)
    net = monai_nets.UNETR(in_channels=1, out_channels=2, img_size=(16, 16, 16), feature_size=8, hidden_size=48,
                           mlp_dim=64, num_heads=4, spatial_dims=3).eval()
    randomise(net, 6, skip=())
    save_state(net, tmp_path / "unetr.safetensors")
    from medjax.interop.load import read

    imported = read(tmp_path / "unetr.safetensors", "monai-unetr", heads=4)
    assert any(k.startswith("decoder5.") for k in imported.report["dropped"])
    cfg, vit = load(tmp_path / "unetr.safetensors", "monai-unetr", heads=4)
    x = _x((1, 1, 16, 16, 16))
    with torch.no_grad():
        _, hidden = net.vit(x)
        ref = net.vit.norm(hidden[-1]).numpy()
    assert np.max(np.abs(np.asarray(vit(nhwc(x))) - ref)) < 1e-5


@pytest.mark.parametrize("dims", [3, 2])
def test_monai_mae_same_mask_same_reconstruction(tmp_path, dims):
    size, patch = ((16, 16, 16), (8, 8, 8)) if dims == 3 else ((16, 16), (4, 4))
    torch.manual_seed(0)
    net = monai_nets.MaskedAutoEncoderViT(in_channels=1, img_size=size, patch_size=patch, hidden_size=48, mlp_dim=64,
                                          num_layers=2, num_heads=4, decoder_hidden_size=24, decoder_mlp_dim=40,
                                          decoder_num_layers=1, decoder_num_heads=2, spatial_dims=dims,
                                          masking_ratio=0.5).eval()
    randomise(net, 7, skip=("position", "decoder_pos"))
    save_state(net, tmp_path / "mae.safetensors")
    cfg, mae = load(tmp_path / "mae.safetensors", "monai-mae", heads=4, decoder_heads=2)
    assert cfg.model.pos_embed == "sincos" and cfg.model.decoder_mlp_dim == 40
    x = _x((2, 1) + size)
    torch.manual_seed(3)
    with torch.no_grad():
        pred_ref, mask_ref = net(x)
    # MONAI draws the kept patches inside forward: replay its draw to get the same indices
    torch.manual_seed(3)
    n = pred_ref.shape[1]
    keep = torch.multinomial(torch.ones(2, n), int(0.5 * n), replacement=False).numpy()
    masking = masking_from_keep(keep, n)
    np.testing.assert_array_equal(np.asarray(masking.mask), mask_ref.numpy())
    _, pred, _ = mae_forward(mae, nhwc(x), masking)
    assert np.max(np.abs(np.asarray(pred) - pred_ref.numpy())) < 1e-5


class _TimmBlock(torch.nn.Module):
    """The timm VisionTransformer block, written from its documented layout (timm is not installed here)."""

    def __init__(self, d, heads, mlp):
        super().__init__()
        self.heads = heads
        self.norm1 = torch.nn.LayerNorm(d, eps=1e-6)
        self.attn = torch.nn.Module()
        self.attn.qkv = torch.nn.Linear(d, 3 * d)
        self.attn.proj = torch.nn.Linear(d, d)
        self.norm2 = torch.nn.LayerNorm(d, eps=1e-6)
        self.mlp = torch.nn.Module()
        self.mlp.fc1 = torch.nn.Linear(d, mlp)
        self.mlp.fc2 = torch.nn.Linear(mlp, d)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.attn.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(torch.nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class _TimmViT(torch.nn.Module):
    def __init__(self, size=24, patch=8, c=3, d=48, depth=2, heads=3, mlp=96):
        super().__init__()
        self.patch_embed = torch.nn.Module()
        self.patch_embed.proj = torch.nn.Conv2d(c, d, patch, patch)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 1 + (size // patch) ** 2, d))
        self.blocks = torch.nn.ModuleList([_TimmBlock(d, heads, mlp) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(d, eps=1e-6)
        self.head = torch.nn.Linear(d, 5)

    def forward_features(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def test_timm_layout_vit_matches(tmp_path):
    torch.manual_seed(0)
    net = _TimmViT().eval()
    randomise(net, 8, skip=())
    save_state(net, tmp_path / "timm.safetensors")
    cfg, vit = load(tmp_path / "timm.safetensors", "timm-vit", heads=3)
    assert cfg.model.norm_eps == 1e-6 and cfg.data.crop_size == (24, 24)
    x = _x((2, 3, 24, 24))
    with torch.no_grad():
        ref = net.forward_features(x).numpy()
    assert np.max(np.abs(np.asarray(vit(nhwc(x))) - ref)) < 1e-5


def test_timm_layer_scale_is_refused_by_name(tmp_path):
    from safetensors.numpy import save_file

    from medjax.interop import WeightsError

    torch.manual_seed(0)
    sd = {k: v.numpy() for k, v in _TimmViT().state_dict().items()}
    sd["blocks.0.ls1.gamma"] = np.ones(48, np.float32)
    save_file(sd, str(tmp_path / "ls.safetensors"))
    with pytest.raises(WeightsError, match="blocks.0.ls1.gamma"):
        load(tmp_path / "ls.safetensors", "timm-vit")


def test_monai_unetr_whole_network_same_logits(tmp_path):
    from medjax.interop.unetr import load_unetr

    torch.manual_seed(0)
    net = monai_nets.UNETR(in_channels=1, out_channels=3, img_size=(32, 32, 32), feature_size=8, hidden_size=48,
                           mlp_dim=64, num_heads=4, spatial_dims=3).eval()
    randomise(net, 9, skip=())
    save_state(net, tmp_path / "unetr.safetensors")
    _, model = load_unetr(tmp_path / "unetr.safetensors", heads=4)
    x = _x((2, 1, 32, 32, 32))
    with torch.no_grad():
        ref = nhwc(net(x))
    out = np.asarray(model(nhwc(x)))
    assert out.shape == ref.shape == (2, 32, 32, 32, 3)
    assert np.max(np.abs(out - ref)) < 1e-5
