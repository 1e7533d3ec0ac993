"""Federated training against pooled and single-site training, on held-out volumes of every demo site.

Both federated tasks: MAE pretraining (``--config demo``: each site holds out its last ``--val-per-site``
volumes with ``data.holdout_last``; metric: the MAE loss on fixed crops and masks of them, ``val_loss``, lower
is better) and fine-tuning (``--config demo_seg``, ``demo_cls``, ``demo_cls2d``...: each site holds out its last
``--val-per-site`` records with ``finetune.val_records``; metric: ``mean_dice`` / ``window_auroc`` / ...).

Sites: the demo set split ``by-site`` (:func:`medjax.data.demo_sites.split_demo_sites`: scanners, spacing,
orientation and case mix differ). No arm trains on the held-out volumes. Arms, all from the same preset (and for
fine-tuning the same MAE, ``--init-from``) and ``ROUNDS x LOCAL_STEPS`` optimizer steps per model (so a
federated run spends ``sites`` times the pooled run's compute, as in a real consortium):

- ``centralised``: one run on the pooled training volumes of all sites (what federated training tries to match);
- ``centralised_samples``: the same with a batch ``sites`` times larger, so it sees as many samples as the
  federation does (every site trains every step of every round);
- ``site-K alone``: one run on site K's training volumes only;
- ``FedAvg``: the server loop and site rounds of ``medjax federated simulate``, sites in this process;
- ``FedProx``: FedAvg with the proximal term (``--mu``) in every site's step;
- ``personalised``: FedAvg with ``federated.local_keys`` (``--local-keys``) kept at each site;
- ``FedAvg + DP``: FedAvg with update clipping and Gaussian noise (``--dp-clip``, ``--dp-noise``); the
  accountant's epsilon at ``federated.dp_delta`` is printed in the row.

Every arm's final model is scored on every site's held-out volumes with the site's own view of it
(:func:`medjax.federated.evaluate.evaluate_site`; the personalised arm with each site's own local parameters).
Prints and writes a Markdown table of the held-out metric per site and overall (mean ± std over seeds), plus
the bytes each site sends per round, and ``results.jsonl`` (one line per arm and seed) in WORKDIR, so a stopped
run keeps what it finished; finished (arm, seed) pairs are not run again.

    .venv/bin/python benchmarks/federated_compare.py --demo /tmp/peft/demo32 \
        --init-from /tmp/peft/mae --config demo_seg --workdir /tmp/fedft_cmp --seeds 0 1 \
        --out docs/results/federated_finetune_compare.md
    .venv/bin/python benchmarks/federated_compare.py --demo /tmp/peft/demo32 --config demo \
        --workdir /tmp/fedmae_cmp --seeds 0 1 --out docs/results/federated_compare.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ARMS = ("centralised", "centralised_samples", "alone", "fedavg", "fedprox", "personalised", "dp")


def pooled_manifest(sites: list[Path], val_per_site: int, path: Path) -> Path:
    """A JSON manifest of every site's training records (each site's last ``val_per_site`` left out)."""
    from medjax.data.sources import load_records

    out = []
    for k, s in enumerate(sites, 1):
        recs = load_records(s)
        for r in recs[: len(recs) - val_per_site]:
            out.append({key: r[key] for key in ("image", "label", "lesion", "class", "boxes") if key in r}
                       | {"id": f"site-{k}-{r['id']}"})
    path.write_text(json.dumps(out, indent=1) + "\n")
    return path


def demo_sites(demo: str, out: Path, n: int) -> list[Path]:
    """The ``by-site`` split of ``demo`` into ``out/site-1..n`` (seed 0), written once: a later invocation on the
    same WORKDIR (another arm or seed) reuses it when every site's ``site.json`` names the same split."""
    from medjax.data.demo_sites import split_demo_sites

    sites = [out / f"site-{k}" for k in range(1, n + 1)]
    meta = [json.loads((s / "site.json").read_text()) if (s / "site.json").is_file() else {} for s in sites]
    if all(m.get("partition") == "by-site" and m.get("seed") == 0 and m.get("sites") == n for m in meta):
        return sites
    return split_demo_sites(demo, out, n, "by-site", 0)


def score_run(cfg, sites: list[Path], run_dir: Path) -> list[dict]:
    """Each site's held-out metrics for the latest parameters of the single-run (non-federated) ``run_dir``."""
    from medjax.federated.arrays import flatten
    from medjax.federated.evaluate import evaluate_site
    from medjax.training.restore import read_arrays

    arrays = flatten(read_arrays(run_dir)[0]["params"])  # parameters only, no optimizer state read
    return [evaluate_site(cfg, data_dir=str(s), state_dir=run_dir, global_arrays=arrays) for s in sites]


