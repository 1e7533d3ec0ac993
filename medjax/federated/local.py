"""One site's share of a round: take the global parameters, train ``federated.local_steps`` steps on the site's
own data with medjax's jitted pure train step, return the parameters that travel and aggregate numbers only.

The site keeps its own run directory (``state_dir``) between rounds: the full train state (optimizer moments,
step, RNG key), the data-iterator position and the parameters matched by ``federated.local_keys``, checkpointed
with medjax's :class:`~medjax.training.checkpoint.Checkpointer` exactly as ``medjax pretrain`` does. Each
round therefore resumes the site's own training run with the shared parameters replaced by the global ones;
with a single site and FedAvg this is step for step the centralised run of ``rounds * local_steps`` steps.

FedProx: the site loss gains ``mu/2 * ||w - w_round_start||^2`` inside the jitted step (:func:`prox_step`).
Differential privacy (``federated.dp_clip > 0``): the change of the shared parameters is clipped to that L2
norm and Gaussian noise of std ``dp_noise * dp_clip`` is added at the site before anything leaves it
(:mod:`medjax.federated.privacy`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from medjax.config.schema import Config
from medjax.errors import ConfigError

_ANCHOR = "__fedprox_anchor__"


@dataclasses.dataclass
class SiteResult:
    """What a site sends back: ``arrays`` (shared parameters, by name) and aggregate numbers."""

    arrays: dict[str, np.ndarray]
    num_examples: int  # training records at the site (FedAvg weight)
    loss: float  # mean training loss over this round's local steps
    steps: int  # local steps taken this round
    seconds: float  # wall time of the round at the site
    update_norm: float  # L2 norm of the change of the shared parameters before clipping
    clipped: bool = False  # DP: the update was clipped and noised


_STEPS: dict[str, Any] = {}  # jitted site steps of this process, by config_key


def config_key(scfg: Config) -> str:
    """What the compiled step depends on: the config without the site's data folders and the settings the
    step does not read (server-side and privacy settings)."""
    from medjax.config.overrides import to_json
    from medjax.config.federated_schema import FederatedConfig

    data = dataclasses.replace(scfg.data, dir="", cache_dir="")
    fed = FederatedConfig(strategy=scfg.federated.strategy, proximal_mu=scfg.federated.proximal_mu)
    return to_json(dataclasses.replace(scfg, data=data, name="", federated=fed))


def total_steps(cfg: Config) -> int:
    """Optimizer steps of a site that takes part in every round (the LR schedule's length)."""
    return cfg.federated.rounds * cfg.federated.local_steps


def check_task(cfg: Config) -> None:
    """ConfigError unless ``federated.task`` fits ``task``: "pretrain" trains the MAE (task=mae), "finetune" one
    of the fine-tuning tasks with its ``finetune.method``."""
    from medjax.finetune.tasks import TASKS

    task = cfg.federated.task
    if task == "pretrain" and cfg.task != "mae":
        raise ConfigError(f"federated.task=pretrain trains the MAE, but task={cfg.task!r}; set task=mae or "
                          "federated.task=finetune")
    if task == "finetune" and cfg.task not in TASKS:
        raise ConfigError(f"federated.task=finetune needs a fine-tuning task ({', '.join(TASKS)}), but "
                          f"task={cfg.task!r}; use a fine-tuning preset such as demo_seg or demo_cls")
    if task not in ("pretrain", "finetune"):
        raise ConfigError(f"federated.task={task!r}: use pretrain or finetune")
    if cfg.federated.strategy == "fedprox":
        check_proximal(cfg)


def check_proximal(cfg: Config) -> None:
    """ConfigError where FedProx's step cannot be built: the anchor rides in the batch (no micro-batches), and
    the proximal term is not combined with task distillation."""
    if cfg.train.grad_accum != 1:
        raise ConfigError("federated.strategy=fedprox needs train.grad_accum=1")
    if cfg.federated.task == "finetune" and cfg.finetune.teacher:
        raise ConfigError("federated.strategy=fedprox with finetune.teacher: the proximal term and task "
                          "distillation are not combined in one step; use one of them")


def site_config(cfg: Config, data_dir: str, cache_dir: str = "") -> Config:
    """The site's view of the run config: its own data folder, and a schedule over all rounds' local steps."""
    check_task(cfg)
    if cfg.federated.local_steps < 1 or cfg.federated.rounds < 1:
        raise ConfigError("federated.rounds and federated.local_steps must be at least 1")
    data = dataclasses.replace(cfg.data, dir=str(data_dir), cache_dir=str(cache_dir))
    train = dataclasses.replace(cfg.train, steps=total_steps(cfg))
    return dataclasses.replace(cfg, data=data, train=train)


def prox_step(model_def, tx, schedule, mu: float, *, loss_fn=None, names=None, trainable=None, state_shardings=None,
              max_nonfinite=None):
    """The jitted step ``(state, batch, anchor) -> (state, metrics)`` of ``loss_fn`` plus
    ``mu/2 * sum ||params - anchor||^2`` (``anchor``: the parameters at the start of the round).

    Args:
      loss_fn: the task's ``(model, batch, key) -> (loss, aux)``; the MAE loss when None.
      names: the parameter names (:func:`medjax.federated.arrays.flatten`) the proximal term covers, the ones that
        travel; None: all. Parameters kept local (``federated.local_keys``) are not pulled towards the global model.
      trainable: the fine-tuning method's mask (:func:`medjax.training.steps.train_step_fn`); frozen parameters
        equal their anchor, so they add nothing to the term either way.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from medjax.parallel.sharding import path_str
    from medjax.training.steps import mae_loss, train_step_fn

    task_loss = mae_loss if loss_fn is None else loss_fn
    covered = None if names is None else frozenset(names)

    def loss_fn_prox(model, batch, key):
        loss, aux = task_loss(model, {k: v for k, v in batch.items() if k != _ANCHOR}, key)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        pairs = zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(batch[_ANCHOR]))
        sq = sum(jnp.sum(jnp.square(p - a)) for (path, p), a in pairs if covered is None or path_str(path) in covered)
        return loss + 0.5 * mu * sq, aux

    inner = train_step_fn(model_def, tx, schedule, loss_fn=loss_fn_prox, max_nonfinite=max_nonfinite,
                          trainable=trainable)

    def step(state, batch, anchor):
        return inner(state, {**batch, _ANCHOR: anchor})

    kwargs: dict[str, Any] = {"donate_argnums": (0,)}
    if state_shardings is not None:
        kwargs["in_shardings"] = (state_shardings, None, state_shardings.params)
    return jax.jit(step, **kwargs)


def drop_checkpoints_from(state_dir, first: int) -> bool:
    """Delete the site's checkpoints numbered ``>= first``; whether any was deleted. The server is re-sending a
    round it restarted before saving, so the site trains it again from the same state as the first time."""
    import shutil

    from medjax.training.checkpoint import checkpoint_dir

    folder = checkpoint_dir(state_dir)
    later = [p for p in folder.iterdir() if p.name.isdigit() and int(p.name) >= first] if folder.is_dir() else []
    for p in later:
        shutil.rmtree(p)
    return bool(later)


def _roll_back(state_dir: Path, round_: int) -> None:
    """Forget this site's checkpoints (numbered by round) and step records of rounds ``>= round_``."""
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.logging import truncate_metrics

    if drop_checkpoints_from(state_dir, round_):
        with Checkpointer(state_dir, keep=2) as ckpt:
            latest = ckpt.latest_step()
            step = int((ckpt.read_item("meta", latest) or {}).get("step", 0)) if latest is not None else 0
        truncate_metrics(Path(state_dir) / "metrics.jsonl", step)


def train_round(cfg: Config, *, data_dir: str, state_dir, global_arrays: dict[str, np.ndarray], round_: int,
                cache_dir: str = "", progress: bool = False) -> SiteResult:
    """Run this site's local steps for ``round_`` from ``global_arrays`` (shared parameters by name).

    Args:
      cfg: the run config (from the server); ``data.dir`` is replaced by ``data_dir``.
      state_dir: the site's own run directory (checkpoints of its train state and data position).
    """
    import jax

    from medjax.data.global_batches import make_data_iterator, saved_num_shards
    from medjax.data.pipeline import load_pipeline_records, to_global_batch
    from medjax.federated.arrays import compile_keys, flatten, is_local, unflatten
    from medjax.parallel.rules import use_mesh
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.setup import open_run, prepare_workdir
    from medjax.training.state import state_to_dict
    from medjax.training.steps import make_train_step

    t0 = time.time()
    scfg = site_config(cfg, data_dir, cache_dir)
    fed = scfg.federated
    if fed.task == "finetune":
        from medjax.federated.local_finetune import finetune_round

        return finetune_round(scfg, state_dir=state_dir, global_arrays=global_arrays, round_=round_,
                              progress=progress)
    state_dir = prepare_workdir(scfg, state_dir, restart=False)
    schedule = make_schedule(scfg.train)
    tx = make_optimizer(scfg.train, schedule=schedule)
    records, _ = load_pipeline_records(scfg.data)

    def make_data(saved):
        return make_data_iterator(scfg.data, global_batch=scfg.train.batch_size, seed=scfg.train.seed,
                                  num_shards=saved_num_shards(saved))

    _roll_back(state_dir, round_)
    local_pats = compile_keys(fed.local_keys)
    with open_run(scfg, state_dir, tx=tx, make_data=make_data, progress=progress, desc=f"round {round_}") as run:
        spec, bsh = run.spec, run.batch_sharding
        # the shared parameters become the global ones; parameters matched by local_keys keep the site's values
        mine = flatten(run.state.params)
        start_named = {k: (v if is_local(k, local_pats) else global_arrays[k]) for k, v in mine.items()}
        missing = [k for k in mine if not is_local(k, local_pats) and k not in global_arrays]
        if missing:
            raise ConfigError(f"the server sent no values for parameters {missing[:3]}; the server and the site "
                              "must run the same model config and federated.local_keys")
        params = jax.device_put(unflatten(start_named, run.state.params), spec.shardings.params)
        state = run.state.replace(params=params)
        with use_mesh(run.mesh, spec.rules):
            prox = fed.strategy == "fedprox" and fed.proximal_mu > 0
            # one compiled step per model/optimizer config in this process (in-process sites share it)
            key = config_key(scfg)
            if key not in _STEPS:
                if prox:
                    _STEPS[key] = prox_step(spec.model_def, tx, schedule, fed.proximal_mu,
                                            state_shardings=spec.shardings, max_nonfinite=scfg.train.max_nonfinite)
                else:
                    _STEPS[key] = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings,
                                                  batch_sharding=bsh, grad_accum=scfg.train.grad_accum,
                                                  max_nonfinite=scfg.train.max_nonfinite)
            fn = _STEPS[key]
            if prox:
                anchor = jax.device_put(unflatten(start_named, run.state.params), spec.shardings.params)

                def step_fn(st, b):
                    return fn(st, b, anchor)
            else:
                step_fn = fn
            metrics = []
            step = run.start
            for _ in range(fed.local_steps):
                batch = to_global_batch(next(run.data), bsh)
                state, m = step_fn(state, batch)
                metrics.append(m)
                step += 1
        host = [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]
        for i, m in enumerate(host):
            run.logger.log(run.start + i + 1, m)
        host_losses = [m["loss"] for m in host]
        # the site's checkpoints are numbered by round, so a round the server sends again (after a server
        # restart) starts from the same local state as the first time
        run.ckpt.save(round_, state_to_dict(state), data_state=run.data.get_state(),
                      meta={"round": int(round_), "step": int(step)}, force=True)
        run.ckpt.wait()
        new_named = flatten(state.params)
    shared_new = {k: v for k, v in new_named.items() if not is_local(k, local_pats)}
    return site_result(shared_new, global_arrays, fed, num_examples=len(records), losses=host_losses,
                       seconds=time.time() - t0)


