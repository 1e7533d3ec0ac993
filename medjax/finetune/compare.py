"""Pretrained-then-fine-tuned vs from-scratch: the same config, data subset, seeds and steps, two arms."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

HEADLINE = {"segmentation": "mean_dice", "classification": "auroc", "detection": "ap_iou0.1"}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def compare(cfg, workdir, *, init_from: str, seeds: tuple[int, ...] | None = None, progress: bool = False,
            metric: str | None = None) -> dict:
    """Fine-tune ``cfg`` from the MAE encoder of ``init_from`` and from scratch, once per seed.

    Runs go to ``WORKDIR/pretrained/seed<S>`` and ``WORKDIR/scratch/seed<S>``; both arms of a seed share the
    training records (the first ``finetune.num_labeled``), the held-out records, the step count and the seed
    (head initialisation, data order, augmentation); the scratch arm's encoder is freshly initialised.

    Args:
      cfg: fine-tuning config (task classification, segmentation or detection).
      workdir: output directory.
      init_from: MAE pretraining workdir or checkpoint folder.
      seeds: ``train.seed`` values (default: the config's seed only).
      progress: show progress bars.
      metric: the held-out metric compared (a key of ``eval.json``, e.g. ``window_auroc``); default mean Dice,
        AUROC or AP at IoU 0.1 by task. Every run's full metrics are kept either way.

    Returns the dict written to ``WORKDIR/compare.json``: ``metric`` (the key compared),
    ``num_labeled`` / ``num_val`` (records trained on / held out), ``steps``, ``seeds``; per arm
    (``pretrained``, ``scratch``) the metric per seed, its ``mean`` and ``std`` (sample std over seeds), and per
    run the held-out metrics (without per-case lists), final loss and seconds; ``delta`` (mean pretrained minus
    mean scratch) and ``delta_per_seed``. A run stopped by SIGTERM/SIGINT ends the comparison early: the result
    then holds ``stopped`` (arm, seed, signal, exit code) and no means.
    """
    from medjax.finetune.loop import finetune

    seeds = tuple(int(s) for s in (seeds if seeds else (cfg.train.seed,)))
    key = metric or HEADLINE[cfg.task]
    workdir = Path(workdir).expanduser().absolute()
    out: dict = {"config": cfg.name, "task": cfg.task, "metric": key, "steps": cfg.train.steps,
                 "batch_size": cfg.train.batch_size, "mode": cfg.finetune.mode, "seeds": list(seeds),
                 "init_from": str(init_from)}
    arms = {"pretrained": str(init_from), "scratch": ""}
    for name in arms:
        out[name] = {"per_seed": [], "runs": []}
    for seed in seeds:
        run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        for name, src in arms.items():
            t0 = time.time()
            s = finetune(run_cfg, workdir / name / f"seed{seed}", init_from=src, restart=True, progress=progress)
            if s.get("signal"):  # SIGTERM/SIGINT: the run saved its state and stopped; so does the comparison
                out["stopped"] = {"arm": name, "seed": seed, "signal": s["signal"], "exit_code": s["exit_code"]}
                (workdir / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
                return out
            ev = {k: v for k, v in (s.get("eval") or {}).items() if k != "cases"}
            if ev and key not in ev:
                from medjax.errors import ConfigError

                raise ConfigError(f"metric {key!r} is not among the held-out metrics of {cfg.task} "
                                  f"({', '.join(sorted(ev))}); pick one of those")
            out["num_labeled"], out["num_val"] = s["num_train_records"], s["num_val_records"]
            out[name]["per_seed"].append(ev.get(key))
            out[name]["runs"].append({"seed": seed, "metric": ev.get(key), "eval": ev,
                                      "first_loss": s.get("first_loss"), "final_loss": s.get("final_loss"),
                                      "seconds": round(time.time() - t0, 1), "workdir": s["workdir"]})
    for name in arms:
        out[name]["mean"], out[name]["std"] = _mean_std(out[name]["per_seed"])
    a, b = out["pretrained"]["mean"], out["scratch"]["mean"]
    out["delta"] = (a - b) if a is not None and b is not None else None
    out["delta_per_seed"] = [(p - q) if p is not None and q is not None else None
                             for p, q in zip(out["pretrained"]["per_seed"], out["scratch"]["per_seed"])]
    (workdir / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def format_compare(result: dict) -> str:
    """Markdown table row block of a :func:`compare` result (one line per arm, then the delta)."""
    def cell(arm):
        r = result[arm]
        seeds = ", ".join("n/a" if v is None else f"{v:.3f}" for v in r["per_seed"])
        mean = "n/a" if r["mean"] is None else f"{r['mean']:.3f} ± {r['std']:.3f}"
        return f"| {result['config']} | {arm} | {result['num_labeled']} | {result['steps']} | {mean} | {seeds} |"

    delta = "n/a" if result["delta"] is None else f"{result['delta']:+.3f}"
    return "\n".join([f"{result['metric']} (held-out {result['num_val']} volumes, seeds {result['seeds']})",
                      "| config | arm | labeled | steps | mean ± std | per seed |",
                      "|---|---|---|---|---|---|", cell("pretrained"), cell("scratch"),
                      f"delta (pretrained - scratch): {delta}"])
