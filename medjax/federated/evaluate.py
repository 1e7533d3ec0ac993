"""A site's score of the global model on its own held-out records, for both federated tasks.

- ``federated.task=finetune``: the site's last ``finetune.val_records`` records, scored with the task's metrics
  (:func:`medjax.federated.local_finetune.evaluate_global`).
- ``federated.task=pretrain`` with ``data.holdout_last = n > 0``: the site's last ``n`` volumes, which its local
  training never reads (:func:`medjax.data.pipeline.load_pipeline_records` drops them), scored with the MAE loss
  on ``train.eval_samples`` fixed crops and masks (:class:`medjax.training.mae_eval.HeldOutLoss`, seeded by
  ``train.seed``: the same crops and masks for every model of the same config), reported as ``val_loss``.

The model a site scores is its own view of the global model (:func:`site_view`): the global travelling
parameters, and the site's own values of the ``federated.local_keys`` parameters from its latest checkpoint
(the personalised model that site would deploy). Only aggregate numbers leave the site: ``num_val`` and scalar
metrics, never case ids, file names or per-case values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medjax.config.schema import Config


def site_view(scfg: Config, state_dir, named: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray],
              travelling) -> dict[str, np.ndarray]:
    """``named`` (the model's step-0 parameters by name) with the site's ``federated.local_keys`` parameters from
    its latest checkpoint in ``state_dir`` (when it has one) and the global values of the ``travelling`` names."""
    from medjax.federated.arrays import compile_keys, flatten, is_local
    from medjax.training.checkpoint import Checkpointer

    named = dict(named)
    pats = compile_keys(scfg.federated.local_keys)
    if pats and Path(state_dir).is_dir():
        with Checkpointer(Path(state_dir), read_only=True) as ckpt:
            if ckpt.latest_step() is not None:
                saved, _, _ = ckpt.restore_unsharded()
                own = flatten(saved["params"])
                named.update({k: own[k] for k in own if k in named and is_local(k, pats)})
    named.update({k: np.asarray(global_arrays[k]) for k in travelling})
    return named


def evaluate_mae(scfg: Config, *, state_dir, global_arrays: dict[str, np.ndarray]) -> dict:
    """The MAE loss of the site's view of the global model on its last ``data.holdout_last`` volumes:
    ``{"num_val": n, "val_loss": loss}``, or ``{"num_val": 0}`` when the site holds nothing out."""
    import jax

    from medjax.data.sources import load_records
    from medjax.federated.arrays import compile_keys, flatten, is_local, unflatten
    from medjax.training.mae_eval import HeldOutLoss
    from medjax.training.state import train_state_spec

    n = int(scfg.data.holdout_last)
    if n <= 0:
        return {"num_val": 0}
    held = load_records(scfg.data.dir, split=scfg.data.split)[-n:]
    spec = train_state_spec(scfg)
    state = spec.init()
    named = flatten(state.params)
    pats = compile_keys(scfg.federated.local_keys)
    view = site_view(scfg, state_dir, named, global_arrays, [k for k in named if not is_local(k, pats)])
    params = jax.device_put(unflatten(view, state.params), spec.shardings.params)
    loss = HeldOutLoss(scfg, spec, held).of_params(params, state.model_state)
    return {"num_val": len(held), "val_loss": float(loss)}


def wants_evaluation(cfg: Config) -> bool:
    """Whether the sites score the final global model: always for fine-tuning, and for pretraining when each
    site holds volumes out (``data.holdout_last > 0``)."""
    return cfg.federated.task == "finetune" or int(cfg.data.holdout_last) > 0


def evaluate_site(cfg: Config, *, data_dir: str, state_dir, global_arrays: dict[str, np.ndarray],
                  cache_dir: str = "") -> dict:
    """This site's score of the global model (``{"num_val": n, <metric>: value, ...}``) for either task."""
    from medjax.federated.local import site_config

    scfg = site_config(cfg, data_dir, cache_dir)
    if scfg.federated.task == "finetune":
        from medjax.federated.local_finetune import evaluate_global

        return evaluate_global(scfg, state_dir=state_dir, global_arrays=global_arrays)
    return evaluate_mae(scfg, state_dir=state_dir, global_arrays=global_arrays)
