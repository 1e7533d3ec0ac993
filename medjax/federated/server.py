"""The federated server's round loop, independent of the transport: send the global parameters, collect the
sites' parameters, aggregate, checkpoint, log. The Flower ServerApp (:mod:`medjax.federated.server_app`) runs it
over a Flower Grid; tests and quick comparisons run it over in-process sites (:mod:`medjax.federated.inprocess`).

WORKDIR layout::

    config.json               the resolved run config
    checkpoints/<round>/      {"params": global model (full tree), "server_opt": FedAdam/FedYogi state} + meta
    metrics.jsonl             one record per site and one "global" record per round (format below)
    privacy.json              (dp_clip > 0) epsilon per round and in total at dp_delta
    eval.json                 (federated.task=finetune, or pretrain with data.holdout_last > 0) each site's score
                              of the final global model on its own held-out records (medjax.federated.evaluate),
                              and their mean weighted by the held-out counts
    summary.json              written when the last round is done
    tb/                       TensorBoard scalars (global and per-site loss, epsilon)

``metrics.jsonl`` records: ``{"round", "site" ("global" or the site's name), "loss", "num_examples",
"epsilon" (null without DP), "seconds", "bytes_sent"}``; site records add ``update_norm`` and ``steps``, global
ones ``sites`` (names that answered), ``bytes_received`` and ``strategy``. ``bytes_sent`` is what that party sent
in the round: a site its parameters, the server the global parameters to every site it asked.

The checkpoint step is the round number; the params are saved as the whole model (parameters kept local by
``federated.local_keys`` stay at their initial values there), so ``medjax finetune --set
finetune.init_from=WORKDIR`` reads the federated encoder like any pretraining run's, and ``medjax predict``
reads a federated fine-tuning run like a ``medjax finetune`` run's (PEFT methods: the trainable parameters and
the base reference, as a PEFT run saves them). A restarted server resumes
at the round after its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medjax.config.schema import Config
from medjax.errors import ConfigError


@dataclasses.dataclass
class SiteReply:
    """One site's answer in a round: its name (a label from its own configuration, never a path) and result."""

    site: str
    result: object  # medjax.federated.local.SiteResult
    bytes_sent: int = 0


# exchange(round, shared_arrays, run_config_json) -> replies of the sites that answered
Exchange = Callable[[int, dict, str], Sequence[SiteReply]]


def initial_params(cfg: Config) -> tuple[dict, dict]:
    """``(params, model_state)`` of the run at step 0 (nested dicts of numpy arrays), built exactly as a site,
    ``medjax pretrain`` or ``medjax finetune`` builds them (same seed, same jitted init, same base encoder)."""
    import jax

    from medjax.federated.local import config_key, site_config
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.state import train_state_spec

    scfg = site_config(cfg, cfg.data.dir)
    key = config_key(scfg)
    if key not in _INITIAL:
        if scfg.federated.task == "finetune":  # the task model with the base encoder loaded, as every site has it
            from medjax.federated.local_finetune import task_params

            _, params, model_state = task_params(scfg)
            _INITIAL[key] = jax.device_get((params, model_state))
        else:
            tx = make_optimizer(scfg.train, schedule=make_schedule(scfg.train))
            _INITIAL[key] = (jax.device_get(train_state_spec(scfg, tx=tx).init().params), {})
    return jax.tree.map(np.copy, _INITIAL[key])


_INITIAL: dict[str, dict] = {}  # initial parameters by config (a restarted server in the same process reuses them)


