"""Fine-tuning methods side by side: the same config, base, data, seeds and steps, one run per method and seed.

Per method: the held-out metric (mean ± sample std over seeds), trainable parameters (count and % of the
model), checkpoint bytes on disk (the last checkpoint of the first seed), optimizer-state bytes (what the
checkpoint's ``opt_state`` holds: Adam moments of the trainable parameters only) and seconds per step (median
over the logged steps after the first, from ``samples_per_s``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path

from medjax.errors import ConfigError
from medjax.peft.methods import METHODS


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


def compare_methods(cfg, workdir, *, init_from: str, methods, seeds=None, metric: str | None = None,
                    progress: bool = False) -> dict:
    """Run ``cfg`` once per method and seed in ``WORKDIR/<method>/seed<S>`` from the encoder of ``init_from``.

    Returns (and writes ``WORKDIR/compare_methods.json``): ``metric``, ``seeds``, ``steps`` and per method
    ``per_seed``, ``mean``, ``std``, ``trainable_params``, ``total_params``, ``trainable_percent``,
    ``checkpoint_bytes``, ``optimizer_bytes``, ``seconds_per_step``.
    """
    from medjax.finetune.compare import HEADLINE, _mean_std
    from medjax.finetune.loop import finetune
    from medjax.training.digest import count_params

    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods {','.join(methods)}: choose from {','.join(METHODS)}")
    seeds = tuple(int(s) for s in (seeds if seeds else (cfg.train.seed,)))
    key = metric or HEADLINE[cfg.task]
    workdir = Path(workdir).expanduser().absolute()
    out: dict = {"config": cfg.name, "task": cfg.task, "metric": key, "steps": cfg.train.steps,
                 "seeds": list(seeds), "init_from": str(init_from), "methods": {}}
    for method in methods:
        ft = dataclasses.replace(cfg.finetune, method=method, mode="full")
        row: dict = {"per_seed": []}
        for seed in seeds:
            run_cfg = dataclasses.replace(cfg, finetune=ft, train=dataclasses.replace(cfg.train, seed=seed))
            run_dir = workdir / method / f"seed{seed}"
            s = finetune(run_cfg, run_dir, init_from=init_from, restart=True, progress=progress)
            if s.get("signal"):
                out["stopped"] = {"method": method, "seed": seed, "signal": s["signal"]}
                (workdir / "compare_methods.json").write_text(json.dumps(out, indent=1) + "\n")
                return out
            ev = s.get("eval") or {}
            if ev and key not in ev:
                raise ConfigError(f"metric {key!r} is not among the held-out metrics of {cfg.task} "
                                  f"({', '.join(sorted(k for k in ev if k != 'cases'))})")
            row["per_seed"].append(ev.get(key))
            if seed == seeds[0]:
                from medjax.finetune.predict_io import load_finetuned

                _, _, params, _, _ = load_finetuned(run_dir)
                from medjax.peft.methods import select, trainable_mask

                row["total_params"] = count_params(params)
                row["trainable_params"] = count_params(select(params, trainable_mask(method, params), True))
                row["trainable_percent"] = 100.0 * row["trainable_params"] / row["total_params"]
                row.update(_run_numbers(run_dir, cfg.train.batch_size))
        row["mean"], row["std"] = _mean_std(row["per_seed"])
        out["methods"][method] = row
    (workdir / "compare_methods.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def format_methods(result: dict) -> str:
    """Markdown table of a :func:`compare_methods` result, one row per method."""
    head = (f"{result['metric']} over seeds {result['seeds']} ({result['steps']} steps, {result['config']})\n"
            "| method | mean ± std | trainable params (%) | checkpoint | optimizer state | s/step |\n"
            "|---|---|---|---|---|---|")
    rows = []
    for m, r in result["methods"].items():
        mean = "n/a" if r["mean"] is None else f"{r['mean']:.3f} ± {r['std']:.3f}"
        sps = "n/a" if r.get("seconds_per_step") is None else f"{r['seconds_per_step']:.3f}"
        rows.append(f"| {m} | {mean} | {r['trainable_params']:,} ({r['trainable_percent']:.2f}%) | "
                    f"{r['checkpoint_bytes'] / 1024:.0f} KiB | {r['optimizer_bytes'] / 1024:.0f} KiB | {sps} |")
    return "\n".join([head, *rows])