def train_single(cfg, workdir: Path) -> None:
    """One non-federated run of ``cfg`` (pretraining or fine-tuning) from scratch in ``workdir``."""
    if cfg.federated.task == "finetune":
        from medjax.finetune.loop import finetune

        finetune(cfg, workdir, restart=True, progress=False, evaluate=False)
    else:
        from medjax.training.pretraining import pretrain

        pretrain(cfg, workdir, restart=True, progress=False)


def run_arm(arm: str, base, sites: list[Path], wd: Path, args) -> list[dict]:
    """Train one arm (for ``alone``: all sites one after the other) and return its rows."""
    from medjax.config import apply_overrides
    from medjax.federated.inprocess import InProcessSites
    from medjax.federated.server import FederatedServer

    steps = args.rounds * args.local_steps
    wd.mkdir(parents=True, exist_ok=True)
    rows = []
    if arm in ("centralised", "centralised_samples"):
        batch = base.train.batch_size * (len(sites) if arm == "centralised_samples" else 1)
        cfg = apply_overrides(base, [f"data.dir={pooled_manifest(sites, args.val_per_site, wd / 'pooled.json')}",
                                     "finetune.val_records=0", "data.holdout_last=0", f"train.steps={steps}",
                                     f"train.batch_size={batch}"])
        t = time.time()
        train_single(cfg, wd / "run")
        name = ("centralised (pooled data)" if arm == "centralised" else
                f"centralised, batch {batch} (the federation's samples)")
        rows.append((name, score_run(base, sites, wd / "run"), time.time() - t, {}))
    elif arm == "alone":
        for k, s in enumerate(sites, 1):
            cfg = apply_overrides(base, [f"data.dir={s}", f"train.steps={steps}"])
            t = time.time()
            train_single(cfg, wd / f"site-{k}")
            rows.append((f"site-{k} alone", score_run(base, sites, wd / f"site-{k}"), time.time() - t, {}))
    else:
        extra = {"fedavg": [], "fedprox": ["federated.strategy=fedprox", f"federated.proximal_mu={args.mu}"],
                 "personalised": [f"federated.local_keys={args.local_keys}"],
                 "dp": [f"federated.dp_clip={args.dp_clip}", f"federated.dp_noise={args.dp_noise}"]}[arm]
        cfg = apply_overrides(base, [f"data.dir={sites[0]}", *extra])
        t = time.time()
        with FederatedServer(cfg, wd / "server", restart=True, log=lambda s: None) as server:
            summary = server.run(InProcessSites({f"site-{k}": str(s) for k, s in enumerate(sites, 1)}, wd / "sites"))
        seconds = time.time() - t
        recs = [json.loads(x) for x in (wd / "server" / "metrics.jsonl").read_text().splitlines()]
        glob = [r for r in recs if r["site"] == "global"]
        info = {"bytes_per_site_round": int(glob[0]["bytes_received"] / max(1, len(glob[0]["sites"]))),
                "epsilon": summary["epsilon"], "delta": summary["delta"]}
        per_site = summary["eval"]["sites"]
        scores = [per_site[f"site-{k}"] for k in range(1, len(sites) + 1)]
        name = {"fedavg": "FedAvg", "fedprox": f"FedProx (mu {args.mu})",
                "personalised": f"personalised (local: {args.local_keys})",
                "dp": f"FedAvg + DP (clip {args.dp_clip}, noise {args.dp_noise})"}[arm]
        rows.append((name, scores, seconds, info))
    return [{"arm": arm, "name": n, "sites": s, "seconds": sec, **info} for n, s, sec, info in rows]


