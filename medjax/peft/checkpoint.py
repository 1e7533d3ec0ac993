"""Small checkpoints over a base: a PEFT run stores only its trainable parameters plus a reference to its base.

A run with ``finetune.method`` other than ``full`` saves ``params`` holding only the parameters the method
trains (:func:`medjax.peft.methods.is_trainable`) and, in the checkpoint's meta, ``peft``:

- ``method``; ``base``: the ``finetune.init_from`` the frozen encoder was loaded from ("" = the seeded
  initialisation of the config);
- ``base_digest``: :func:`medjax.training.digest.params_digest` of the frozen parameters as the run used them
  (built from the config's seed, then the base encoder loaded);
- ``trainable_params`` / ``total_params``: scalar counts.

Restoring (resume, ``medjax predict``) rebuilds the frozen parameters the same way, checks their
digest against ``base_digest`` (a different base is a CheckpointError naming both digests) and overlays the
saved trainable parameters.
"""

from __future__ import annotations

import dataclasses
import os

from medjax.errors import CheckpointError
from medjax.peft.methods import combine, is_added, resolve_method, select, trainable_mask


def load_base(cfg, params: dict) -> tuple[dict, dict | None]:
    """``params`` with the encoder read from ``cfg.finetune.init_from`` (PEFT-added parameters untouched);
    ``(params, report)``, report None when there is no base checkpoint. Arrays keep their shardings."""
    import jax

    from medjax.config.variants import decode_variant
    from medjax.finetune.init import load_encoder
    from medjax.finetune.tasks import crop_size

    if not cfg.finetune.init_from:
        return params, None
    patch = decode_variant(cfg.model.variant, cfg.data.spatial_dims).patch
    grid = tuple(c // p for c, p in zip(crop_size(cfg), patch))
    added = jax.tree_util.tree_map_with_path(lambda p, _: is_added(p), params)
    new, report = load_encoder(select(params, added, False), cfg.finetune.init_from, grid=grid,
                               num_prefix=int(cfg.model.cls_token), spatial_dims=cfg.data.spatial_dims)
    return combine(new, select(params, added, True)), report


def is_peft_run(cfg) -> bool:
    """True when ``finetune.method`` trains only part of the model (its checkpoints hold only that part)."""
    return resolve_method(cfg.finetune) != "full"


def base_reference(cfg, params: dict) -> dict:
    """The ``peft`` meta entry of a run whose full parameters (base loaded) are ``params``."""
    from medjax.training.digest import count_params, params_digest

    method = resolve_method(cfg.finetune)
    mask = trainable_mask(method, params)
    base = cfg.finetune.init_from
    return {"method": method, "base": os.path.abspath(base) if base else "",
            "base_digest": params_digest(select(params, mask, False)),
            "trainable_params": count_params(select(params, mask, True)), "total_params": count_params(params)}


def trainable_only(cfg, params: dict) -> dict:
    """The parameters ``finetune.method`` trains (what a PEFT checkpoint stores)."""
    return select(params, trainable_mask(resolve_method(cfg.finetune), params), True)


def check_base(saved: dict | None, current: dict, where) -> None:
    """CheckpointError when ``saved`` (the checkpoint's ``peft`` meta) was trained on another base."""
    if not saved or "base_digest" not in saved:
        raise CheckpointError(f"{where}: this finetune.method={current['method']} checkpoint has no 'peft' base "
                              "reference in its meta; it was not written by a PEFT run of this version")
    if saved["base_digest"] != current["base_digest"]:
        raise CheckpointError(
            f"{where}: the checkpoint was trained on base {saved.get('base') or '(seeded initialisation)'} with "
            f"params digest {saved['base_digest']}, but the base loaded now "
            f"({current.get('base') or '(seeded initialisation)'}) has params digest {current['base_digest']}; "
            "give the same finetune.init_from (and model settings) the run was trained with")


def over_base(cfg, trainable: dict, full_params: dict, saved_ref: dict | None, where) -> dict:
    """``full_params`` (fresh, base loaded) with the saved ``trainable`` parameters on top, after checking the
    base's digest against ``saved_ref``."""
    check_base(saved_ref, base_reference(cfg, full_params), where)
    mask = trainable_mask(resolve_method(cfg.finetune), full_params)
    return combine(trainable, select(full_params, mask, False))


def restore_run_state(cfg, ckpt, step: int, spec, fresh):
    """Resume a PEFT run: the train state of checkpoint ``step`` over ``fresh`` (a step-0 state with the base
    loaded), in the shardings of ``spec``."""
    from medjax.training.state import state_from_dict, state_to_dict

    abstract = state_to_dict(spec.abstract_with_shardings())
    abstract["params"] = trainable_only(cfg, abstract["params"])
    restored, _, meta = ckpt.restore(step, abstract_state=abstract)
    restored["params"] = over_base(cfg, restored["params"], fresh.params, (meta or {}).get("peft"),
                                   ckpt.directory / str(step))
    return state_from_dict(restored)


def restore_saved_params(cfg, saved, abs_params, abs_model_state, build_params):
    """``(params, model_state)`` of a PEFT checkpoint ``saved`` (:class:`medjax.training.restore.SavedCheckpoint`)
    for prediction: ``build_params()`` gives the model's fresh parameters (seeded), the base is loaded onto them,
    checked, and the saved trainable parameters read on top."""
    from medjax.training.restore import restore_arrays

    target = {"params": trainable_only(cfg, abs_params)}
    if abs_model_state and saved.keys("model_state"):
        target["model_state"] = abs_model_state
    out = restore_arrays(saved, target, exact=True)
    ref = saved.meta.get("peft") or {}
    if ref.get("base"):  # the absolute base path recorded at training time (the config may hold a relative one)
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, init_from=ref["base"]))
    full, _ = load_base(cfg, build_params())
    params = over_base(cfg, out["params"], full, saved.meta.get("peft"), saved.where)
    return params, out.get("model_state", abs_model_state or {})
