"""Export: PyTorch libraries load medjax runs and compute the same outputs; import(export(x)) is x exactly."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from tests.interop.conftest import torch_or_skip

torch = torch_or_skip()
transformers = pytest.importorskip("transformers")
monai_nets = pytest.importorskip("monai.networks.nets")

from medjax.config.overrides import to_dict  # noqa: E402
from medjax.config.schema import Config, DataConfig, ModelConfig  # noqa: E402
from medjax.interop import export_weights, load  # noqa: E402
from medjax.interop.reference import mae_forward, masking_from_noise  # noqa: E402
from medjax.models import MAE  # noqa: E402
from medjax.training.checkpoint import Checkpointer  # noqa: E402
from medjax.training.digest import params_digest  # noqa: E402


def _run(tmp_path, *, dims, size, qkv_bias=True, **model):
    """A medjax MAE run directory with every parameter perturbed (biases non-zero, norms not 1)."""
    mcfg = ModelConfig(**{"variant": "Mu/4", "decoder_width": 32, "decoder_depth": 1, "decoder_heads": 2, **model})
    cfg = Config(name="t", data=DataConfig(spatial_dims=dims, crop_size=size), model=mcfg)
    mae = MAE(mcfg, spatial_dims=dims, input_size=size, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(mae, nnx.Param))
    leaves, tree = jax.tree.flatten_with_path(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys):
        name = jax.tree_util.keystr(path)
        if not qkv_bias and any(s in name for s in ("q_bias", "k_bias", "v_bias")):
            new.append(leaf)
        else:
            new.append(leaf + 0.1 * jax.random.normal(k, leaf.shape))
    params = jax.tree.unflatten(tree, new)
    nnx.update(mae, nnx.State(params))
    with Checkpointer(tmp_path / "run", keep=1) as ck:
        ck.save(3, {"params": params}, meta={"config": to_dict(cfg)}, force=True)
        ck.wait()
    return tmp_path / "run", mae, params


def _roundtrip_digest(out, fmt, params, **kw):
    _, model = load(out, fmt, **kw)
    got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if "decoder_embed" not in got:
        params = {"encoder": params["encoder"]}
        got = {"encoder": got}
    return params_digest(got) == params_digest(params)


def test_hf_vitmae_export_loads_and_matches(tmp_path):
    work, mae, params = _run(tmp_path, dims=2, size=(16, 16), in_channels=3)
    out = tmp_path / "hf"
    s = export_weights(work, "hf-vitmae", out)
    assert s["step"] == 3 and json.loads((out / "config.json").read_text())["model_type"] == "vit_mae"
    hf = transformers.ViTMAEForPreTraining.from_pretrained(out).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    xj = np.moveaxis(x.numpy(), 1, -1)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        res = hf(pixel_values=x, noise=noise)
    _, pred, _ = mae_forward(mae, xj, masking_from_noise(noise.numpy(), hf.config.mask_ratio))
    assert np.max(np.abs(np.asarray(pred) - res.logits.numpy())) < 1e-5
    assert _roundtrip_digest(out, "hf-vitmae", params)


def test_hf_vit_export_loads_and_matches(tmp_path):
    work, mae, params = _run(tmp_path, dims=2, size=(16, 16), pos_embed="learned")
    out = tmp_path / "hfvit"
    export_weights(work, "hf-vit", out)
    hf = transformers.ViTModel.from_pretrained(out, add_pooling_layer=False).eval()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state.numpy()
    assert np.max(np.abs(np.asarray(mae.encoder(np.moveaxis(x.numpy(), 1, -1))) - ref)) < 1e-5
    assert _roundtrip_digest(out, "hf-vit", params)


def _monai(out, cls):
    from safetensors.torch import load_file

    spec = json.loads((out / "monai_args.json").read_text())
    net = getattr(monai_nets, spec["class"].rsplit(".", 1)[1])(**spec["args"]).eval()
    net.load_state_dict(load_file(str(out / "model.safetensors")))  # strict: every key accepted, none missing
    return net, spec["args"]


@pytest.mark.parametrize("cls,qkv_bias", [(False, False), (True, True)])
def test_monai_vit_export_3d_loads_and_matches(tmp_path, cls, qkv_bias):
    work, mae, params = _run(tmp_path, dims=3, size=(16, 16, 8), cls_token=cls, qkv_bias=qkv_bias, norm_eps=1e-5)
    out = tmp_path / "monai"
    export_weights(work, "monai-vit", out)
    net, args = _monai(out, cls)
    assert args["qkv_bias"] is qkv_bias and args["spatial_dims"] == 3
    x = torch.randn(2, 1, 16, 16, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, hidden = net(x)
        ref = net.norm(hidden[-1]).numpy()
    assert np.max(np.abs(np.asarray(mae.encoder(np.moveaxis(x.numpy(), 1, -1))) - ref)) < 1e-5
    assert _roundtrip_digest(out, "monai-vit", params)


def test_monai_mae_export_3d_loads_and_matches(tmp_path):
    work, mae, params = _run(tmp_path, dims=3, size=(16, 16, 16), norm_eps=1e-5)
    out = tmp_path / "monaimae"
    export_weights(work, "monai-mae", out)
    net, _ = _monai(out, True)
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(4)
    with torch.no_grad():
        pred_ref, _ = net(x, masking_ratio=0.5)
    torch.manual_seed(4)
    n = pred_ref.shape[1]
    keep = torch.multinomial(torch.ones(2, n), int(0.5 * n), replacement=False).numpy()
    from medjax.interop.reference import masking_from_keep

    _, pred, _ = mae_forward(mae, np.moveaxis(x.numpy(), 1, -1), masking_from_keep(keep, n))
    assert np.max(np.abs(np.asarray(pred) - pred_ref.numpy())) < 1e-5
    assert _roundtrip_digest(out, "monai-mae", params)


def test_encoder_only_run_refuses_mae_formats(tmp_path):
    from medjax.interop import WeightsError

    work, _, params = _run(tmp_path, dims=2, size=(16, 16))
    enc = tmp_path / "enc"
    with Checkpointer(enc, keep=1) as ck:
        from medjax.finetune.init import read_checkpoint

        _, meta, _ = read_checkpoint(work)
        ck.save(1, {"params": {"encoder": params["encoder"]}}, meta=meta, force=True)
        ck.wait()
    with pytest.raises(WeightsError, match="encoder only"):
        export_weights(enc, "hf-vitmae", tmp_path / "x")
    export_weights(enc, "hf-vit", tmp_path / "y")
