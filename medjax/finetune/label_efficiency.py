"""Label efficiency (``medjax experiment label-efficiency``): pretrained-then-fine-tuned vs from scratch over a grid
of labeled-volume counts and seeds, as a table (markdown + JSON, rewritten after every run) and a PNG plot.

Why a command of its own rather than more options on ``finetune-compare``: that command answers one question
(two arms at one label count) and writes once at the end; a grid of tens of runs needs to be resumable and
readable while it runs. Every run is the plain fine-tuning run (:func:`medjax.finetune.loop.finetune`) of the
config with ``finetune.num_labeled=N`` (the first N training records, the same N in both arms) and
``train.seed=S``; both arms share records, held-out volumes, steps, schedule and seed, and differ only in the
encoder's initial weights. The statistics (:func:`medjax.finetune.compare._mean_std`) and headline metric per task
(:data:`medjax.finetune.compare.HEADLINE`) are those of ``finetune-compare``.

WORKDIR layout::

    label_efficiency.json   {"config", "task", "metric", "steps", "labels", "seeds", "init_from", "rows": [...],
                             "summary": [...]} (rows: one per finished run; summary: one per label count)
    label_efficiency.md     the summary table (markdown), then one line per run
    label_efficiency.png    metric against labeled volumes (log2 axis), mean ± std band per arm
    n<N>/<arm>/seed<S>/     each fine-tuning run (eval.json, metrics.jsonl, checkpoints, ...)

A run whose ``summary.json`` shows it finished (``train.steps`` reached, held-out metrics present) is read back
instead of run again, so the same command resumes an interrupted grid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from medjax.errors import ConfigError

ARMS = ("pretrained", "scratch")
SIGNIFICANT_STD = 2.0  # "pretraining helps" at a label count: delta > this many pooled std over seeds


def _finished(run_dir: Path, steps: int) -> dict | None:
    p = run_dir / "summary.json"
    if not p.is_file():
        return None
    s = json.loads(p.read_text())
    return s if s.get("step") == steps and s.get("eval") and not s.get("signal") else None


def summarise(rows: list[dict], labels, metric: str) -> list[dict]:
    """One entry per label count: per arm the values over seeds, ``mean`` and ``std``; ``delta`` (pretrained
    minus scratch means), ``delta_std`` (delta over the pooled std sqrt((s_p^2 + s_s^2) / 2); None when both
    stds are 0) and ``helps`` (delta > :data:`SIGNIFICANT_STD` pooled std, with at least 2 seeds per arm)."""
    from medjax.finetune.compare import _mean_std

    out = []
    for n in labels:
        e = {"labeled": int(n)}
        for arm in ARMS:
            vals = [r["value"] for r in rows if r["labeled"] == n and r["arm"] == arm]
            mean, std = _mean_std(vals)
            e[arm] = {"values": vals, "mean": mean, "std": std, "seeds": len(vals)}
        p, s = e["pretrained"], e["scratch"]
        e["delta"] = (p["mean"] - s["mean"]) if p["mean"] is not None and s["mean"] is not None else None
        pooled = math.sqrt(((p["std"] or 0) ** 2 + (s["std"] or 0) ** 2) / 2) if e["delta"] is not None else 0
        e["delta_std"] = e["delta"] / pooled if e["delta"] is not None and pooled > 0 else None
        e["helps"] = bool(e["delta_std"] is not None and e["delta_std"] > SIGNIFICANT_STD
                          and min(p["seeds"], s["seeds"]) >= 2)
        out.append(e)
    return out


def format_table(result: dict) -> str:
    """Markdown: the summary table, then one line per run."""
    def ms(a):
        return "n/a" if a["mean"] is None else f"{a['mean']:.3f} ± {a['std']:.3f} (n={a['seeds']})"

    lines = [f"# Label efficiency: {result['config']} ({result['task']}), held-out {result['metric']}",
             "", f"{result['steps']} fine-tuning steps per run; seeds {result['seeds']}; pretrained encoder from "
             f"`{result['init_from']}`; {result.get('num_val', '?')} held-out volumes.", "",
             "| labeled volumes | pretrained | scratch | delta | delta / pooled std | pretraining helps (> 2 std) |",
             "|---|---|---|---|---|---|"]
    for e in result["summary"]:
        d = "n/a" if e["delta"] is None else f"{e['delta']:+.3f}"
        z = "n/a" if e["delta_std"] is None else f"{e['delta_std']:+.1f}"
        lines.append(f"| {e['labeled']} | {ms(e['pretrained'])} | {ms(e['scratch'])} | {d} | {z} | "
                     f"{'yes' if e['helps'] else 'no'} |")
    lines += ["", "| labeled | arm | seed | value | first → final loss | seconds |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        v = "n/a" if r["value"] is None else f"{r['value']:.4f}"
        fl = (f"{r['first_loss']:.3f} → {r['final_loss']:.3f}" if r.get("first_loss") is not None
              and r.get("final_loss") is not None else "")
        lines.append(f"| {r['labeled']} | {r['arm']} | {r['seed']} | {v} | {fl} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> Path:
    """PNG of the metric against labeled volumes (log2 axis), one line per arm: the mean over seeds with a ± sample
    std band and error bar (visible with a single label count too), and every run's value as a small dot (a bimodal
    arm shows as such); a matplotlib ``Figure`` drawn by Agg (pyplot's backend untouched)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    for arm, color in zip(ARMS, ("tab:blue", "tab:orange")):
        pts = [(e["labeled"], e[arm]["mean"], e[arm]["std"] or 0.0) for e in result["summary"]
               if e[arm]["mean"] is not None]
        if not pts:
            continue
        shift = 1.03 if arm == ARMS[1] else 1 / 1.03  # the arms side by side, so that equal values stay visible
        x, y, s = (list(v) for v in zip(*pts))
        x = [n * shift for n in x]
        ax.errorbar(x, y, yerr=s, fmt="o-", color=color, capsize=5, label=f"{arm}")
        ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], color=color, alpha=0.2)
        runs = [(r["labeled"], r["value"]) for r in result["rows"] if r["arm"] == arm and r["value"] is not None]
        if runs:
            ax.plot([n * shift ** 2 for n, _ in runs], [v for _, v in runs], ".", color=color, alpha=0.6,
                    markersize=6)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(result["labels"]), [str(n) for n in result["labels"]])
    ax.set_xlim(min(result["labels"]) / 1.4, max(result["labels"]) * 1.4)
    ax.set_xlabel("labeled training volumes")
    ax.set_ylabel(f"held-out {result['metric']} (mean ± std; dots: runs)")
    ax.set_title(f"{result['config']}: {result['steps']} steps, seeds {result['seeds']}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _write(result: dict, workdir: Path) -> None:
    result["summary"] = summarise(result["rows"], result["labels"], result["metric"])
    (workdir / "label_efficiency.json").write_text(json.dumps(result, indent=1) + "\n")
    (workdir / "label_efficiency.md").write_text(format_table(result))
    if any(e[a]["mean"] is not None for e in result["summary"] for a in ARMS):
        plot(result, workdir / "label_efficiency.png")


def label_efficiency(cfg, workdir, *, init_from: str, labels=(1, 2, 4, 8, 16), seeds=(0, 1, 2),
                     metric: str | None = None, progress: bool = False) -> dict:
    """Run the grid labels x seeds x {pretrained, scratch} (see module doc) and return the result dict written to
    ``WORKDIR/label_efficiency.json``. A run stopped by SIGTERM/SIGINT ends the grid: the result then holds
    ``stopped`` (labeled, arm, seed, signal) and the rows so far."""
    from medjax.finetune.compare import HEADLINE
    from medjax.finetune.loop import finetune, split_records

    labels = tuple(sorted({int(n) for n in labels}))
    if not labels or labels[0] < 1:
        raise ConfigError(f"--labels {list(labels)}: give positive numbers of labeled volumes, e.g. 1,2,4,8")
    if not init_from:
        raise ConfigError("--checkpoint: give the pretraining run whose encoder the pretrained arm starts from")
    key = metric or HEADLINE[cfg.task]
    pool, _ = split_records(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, num_labeled=0)))
    if labels[-1] > len(pool):
        raise ConfigError(f"--labels {labels[-1]}: only {len(pool)} training records are left after holding out "
                          f"finetune.val_records={cfg.finetune.val_records}; lower the label counts or add data")
    workdir = Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {"config": cfg.name, "task": cfg.task, "metric": key, "steps": cfg.train.steps,
                    "batch_size": cfg.train.batch_size, "labels": list(labels), "seeds": [int(s) for s in seeds],
                    "init_from": str(init_from), "rows": []}
    for n in labels:
        for seed in seeds:
            run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=int(seed)),
                                          finetune=dataclasses.replace(cfg.finetune, num_labeled=int(n)))
            for arm in ARMS:
                run_dir = workdir / f"n{n}" / arm / f"seed{seed}"
                t0 = time.time()
                s = _finished(run_dir, cfg.train.steps)
                reused = s is not None
                if s is None:
                    s = finetune(run_cfg, run_dir, init_from=str(init_from) if arm == "pretrained" else "",
                                 restart=True, progress=progress)
                if s.get("signal"):
                    result["stopped"] = {"labeled": n, "arm": arm, "seed": seed, "signal": s["signal"],
                                         "exit_code": s["exit_code"]}
                    _write(result, workdir)
                    return result
                ev = {k: v for k, v in (s.get("eval") or {}).items() if k != "cases"}
                if ev and key not in ev:
                    raise ConfigError(f"metric {key!r} is not among the held-out metrics of {cfg.task} "
                                      f"({', '.join(sorted(ev))}); pick one of those with --metric")
                result["num_val"] = s["num_val_records"]
                result["rows"].append({"labeled": n, "arm": arm, "seed": int(seed), "value": ev.get(key),
                                       "first_loss": s.get("first_loss"), "final_loss": s.get("final_loss"),
                                       "seconds": round(s.get("seconds") if reused else time.time() - t0, 1),
                                       "reused": reused, "workdir": str(run_dir)})
                _write(result, workdir)
    return result