def table(results: list[dict], metric: str, n_sites: int) -> list[str]:
    """Markdown rows: per site and overall (held-out-weighted mean over sites) as mean ± std over seeds, and the
    overall difference to the centralised run of the same seed (seeds change crops and head initialisation more
    than the arms differ, so the paired difference is the sharper comparison)."""
    names = list(dict.fromkeys(r["name"] for r in results))
    lines = ["| model | " + " | ".join(f"site-{k}" for k in range(1, n_sites + 1)) + " | overall | overall − centralised, "
             "same seed | seeds | s/run | bytes/site/round | epsilon |",
             "| --- |" + " --- |" * (n_sites + 6)]

    def overall(r):  # sites where the metric is undefined (e.g. an AUROC without positives) do not count
        scored = [s for s in r["sites"] if np.isfinite(s.get(metric, np.nan))]
        if not scored:
            return np.nan
        return np.average([s[metric] for s in scored], weights=[s["num_val"] for s in scored])

    central = {r["seed"]: overall(r) for r in results if r["arm"] == "centralised"}

    def fmt(v):
        v = np.asarray(v, dtype=float)
        if not np.isfinite(v).any():
            return "undefined"
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"

    for name in names:
        rs = [r for r in results if r["name"] == name]
        per_site = [[r["sites"][k].get(metric, np.nan) for r in rs] for k in range(n_sites)]
        scores = [overall(r) for r in rs]
        paired = [overall(r) - central[r["seed"]] for r in rs if r["seed"] in central and r["arm"] != "centralised"]
        b = rs[0].get("bytes_per_site_round")
        eps = rs[0].get("epsilon")
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in per_site) + f" | {fmt(scores)} | {fmt(paired) if paired else '-'} | {len(rs)} | "
                     f"{np.mean([r['seconds'] for r in rs]):.0f} | {f'{b:,}' if b else '-'} | "
                     f"{f'{eps:.2f}' if eps is not None else '-'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a `medjax data demo` folder to split into sites")
    ap.add_argument("--init-from", default="", help="fine-tuning: the MAE workdir every arm starts from")
    ap.add_argument("--config", default="demo_seg",
                    help="an MAE preset (demo: federated pretraining) or a fine-tuning preset (demo_seg, demo_cls)")
    ap.add_argument("--eval-samples", type=int, default=48,
                    help="pretraining: fixed held-out crops (and masks) per site for the MAE loss")
    ap.add_argument("--workdir", default="/tmp/fedft_cmp")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--val-per-site", type=int, default=3, help="held-out volumes at each site")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--local-steps", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--local-keys", default="norm", help="personalised arm: parameter-path regexes kept local")
    ap.add_argument("--mu", type=float, default=0.01, help="fedprox arm: proximal_mu")
    ap.add_argument("--dp-clip", type=float, default=1.0)
    ap.add_argument("--dp-noise", type=float, default=0.5)
    ap.add_argument("--metric", default="", help="eval key (default: mean_dice / auroc by task)")
    ap.add_argument("--out", default="")
    ap.add_argument("--report", action="store_true", help="only write the table of WORKDIR/results.jsonl (no training)")
    ap.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from medjax.config import apply_overrides, get_preset

    wd = Path(args.workdir)
    sites = [] if args.report else demo_sites(args.demo, wd / "data", args.sites)
    preset = get_preset(args.config)
    metric = args.metric or {"mae": "val_loss", "segmentation": "mean_dice", "classification": "auroc",
                             "detection": "ap_iou0.1"}[preset.task]
    if preset.task == "mae":
        task = ["federated.task=pretrain", f"data.holdout_last={args.val_per_site}",
                f"train.eval_samples={args.eval_samples}"]
    elif args.init_from:
        task = ["federated.task=finetune", f"finetune.init_from={args.init_from}",
                f"finetune.val_records={args.val_per_site}"]
    else:
        ap.error(f"--config {args.config} fine-tunes: give --init-from (the MAE every arm starts from)")
    log_path = wd / "results.jsonl"
    done = [json.loads(x) for x in log_path.read_text().splitlines()] if log_path.exists() else []
    for seed in [] if args.report else args.seeds:
        base = apply_overrides(preset, [
            *task, f"train.seed={seed}", f"train.warmup_steps={max(1, args.rounds * args.local_steps // 10)}",
            "checkpoint.every_steps=100000", "checkpoint.keep=1", "train.log_every=1",
            f"federated.rounds={args.rounds}", f"federated.local_steps={args.local_steps}", *args.overrides])
        for arm in args.arms.split(","):
            if any(r["arm"] == arm and r["seed"] == seed for r in done):
                continue
            t = time.time()
            rows = run_arm(arm, base, sites, wd / f"seed{seed}" / arm, args)
            with log_path.open("a") as f:
                for r in rows:
                    r["seed"] = seed
                    f.write(json.dumps(r) + "\n")
                    done.append(r)
                    print(f"seed {seed} {r['name']}: " + ", ".join(f"{s.get(metric, float('nan')):.3f}"
                                                              for s in r["sites"]), flush=True)
            print(f"  ({time.time() - t:.0f} s)", flush=True)

    steps = args.rounds * args.local_steps
    kind = "MAE pretraining" if preset.task == "mae" else "fine-tuning"
    start = f", from the MAE `{args.init_from}`" if args.init_from and preset.task != "mae" else ""
    lines = [f"# Federated {kind} on the demo sites: {args.config}, {args.sites} sites (by-site split)", "",
             f"Each model: {steps} optimizer steps ({args.rounds} rounds x {args.local_steps} local steps at every "
             f"site for the federated arms), preset `{args.config}` with "
             f"{' '.join(args.overrides) or 'no overrides'}{start}. Held out: the last "
             f"{args.val_per_site} volumes of every site (no arm trained on them). Metric: `{metric}` per site"
             + (" (the MAE loss on fixed crops and masks of them, lower is better)" if preset.task == "mae" else "")
             + "; "
             "overall = mean over the sites where it is defined, weighted by held-out volumes; mean ± std over seeds "
             f"{', '.join(map(str, sorted({r['seed'] for r in done})))}. "
             "Produced by `benchmarks/federated_compare.py`.", "",
             *table(done, metric, args.sites)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
