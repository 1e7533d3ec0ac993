"""Fine-tuning methods side by side: the same config, base, data, seeds and steps, one run per method and seed.

Per method: the held-out metric (mean ± sample std over the seeds run), trainable parameters (count and % of the
model, and of the encoder's base parameters), checkpoint bytes on disk (the last checkpoint of the first seed),
optimizer-state bytes (what the checkpoint's ``opt_state`` holds: Adam moments of the trainable parameters only),
the compiled train step's memory (XLA's memory analysis: arguments + outputs + temporaries - donated, bytes per
device) and seconds per step (median over the logged steps after the first, from ``samples_per_s``).

Runs go seed by seed (every method for the first seed, then the next seed), and ``compare_methods.json``,
``compare_methods.md`` and ``compare_methods.png`` (:mod:`medjax.peft.plot`) are rewritten after every run, so a
comparison that stops part-way keeps every finished run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from medjax.errors import ConfigError
from medjax.peft.methods import METHODS

FILES = ("compare_methods.json", "compare_methods.md", "compare_methods.png")


def _run_numbers(workdir: Path, batch_size: int) -> dict:
    from medjax.training.checkpoint import Checkpointer

    ck = Checkpointer(workdir, read_only=True)
    step = ck.latest_step()
    shapes = ck.saved_shapes(step)
    opt = sum(math.prod(s) for k, s in shapes.items() if k.startswith("opt_state") and len(s))  # no counters
    rates = []
    lines = (workdir / "metrics.jsonl").read_text().splitlines() if (workdir / "metrics.jsonl").is_file() else []
    for line in lines[1:]:
        sps = json.loads(line).get("samples_per_s")
        if sps:
            rates.append(batch_size / float(sps))
    return {"checkpoint_bytes": ck.step_bytes(step), "optimizer_bytes": 4 * int(opt),
            "seconds_per_step": statistics.median(rates) if rates else None}


def parameter_counts(cfg) -> dict:
    """Parameter counts of ``cfg``'s task model under ``finetune.method``, from abstract shapes (nothing built):
    ``total_params`` (every parameter, added PEFT ones included), ``trainable_params``, ``trainable_percent``,
    ``encoder_params`` (the encoder's base parameters: what a pretrained checkpoint holds),
    ``encoder_trainable_params`` (trainable parameters inside the encoder, added ones included) and
    ``encoder_trainable_percent`` (of ``encoder_params``)."""
    import jax

    from medjax.finetune.tasks import build_task_model
    from medjax.peft.methods import _names, is_added, resolve_method, select, trainable_mask
    from medjax.training.digest import count_params
    from medjax.training.state import split_model

    params = jax.eval_shape(lambda: split_model(build_task_model(cfg))[1])
    mask = trainable_mask(resolve_method(cfg.finetune), params)
    in_encoder = jax.tree_util.tree_map_with_path(lambda p, _: _names(p)[:1] == ("encoder",), params)
    base_encoder = jax.tree_util.tree_map_with_path(lambda p, e: bool(e) and not is_added(p), in_encoder)
    enc_train = jax.tree.map(lambda e, t: bool(e) and bool(t), in_encoder, mask)
    out = {"total_params": count_params(params), "trainable_params": count_params(select(params, mask, True)),
           "encoder_params": count_params(select(params, base_encoder, True)),
           "encoder_trainable_params": count_params(select(params, enc_train, True))}
    out["trainable_percent"] = 100.0 * out["trainable_params"] / out["total_params"]
    out["encoder_trainable_percent"] = (100.0 * out["encoder_trainable_params"] / out["encoder_params"]
                                        if out["encoder_params"] else 0.0)
    return out


def _write(workdir: Path, out: dict) -> None:
    """``compare_methods.json``, ``.md`` and ``.png`` of the runs finished so far."""
    from medjax.finetune.compare import _mean_std
    from medjax.peft.plot import plot_methods

    for row in out["methods"].values():
        row["mean"], row["std"] = _mean_std(row["per_seed"])
    (workdir / FILES[0]).write_text(json.dumps(out, indent=1) + "\n")
    (workdir / FILES[1]).write_text(format_methods(out) + "\n")
    if any(r["mean"] is not None for r in out["methods"].values()):
        plot_methods(out, workdir / FILES[2])


def compare_methods(cfg, workdir, *, init_from: str, methods, seeds=None, metric: str | None = None,
                    progress: bool = False) -> dict:
    """Run ``cfg`` once per method and seed in ``WORKDIR/<method>/seed<S>`` from the encoder of ``init_from``.

    Returns (and writes ``WORKDIR/compare_methods.json``, a Markdown table ``compare_methods.md`` and the plot
    ``compare_methods.png``, all three after every run): ``metric``, ``seeds``, ``steps`` and per method
    ``per_seed`` (metric of each finished seed, in order), ``mean``, ``std``, the counts of
    :func:`parameter_counts`, ``checkpoint_bytes``, ``optimizer_bytes``, ``seconds_per_step``, ``step_memory``
    (argument/output/temp/alias/total bytes) and ``step_memory_bytes`` (its total), the cost columns from the
    first seed's run. A run stopped by SIGTERM/SIGINT ends the comparison: the result then holds ``stopped``.
    """
    from medjax.finetune.compare import HEADLINE
    from medjax.finetune.loop import finetune

    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods {','.join(methods)}: choose from {','.join(METHODS)}")
    seeds = tuple(int(s) for s in (seeds if seeds else (cfg.train.seed,)))
    key = metric or HEADLINE[cfg.task]
    workdir = Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    out: dict = {"config": cfg.name, "task": cfg.task, "metric": key, "steps": cfg.train.steps,
                 "batch_size": cfg.train.batch_size, "seeds": list(seeds), "init_from": str(init_from),
                 "methods": {m: {"per_seed": [], "seconds": []} for m in methods}}
    for seed in seeds:
        for method in methods:
            ft = dataclasses.replace(cfg.finetune, method=method, mode="full")
            run_cfg = dataclasses.replace(cfg, finetune=ft, train=dataclasses.replace(cfg.train, seed=seed))
            run_dir = workdir / method / f"seed{seed}"
            s = finetune(run_cfg, run_dir, init_from=init_from, restart=True, progress=progress,
                         measure_memory=seed == seeds[0])
            if s.get("signal"):
                out["stopped"] = {"method": method, "seed": seed, "signal": s["signal"]}
                _write(workdir, out)
                return out
            ev = s.get("eval") or {}
            if ev and key not in ev:
                raise ConfigError(f"metric {key!r} is not among the held-out metrics of {cfg.task} "
                                  f"({', '.join(sorted(k for k in ev if k != 'cases'))})")
            row = out["methods"][method]
            row["per_seed"].append(ev.get(key))
            row["seconds"].append(round(float(s["seconds"]), 1))
            if seed == seeds[0]:
                row.update(parameter_counts(run_cfg))
                row.update(_run_numbers(run_dir, cfg.train.batch_size))
                row["step_memory"] = s.get("step_memory")
                row["step_memory_bytes"] = (s.get("step_memory") or {}).get("total")
            _write(workdir, out)
    return out


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.1f} MiB"


def format_methods(result: dict) -> str:
    """Markdown table of a :func:`compare_methods` result, one row per method that has run; checkpoint and
    step memory also as % of ``full`` when ``full`` is among the methods."""
    from medjax.finetune.compare import _mean_std

    full = result["methods"].get("full") or {}
    seeds = result["seeds"]
    head = (f"{result['metric']} on held-out volumes over seeds {seeds} ({result['steps']} steps, "
            f"{result['config']})\n"
            "| method | mean ± std (seeds) | trainable params (% of model) | of the encoder (% of its base) | "
            "checkpoint (% of full) | optimizer state | step memory, XLA args + outputs + temps − donated "
            "(% of full) | s/step |\n|---|---|---|---|---|---|---|---|")

    def pct(r, k):
        return f" ({100.0 * r[k] / full[k]:.1f}%)" if full.get(k) and r.get(k) is not None else ""

    rows = []
    for m, r in result["methods"].items():
        if "trainable_params" not in r:
            continue  # not run yet
        mean, std = _mean_std(r["per_seed"])
        n = sum(v is not None for v in r["per_seed"])
        cell = "n/a" if mean is None else f"{mean:.3f} ± {std:.3f} ({n})"
        sps = "n/a" if r.get("seconds_per_step") is None else f"{r['seconds_per_step']:.2f}"
        enc = ("n/a" if r.get("encoder_trainable_params") is None else
               f"{r['encoder_trainable_params']:,} ({r['encoder_trainable_percent']:.2f}%)")
        rows.append(f"| {m} | {cell} | {r['trainable_params']:,} ({r['trainable_percent']:.2f}%) | {enc} | "
                    f"{_mib(r['checkpoint_bytes'])}{pct(r, 'checkpoint_bytes')} | {_mib(r['optimizer_bytes'])} | "
                    f"{_mib(r.get('step_memory_bytes'))}{pct(r, 'step_memory_bytes')} | {sps} |")
    return "\n".join([head, *rows])