def site_result(sent: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray], fed, *, num_examples: int,
                losses, seconds: float) -> SiteResult:
    """What the site sends after a round: ``sent`` (its travelling parameters) and aggregate numbers.

    ``update_norm`` is the L2 norm of the update (sent minus global parameters). With differential privacy
    (``federated.dp_clip > 0``) the update is clipped to ``dp_clip`` in L2 and Gaussian noise of std
    ``dp_noise * dp_clip`` added before anything leaves the site.
    """
    update = {k: sent[k] - np.asarray(global_arrays[k], sent[k].dtype) for k in sent}
    norm = float(np.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update.values())))
    res = SiteResult(arrays=sent, num_examples=int(num_examples), loss=float(np.mean(losses)),
                     steps=fed.local_steps, seconds=seconds, update_norm=norm)
    if fed.dp_clip > 0:
        from medjax.federated.privacy import add_gaussian_noise, clip_update

        # the noise comes from fresh OS entropy: a seed the coordinator could know would let it remove the noise
        update, _ = clip_update(update, fed.dp_clip)
        update = add_gaussian_noise(update, fed.dp_clip, fed.dp_noise, np.random.default_rng())
        res.arrays = {k: (np.asarray(global_arrays[k], np.float32) + update[k]).astype(sent[k].dtype) for k in sent}
        res.clipped = True
    return res
