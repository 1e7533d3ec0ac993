"""Measure every weight format at its standard base size: import seconds, parameters, max |difference| of
outputs against the PyTorch library, and the same after export (the README's interop table).

Run: ``python -m tests.interop.measure_formats [OUT.json [FORMAT ...]]`` (needs the ``interop`` extra: torch,
transformers, MONAI). Prints one JSON line per format and records the library versions.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _versions() -> dict:
    import jax
    import monai
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "monai": monai.__version__,
            "jax": jax.__version__}


def _cl(x):
    return np.moveaxis(x.numpy(), 1, -1)


def measure_unetr_whole(tmp, x3) -> dict:
    """MONAI UNETR (base, 96^3, feature size 16) -> :func:`medjax.interop.load_unetr`: logits difference."""
    import torch
    from monai.networks.nets import UNETR

    from medjax.interop import load_unetr
    from tests.interop.conftest import randomise, save_state

    torch.manual_seed(0)
    net = UNETR(1, 2, (96, 96, 96)).eval()
    randomise(net, 0, skip=(), scale=0.02)
    save_state(net, tmp / "unetr-whole.safetensors")
    t0 = time.perf_counter()
    _, model = load_unetr(tmp / "unetr-whole.safetensors", heads=12)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        ref = _cl(net(x3))
    out = np.asarray(model(_cl(x3)))
    return {"format": "monai-unetr (load_unetr)", "model": "UNETR ViT-B/16 + decoder, 96^3, logits",
            "params": int(sum(p.numel() for p in net.parameters())), "import_s": round(seconds, 2),
            "import_max_abs_diff": float(np.max(np.abs(out - ref))), "output_max_abs": float(np.max(np.abs(ref)))}


def main(out=None, only=()) -> list[dict]:
    import torch
    import transformers
    from flax import nnx
    from monai.networks import nets
    from safetensors.torch import load_file

    from medjax.interop import export_weights, import_weights, load
    from medjax.interop.reference import mae_forward, masking_from_noise
    from tests.interop.conftest import randomise, save_state
    from tests.interop.test_hf import sincos_tables
    from tests.interop.test_monai_timm import _TimmViT

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    rows = []
    g = torch.Generator().manual_seed(0)
    x2 = torch.randn(1, 3, 224, 224, generator=g)
    x3 = torch.randn(1, 1, 96, 96, 96, generator=g)

    def monai_load(d):
        spec = json.loads((d / "monai_args.json").read_text())
        net = getattr(nets, spec["class"].rsplit(".", 1)[1])(**spec["args"]).eval()
        net.load_state_dict(load_file(str(d / "model.safetensors")))
        return net

    def monai_tokens(net, x):
        with torch.no_grad():
            _, hidden = net(x)
            return net.norm(hidden[-1]).numpy()

    cases = []
    m = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig()).eval()
    sincos_tables(m)
    randomise(m, 0, scale=0.02)
    m.save_pretrained(tmp / "hf-vitmae")
    cases.append(("hf-vitmae", "ViT-B/16 MAE, 224 px, decoder 512x8", tmp / "hf-vitmae", m, {}))
    m = transformers.ViTModel(transformers.ViTConfig(), add_pooling_layer=False).eval()
    randomise(m, 0, skip=(), scale=0.02)
    m.save_pretrained(tmp / "hf-vit")
    cases.append(("hf-vit", "ViT-B/16, 224 px", tmp / "hf-vit", m, {}))
    m = _TimmViT(size=224, patch=16, c=3, d=768, depth=12, heads=12, mlp=3072).eval()
    randomise(m, 0, skip=(), scale=0.02)
    save_state(m, tmp / "timm.safetensors")
    cases.append(("timm-vit", "ViT-B/16, 224 px (timm key layout)", tmp / "timm.safetensors", m, {"heads": 12}))
    m = nets.ViT(1, (96, 96, 96), 16, classification=False).eval()
    randomise(m, 0, skip=(), scale=0.02)
    save_state(m, tmp / "monai-vit.safetensors")
    cases.append(("monai-vit", "ViT-B/16, 96^3 voxels", tmp / "monai-vit.safetensors", m, {"heads": 12}))
    m = nets.MaskedAutoEncoderViT(1, (96, 96, 96), 16, mlp_dim=3072).eval()
    randomise(m, 0, skip=("position", "decoder_pos"), scale=0.02)
    save_state(m, tmp / "monai-mae.safetensors")
    cases.append(("monai-mae", "ViT-B/16 MAE, 96^3, decoder 384x4", tmp / "monai-mae.safetensors", m,
                  {"heads": 12, "decoder_heads": 12}))
    m = nets.UNETR(1, 2, (96, 96, 96)).eval()
    randomise(m, 0, skip=(), scale=0.02)
    save_state(m, tmp / "monai-unetr.safetensors")
    cases.append(("monai-unetr", "UNETR encoder ViT-B/16, 96^3", tmp / "monai-unetr.safetensors", m, {"heads": 12}))

    for fmt, what, src, net, kw in cases:
        if only and fmt not in only:
            continue
        t0 = time.perf_counter()
        cfg, model = load(src, fmt, **kw)
        seconds = time.perf_counter() - t0
        params = sum(v[...].size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
        enc = model.encoder if hasattr(model, "encoder") else model
        with torch.no_grad():
            if fmt == "hf-vitmae":
                net.config.mask_ratio = 0.0
                ref = net.vit(pixel_values=x2, noise=torch.arange(196.0)[None]).last_hidden_state.numpy()
            elif fmt == "hf-vit":
                ref = net(pixel_values=x2).last_hidden_state.numpy()
            elif fmt == "timm-vit":
                ref = net.forward_features(x2).numpy()
            elif fmt == "monai-unetr":
                ref = monai_tokens(net.vit, x3)
            elif fmt == "monai-vit":
                ref = monai_tokens(net, x3)
        x = x2 if fmt in ("hf-vitmae", "hf-vit", "timm-vit") else x3
        if fmt == "monai-mae":
            torch.manual_seed(1)
            with torch.no_grad():
                ref = net(x3)[0].numpy()
            torch.manual_seed(1)
            keep = torch.multinomial(torch.ones(1, 216), int(0.25 * 216), replacement=False).numpy()
            from medjax.interop.reference import masking_from_keep

            ours = np.asarray(mae_forward(model, _cl(x3), masking_from_keep(keep, 216))[1])
        else:
            ours = np.asarray(enc(_cl(x)))
        diff_in = float(np.max(np.abs(ours - ref)))
        row = {"format": fmt, "model": what, "params": int(params), "import_s": round(seconds, 2),
               "import_max_abs_diff": diff_in, "output_max_abs": float(np.max(np.abs(ref)))}
        if fmt != "monai-unetr":
            run = tmp / f"run-{fmt}"
            t0 = time.perf_counter()
            import_weights(src, fmt, run, **kw)
            row["import_run_dir_s"] = round(time.perf_counter() - t0, 2)
            exp = tmp / f"export-{fmt}"
            export_weights(run, fmt if fmt != "timm-vit" else "timm-vit", exp)
            with torch.no_grad():
                if fmt == "hf-vitmae":
                    back = transformers.ViTMAEForPreTraining.from_pretrained(exp).eval()
                    noise = torch.rand(1, 196, generator=torch.Generator().manual_seed(2))
                    res = back(pixel_values=x2, noise=noise)
                    pred = mae_forward(model, _cl(x2), masking_from_noise(noise.numpy(), back.config.mask_ratio))[1]
                    diff_out = float(np.max(np.abs(np.asarray(pred) - res.logits.numpy())))
                elif fmt == "hf-vit":
                    back = transformers.ViTModel.from_pretrained(exp, add_pooling_layer=False).eval()
                    diff_out = float(np.max(np.abs(ours - back(pixel_values=x2).last_hidden_state.numpy())))
                elif fmt == "timm-vit":
                    back = _TimmViT(size=224, patch=16, c=3, d=768, depth=12, heads=12, mlp=3072).eval()
                    back.load_state_dict(load_file(str(exp / "model.safetensors")), strict=False)
                    diff_out = float(np.max(np.abs(ours - back.forward_features(x2).numpy())))
                elif fmt == "monai-vit":
                    diff_out = float(np.max(np.abs(ours - monai_tokens(monai_load(exp), x3))))
                else:
                    back = monai_load(exp)
                    torch.manual_seed(1)
                    ref2, _ = back(x3)
                    diff_out = float(np.max(np.abs(ours - ref2.numpy())))
            row["export_max_abs_diff"] = diff_out
        rows.append(row)
        print(json.dumps(row), flush=True)
    if not only or "monai-unetr-whole" in only:
        rows.append(measure_unetr_whole(tmp, x3))
        print(json.dumps(rows[-1]), flush=True)
    result = {"versions": _versions(), "rows": rows}
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, tuple(sys.argv[2:]))