class FederatedServer:
    """Global model, server optimizer, checkpoints and logs of a federated run in ``workdir``.

    ``restart=True`` deletes an earlier run's checkpoints and logs; otherwise the latest checkpoint is resumed.
    """

    def __init__(self, cfg: Config, workdir, *, restart: bool = False, log: Callable[[str], None] = print):
        from medjax.config.overrides import to_json
        from medjax.federated.aggregate import ServerOptimizer, check_strategy
        from medjax.federated.arrays import flatten, travelling_names
        from medjax.training.checkpoint import Checkpointer
        from medjax.training.setup import prepare_workdir

        fed = cfg.federated
        check_strategy(fed.strategy)
        if fed.min_sites < 1:
            raise ConfigError(f"federated.min_sites={fed.min_sites}: must be at least 1")
        if not 0 < fed.fraction <= 1:
            raise ConfigError(f"federated.fraction={fed.fraction}: must be in (0, 1]")
        self.cfg, self.log = cfg, log
        self.config_json = to_json(cfg)
        self.workdir = prepare_workdir(cfg, workdir, restart=restart, extra_files=("privacy.json", "eval.json"))
        self.tree, self.model_state = initial_params(cfg)
        self.named = flatten(self.tree)
        self.shared_names = travelling_names(cfg, self.tree)
        if not self.shared_names:
            raise ConfigError(f"federated.local_keys={fed.local_keys} keep every parameter local: nothing to federate")
        self.peft = None  # federated PEFT fine-tuning: checkpoints hold the trainable parameters over the base
        if fed.task == "finetune":
            from medjax.peft.checkpoint import base_reference, is_peft_run

            if is_peft_run(cfg):
                self.peft = base_reference(cfg, self.tree)
        self.opt = ServerOptimizer(fed, self.shared())
        self.ckpt = Checkpointer(self.workdir, keep=cfg.checkpoint.keep)
        self.round = 0
        self.accountant = None
        if fed.dp_clip > 0:
            from medjax.federated.privacy import PrivacyAccountant

            self.accountant = PrivacyAccountant(fed.dp_noise, 1.0, fed.dp_delta)
        latest = self.ckpt.latest_step()
        if latest is not None:
            self._resume(latest)

    # -- state -------------------------------------------------------------------------------------------------
    def shared(self) -> dict[str, np.ndarray]:
        """The global parameters that travel, by name."""
        return {k: self.named[k] for k in self.shared_names}

    def params(self) -> dict:
        """The global model as a nested dict (the checkpointed form)."""
        from medjax.federated.arrays import unflatten

        return unflatten(self.named, self.tree)

    def _resume(self, latest: int) -> None:
        from medjax.federated.arrays import flatten
        from medjax.training.logging import truncate_metrics

        state, _, meta = self.ckpt.restore_unsharded(latest)
        saved = flatten(state["params"])
        if set(saved) != set(flatten(self._saved_params())):
            raise ConfigError(f"the checkpoint of round {latest} in {self.ckpt.directory} holds other parameters than "
                              "this config's model; resume with the config it was written with or use --restart")
        if self.peft is not None:
            from medjax.peft.checkpoint import check_base

            check_base((meta or {}).get("peft"), self.peft, self.ckpt.directory / str(latest))
        self.named.update({k: saved[k].astype(self.named[k].dtype) for k in saved})
        self.opt.load_state(flatten(state.get("server_opt", {})))
        self.round = int(latest)
        if self.accountant is not None:
            self.accountant.step(self.round)
        truncate_metrics(self.workdir / "metrics.jsonl", self.round, key="round")
        self.log(f"resumed from {self.ckpt.directory / str(latest)} (round {latest})")

    def _saved_params(self) -> dict:
        """What a checkpoint holds: the whole model, or (PEFT fine-tuning) the trainable parameters only."""
        if self.peft is None:
            return self.params()
        from medjax.peft.checkpoint import trainable_only

        return trainable_only(self.cfg, self.params())

    def _save(self) -> None:
        import jax

        # the same layout as a `medjax pretrain` / `medjax finetune` run: --init-from, `medjax predict` and
        # `medjax checkpoint info` read it as they read those
        state = {"params": self._saved_params()}
        if jax.tree.leaves(self.model_state):
            state["model_state"] = self.model_state
        if self.opt.state:
            state["server_opt"] = self.opt.state
        meta = {"round": self.round, "step": self.round, "config": json.loads(self.config_json),
                "task": self.cfg.task, "federated": True}
        if self.peft is not None:
            meta["peft"] = self.peft
        self.ckpt.save(self.round, state, meta=meta, force=True)
        self.ckpt.wait()

    # -- rounds ------------------------------------------------------------------------------------------------
    def run(self, exchange: Exchange) -> dict:
        """Run rounds ``round + 1 ... federated.rounds`` over ``exchange``; returns the summary."""
        from medjax.federated.aggregate import weighted_mean
        from medjax.federated.arrays import nbytes

        fed = self.cfg.federated
        t_start = time.time()
        with _Writer(self.workdir) as writer:
            while self.round < fed.rounds:
                rnd = self.round + 1
                t0 = time.time()
                shared = self.shared()
                replies = sorted(exchange(rnd, shared, self.config_json), key=lambda r: r.site)
                if len(replies) < fed.min_sites:
                    raise RuntimeError(f"round {rnd}: {len(replies)} site(s) answered, federated.min_sites="
                                       f"{fed.min_sites} needed")
                weights = [r.result.num_examples for r in replies]
                mean = weighted_mean([r.result.arrays for r in replies], weights)
                new = self.opt.apply(shared, mean)
                self.named.update(new)
                self.round = rnd
                self._save()
                epsilon = None
                if self.accountant is not None:
                    epsilon = float(self.accountant.step(1).epsilon())
                loss = float(np.average([r.result.loss for r in replies], weights=weights))
                seconds = time.time() - t0
                for r in replies:
                    writer.write({"round": rnd, "site": r.site, "loss": float(r.result.loss),
                                  "num_examples": int(r.result.num_examples), "epsilon": epsilon,
                                  "seconds": float(r.result.seconds), "bytes_sent": int(r.bytes_sent),
                                  "update_norm": float(r.result.update_norm), "steps": int(r.result.steps)})
                writer.write({"round": rnd, "site": "global", "loss": loss, "num_examples": int(sum(weights)),
                              "epsilon": epsilon, "seconds": seconds, "bytes_sent": nbytes(shared) * len(replies),
                              "bytes_received": int(sum(r.bytes_sent for r in replies)),
                              "sites": [r.site for r in replies], "strategy": fed.strategy})
                if epsilon is not None:
                    self._write_privacy(epsilon)
                eps = f", epsilon {epsilon:.3g}" if epsilon is not None else ""
                self.log(f"round {rnd}/{fed.rounds}: loss {loss:.4f} from {len(replies)} site(s) "
                         f"({', '.join(r.site for r in replies)}){eps}, {seconds:.1f} s")
        evaluation = None
        from medjax.federated.evaluate import wants_evaluation

        if wants_evaluation(self.cfg) and hasattr(exchange, "evaluate"):
            evaluation = self._evaluate(exchange)
        from medjax.training.digest import params_digest

        summary = {"workdir": str(self.workdir), "rounds": self.round, "strategy": fed.strategy,
                   "checkpoint": str(self.ckpt.directory / str(self.round)), "metrics": str(self.workdir / "metrics.jsonl"),
                   "seconds": time.time() - t_start, "params_digest": params_digest(self.params()),
                   "epsilon": float(self.accountant.epsilon()) if self.accountant is not None else None,
                   "delta": fed.dp_delta if self.accountant is not None else None,
                   "eval": evaluation}
        (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _evaluate(self, exchange) -> dict:
        """Every site scores the final global model on its own held-out records (``eval.json``): per site and
        the mean over sites weighted by their held-out counts. Done once; a resumed server keeps the file."""
        path = self.workdir / "eval.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("round") == self.round:
                return saved
        replies = sorted(exchange.evaluate(self.shared(), self.config_json), key=lambda r: r[0])
        sites = {site: metrics for site, metrics in replies}
        scored = [m for m in sites.values() if m.get("num_val", 0) > 0]
        keys = sorted(set.intersection(*(set(m) for m in scored)) - {"num_val"}) if scored else []
        total = int(sum(m["num_val"] for m in scored))
        mean = {k: float(np.average([m[k] for m in scored], weights=[m["num_val"] for m in scored])) for k in keys}
        out = {"round": self.round, "task": self.cfg.task, "num_val": total, "mean": mean, "sites": sites}
        path.write_text(json.dumps(out, indent=2) + "\n")
        shown = ", ".join(f"{k} {v:.4f}" for k, v in mean.items())
        self.log(f"global model on {total} held-out record(s) at {len(scored)} site(s): {shown or 'no metrics'}")
        return out

    def _write_privacy(self, epsilon: float) -> None:
        fed = self.cfg.federated
        out = {"epsilon": epsilon, "delta": fed.dp_delta, "rounds": self.round, "clip_norm": fed.dp_clip,
               "noise_multiplier": fed.dp_noise, "round_epsilon": float(self.accountant.round_epsilon()),
               "adjacency": "a whole site's data added or removed (site-level), towards the coordinator too"}
        (self.workdir / "privacy.json").write_text(json.dumps(out, indent=2) + "\n")

    def close(self) -> None:
        self.ckpt.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Writer:
    """Appends metrics.jsonl records and mirrors the losses and epsilon to TensorBoard (WORKDIR/tb)."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = None
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(Path(workdir) / "tb"))
        except ImportError:  # pragma: no cover - tensorboardX is a core dependency
            pass

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            self.tb.add_scalar(f"loss/{record['site']}", record["loss"], record["round"])
            if record["site"] == "global" and record.get("epsilon") is not None:
                self.tb.add_scalar("privacy/epsilon", record["epsilon"], record["round"])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.tb is not None:
            self.tb.close()
