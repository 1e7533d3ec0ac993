"""A site's share of a federated fine-tuning round (``federated.task=finetune``), and its evaluation of the
global model on its own held-out records.

The site's run directory (``state_dir``) is an ordinary ``medjax finetune`` workdir: records, training cache,
checkpoints numbered by step, metrics.jsonl. Round ``r`` resumes that run at step ``(r - 1) * local_steps``
with the travelling parameters replaced by the global ones and trains to ``r * local_steps``
(:func:`medjax.finetune.loop.finetune` with ``stop_at``); the LR schedule spans all rounds. With one site and
FedAvg this is step for step the centralised ``medjax finetune`` of ``rounds * local_steps`` steps.

What travels (:func:`medjax.federated.arrays.travelling_names`): every parameter for ``finetune.method=full``;
for ``linear`` and the PEFT methods only the parameters the method trains (task head, LoRA factors, adapters,
biases, prompts), never the frozen base, which each site loads from ``finetune.init_from`` and whose digest is
checked on every resume. Parameters matched by ``federated.local_keys`` stay at the site.
The site's held-out records (``finetune.val_records`` of its own data) are scored with the global model;
only aggregate numbers leave the site (no case ids, file names or per-case values).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from medjax.config.schema import Config


def _roll_back(state_dir: Path, step: int) -> None:
    """Forget the site's checkpoints (numbered by step) and metrics lines after ``step``."""
    from medjax.federated.local import drop_checkpoints_from
    from medjax.training.logging import truncate_metrics

    if drop_checkpoints_from(state_dir, step + 1):
        truncate_metrics(Path(state_dir) / "metrics.jsonl", step)


def _round_losses(state_dir: Path, first: int, last: int) -> list[float]:
    """Losses the site logged for steps ``first..last`` (``train.log_every`` decides which were logged)."""
    from medjax.training.logging import read_metrics

    return [float(r["loss"]) for r in read_metrics(Path(state_dir) / "metrics.jsonl")
            if first <= int(r.get("step", -1)) <= last and "loss" in r]


def _put(named: dict, like):
    """``named`` (flat host arrays) as a tree shaped and sharded like ``like`` (device arrays)."""
    import jax

    from medjax.federated.arrays import unflatten

    return jax.device_put(unflatten(named, like), jax.tree.map(lambda a: a.sharding, like))


def finetune_round(scfg: Config, *, state_dir, global_arrays: dict[str, np.ndarray], round_: int,
                   progress: bool = False):
    """Train this site's ``federated.local_steps`` fine-tuning steps of round ``round_`` from ``global_arrays``.

    ``scfg``: the site's config (:func:`medjax.federated.local.site_config`: its own ``data.dir``, ``train.steps``
    over all rounds). Returns a :class:`medjax.federated.local.SiteResult` (DP applied when configured).
    """
    from medjax.errors import ConfigError
    from medjax.federated.arrays import flatten, travelling_names
    from medjax.federated.local import site_result
    from medjax.finetune.loop import finetune, split_records

    t0 = time.time()
    fed = scfg.federated
    state_dir = Path(state_dir).expanduser().absolute()
    first = (round_ - 1) * fed.local_steps
    _roll_back(state_dir, first)
    box: dict = {}

    def on_start(state):
        mine = flatten(state.params)
        names = travelling_names(scfg, state.params)
        missing = [k for k in names if k not in global_arrays]
        if missing:
            raise ConfigError(f"the server sent no values for parameters {missing[:3]}; the server and the site "
                              "must run the same model config, finetune.method and federated.local_keys")
        start = {k: (np.asarray(global_arrays[k]) if k in names else v) for k, v in mine.items()}
        box["names"] = names
        return state.replace(params=_put(start, state.params))

    def on_end(state):
        box["end"] = flatten(state.params)

    mu = fed.proximal_mu if fed.strategy == "fedprox" else 0.0
    summary = finetune(scfg, state_dir, progress=progress, evaluate=False, stop_at=round_ * fed.local_steps,
                       on_start=on_start, on_end=on_end, proximal_mu=mu)
    if summary["signal"] is not None:
        raise RuntimeError(f"the site's fine-tuning stopped on {summary['signal']} in round {round_}")
    names = box["names"]
    losses = _round_losses(state_dir, first + 1, round_ * fed.local_steps) or [float(summary["final_loss"])]
    train_records, _ = split_records(scfg)
    return site_result({k: box["end"][k] for k in names}, global_arrays, fed, num_examples=len(train_records),
                       losses=losses, seconds=time.time() - t0)


def task_params(cfg: Config):
    """``(spec, params, model_state)``: the fine-tuning model of ``cfg`` at step 0 as every site builds it (the
    config's seed, then the base encoder of ``finetune.init_from`` loaded), on the default devices."""
    import jax

    from medjax.finetune.loop import make_finetune_optimizer
    from medjax.finetune.tasks import build_task_model
    from medjax.peft.checkpoint import load_base
    from medjax.training.optim import make_schedule
    from medjax.training.state import split_model, train_state_spec

    factory = lambda: build_task_model(cfg)  # noqa: E731
    abstract = jax.eval_shape(lambda: split_model(factory())[1])
    tx = make_finetune_optimizer(cfg, abstract, make_schedule(cfg.train))
    spec = train_state_spec(cfg, tx=tx, model_factory=factory)
    state = spec.init()
    params, _ = load_base(cfg, state.params)
    return spec, params, state.model_state


def evaluate_global(scfg: Config, *, state_dir, global_arrays: dict[str, np.ndarray]) -> dict:
    """Score the global model on this site's held-out records; returns aggregate numbers only.

    The model is the step-0 model (base loaded), the site's own ``federated.local_keys`` parameters from its
    latest checkpoint, and the global travelling parameters. Returns ``{"num_val": n, <metric>: value, ...}``
    with the scalar metrics of :func:`medjax.finetune.evaluate.evaluate_records` (e.g. ``mean_dice``, ``auroc``,
    ``ap_iou0.1``), and ``{"num_val": 0}`` when the site holds no records out.
    """
    import jax

    from medjax.federated.arrays import flatten, travelling_names
    from medjax.federated.evaluate import site_view
    from medjax.finetune.evaluate import evaluate_records
    from medjax.finetune.loop import split_records

    _, val = split_records(scfg)
    if not val:
        return {"num_val": 0}
    spec, params, model_state = task_params(scfg)
    named = site_view(scfg, state_dir, flatten(params), global_arrays, travelling_names(scfg, params))
    params = _put(named, params)
    metrics = evaluate_records(scfg, spec.model_def, jax.device_get(params), jax.device_get(model_state), val)
    out = {"num_val": len(val)}
    out.update({k: float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and np.isfinite(v)})
    return out
