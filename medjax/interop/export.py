"""medjax run -> weights other libraries load: Hugging Face folders, MONAI state dicts, timm state dicts.

``hf-vitmae`` / ``hf-vit`` (2D): ``DIR/config.json`` + ``DIR/model.safetensors``, loadable with
``ViTMAEForPreTraining.from_pretrained(DIR)`` / ``ViTModel.from_pretrained(DIR)``. ``monai-vit`` / ``monai-mae``
(2D or 3D): ``DIR/model.safetensors`` + ``DIR/monai_args.json`` (``{"class": ..., "args": {...}}``):
``ViT(**args).load_state_dict(safetensors.torch.load_file(...))``. ``timm-vit`` (2D): ``DIR/model.safetensors`` +
``DIR/config.json`` with the VisionTransformer constructor arguments.

What cannot carry over exactly is said, not hidden: MONAI's LayerNorm eps is fixed at 1e-5 (a medjax model with
another ``model.norm_eps`` exports with that small difference, said in the summary's ``notes``); MONAI adds no
position to the CLS token, so a learned CLS position row is folded into the CLS token (same function); MONAI's
ViT has a CLS token only as a classifier, so one is written with a zero one-output head.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medjax.interop.arch import check
from medjax.interop.files import WeightsError, write_safetensors

EXPORT_FORMATS = ("hf-vitmae", "hf-vit", "monai-vit", "monai-mae", "timm-vit")


def _flat(tree, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = np.asarray(v, np.float32)
    return out


def read_run(workdir, step: int | None = None):
    """``(cfg, arch, flat params, step)`` of a medjax run directory (pretraining or fine-tuning)."""
    from medjax.config.overrides import from_dict
    from medjax.config.schema import Config
    from medjax.finetune.init import read_checkpoint
    from medjax.interop.arch import arch_from_config

    path = Path(workdir) if step is None else Path(workdir) / "checkpoints" / str(step)
    state, meta, step = read_checkpoint(path)
    if not meta.get("config"):
        raise WeightsError(f"{workdir}: the checkpoint has no saved config; export needs it to know the architecture")
    cfg = from_dict(Config, meta["config"])
    params = state.get("params") if isinstance(state, dict) else None
    if not params or "encoder" not in params:
        raise WeightsError(f"{workdir}: checkpoint step {step} has no params/encoder")
    return cfg, arch_from_config(cfg), _flat(params), step


def export_weights(workdir, format: str, out, *, step: int | None = None) -> dict:
    """Write the model of run ``workdir`` (latest step, or ``step``) in ``format`` to folder ``out``; returns a
    summary (files, format, step, num_params, notes)."""
    from medjax.interop import fmt_hf, fmt_monai, fmt_timm
    from medjax.interop.canonical import from_medjax

    if format not in EXPORT_FORMATS:
        raise WeightsError(f"--format {format!r}: export supports {', '.join(EXPORT_FORMATS)}")
    cfg, arch, flat, step = read_run(workdir, step)
    has_decoder = ("decoder_embed", "kernel") in flat
    if format in ("hf-vitmae", "monai-mae"):
        check(has_decoder, f"{workdir}: {format} needs an MAE decoder; this run holds an encoder only "
                           f"(export it as {'hf-vit' if format == 'hf-vitmae' else 'monai-vit'})")
    c = from_medjax(flat, arch, decoder=format in ("hf-vitmae", "monai-mae"))
    notes = []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if format in ("hf-vitmae", "hf-vit"):
        sd, config = fmt_hf.write(arch, c, kind=format[3:])
        if format == "hf-vitmae" and arch.norm_pix_ddof != 1 and arch.norm_pix_loss:
            notes.append("Hugging Face's norm-pix loss uses the unbiased patch variance (medjax run: biased); "
                         "outputs are identical, loss values differ slightly")
        extra = {"config.json": config}
    elif format == "timm-vit":
        sd, config = fmt_timm.write(arch, c)
        if abs(arch.norm_eps - 1e-6) > 1e-12:
            notes.append(f"timm uses LayerNorm eps 1e-6; this model uses {arch.norm_eps}")
        extra = {"config.json": config}
    else:
        sd, args = fmt_monai.write(arch, c, kind=format.split("-")[1])
        if abs(arch.norm_eps - fmt_monai.MONAI_EPS) > 1e-12:
            notes.append(f"MONAI fixes LayerNorm eps at 1e-5; this model uses {arch.norm_eps}, so MONAI's outputs "
                         "differ slightly (1.8e-5 max abs for eps 1e-6 on a small test model with outputs of scale 4)")
        extra = {"monai_args.json": args}
    files = [str(write_safetensors(out / "model.safetensors", sd, metadata={"format": "pt"}))]
    for name, obj in extra.items():
        (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        files.append(str(out / name))
    return {"format": format, "workdir": str(workdir), "step": int(step), "out": str(out), "files": files,
            "num_params": int(sum(v.size for v in sd.values())), "notes": notes}
