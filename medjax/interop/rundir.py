"""An imported network written as an ordinary medjax run directory (what ``medjax pretrain`` writes at step 0).

``WORKDIR/config.json`` holds the resolved config and ``WORKDIR/checkpoints/0`` the full train state (MAE
parameters, a fresh optimizer state, step 0) plus ``meta`` (config, parameter count, and an ``imported`` report:
source, format, dropped tensors, adaptations, parameters left at their seeded initialisation). So
``medjax checkpoint info``, ``--init-from``, ``medjax finetune`` and ``medjax pretrain`` (which resumes at step 0:
continued pretraining) work on it unchanged. Networks without a decoder get medjax's MAE decoder, initialised from
``train.seed`` (sizes from ``model.decoder_*``, settable with ``--set``).
"""

from __future__ import annotations

import time
from pathlib import Path

from medjax.interop.arch import arch_from_config
from medjax.interop.files import WeightsError

_ARCH_FIELDS = ("spatial_dims", "input_size", "patch", "in_channels", "width", "depth", "heads", "mlp_dim",
                "cls_token", "pos_embed")


def import_weights(src, format: str, workdir, *, overrides=(), force: bool = False, **read_kwargs) -> dict:
    """Import ``src`` (see :func:`medjax.interop.load`) into run directory ``workdir``; returns a summary dict
    (workdir, format, num_params, params_digest, seconds, imported report).

    ``overrides`` are ``--set KEY=VALUE`` strings applied to the config (training, data, decoder sizes); changing
    the imported architecture through them is an error naming the key. ``force`` replaces an existing run's
    checkpoints.
    """
    import shutil

    from medjax.config.overrides import apply_overrides, to_dict, to_json
    from medjax.config.schema import Config
    from medjax.interop.arch import run_config
    from medjax.interop.canonical import to_medjax
    from medjax.interop.load import assign, read
    from medjax.training.checkpoint import Checkpointer, checkpoint_dir
    from medjax.training.digest import count_params, params_digest
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.state import build_model, init_train_state, state_to_dict

    t0 = time.perf_counter()
    workdir = Path(workdir).expanduser().absolute()
    ckdir = checkpoint_dir(workdir)
    if ckdir.exists() and any(ckdir.iterdir()):
        if not force:
            raise WeightsError(f"{workdir}: already holds checkpoints; choose another --out or pass --force to "
                               "replace them")
        shutil.rmtree(ckdir)
    imported = read(src, format, **read_kwargs)
    arch = imported.arch
    cfg = run_config(arch, name=f"import-{format}", base=Config())
    cfg = apply_overrides(cfg, list(overrides))
    built = arch_from_config(cfg)
    for f in _ARCH_FIELDS:
        if getattr(built, f) != getattr(arch, f) and f != "input_size":
            raise WeightsError(f"--set changed the imported architecture ({f}: {getattr(arch, f)} -> "
                               f"{getattr(built, f)}); use --input-size / --spatial-dims / --in-channels to adapt")
    if tuple(built.input_size) != tuple(arch.input_size):
        raise WeightsError(f"--set data.crop_size={built.input_size} differs from the imported input size "
                           f"{arch.input_size}; pass --input-size to interpolate the positions instead")
    model = build_model(cfg)
    flat = to_medjax(imported.tensors, arch)
    initialised = assign(model, flat, source=imported.report["source"])
    imported.report["initialised"] = initialised
    tx = make_optimizer(cfg.train, schedule=make_schedule(cfg.train))
    _, state = init_train_state(model, tx, cfg.train.seed)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(to_json(cfg) + "\n")
    params = state.params
    summary = {"workdir": str(workdir), "format": format, "num_params": count_params(params),
               "params_digest": params_digest(params),
               "imported": {**imported.report, "initialised": len(initialised)}}
    meta = {"config": to_dict(cfg), "num_params": int(summary["num_params"]), "task": "mae", "step": 0,
            "loss": None, "imported": {k: v for k, v in imported.report.items() if k != "initialised"}
            | {"initialised": initialised[:50]}}
    ck = Checkpointer(workdir, keep=max(1, cfg.checkpoint.keep), async_save=False)
    try:
        ck.save(0, state_to_dict(state), meta=meta, force=True)
        ck.wait()
    finally:
        ck.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary
