"""Centralised vs each site alone vs FedAvg vs FedProx on the demo MAE loss, the same optimizer steps per site.

Sites: the demo set split `by-site` (medjax.data.demo_sites). Every model takes ROUNDS x LOCAL_STEPS optimizer
steps of the demo preset (global batch 8): centralised on the pooled sites, each site alone on its own data,
and each federated site per round (sites in this process; the server loop, site rounds and checkpoints are
the ones `medjax federated simulate` runs over Flower). Evaluation: MAE loss on fixed crops (no augmentation,
fixed masks) of each site's volumes, the same for every model. Writes a markdown table.

    .venv/bin/python benchmarks/federated_compare.py --demo data/demo --workdir /tmp/fedcmp \
        --out docs/results/federated_compare.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def eval_loss(cfg, workdir, site_dirs, *, batches: int = 2, seed: int = 123) -> list[float]:
    """Mean MAE loss per site of the latest checkpoint in ``workdir`` on fixed crops and masks."""
    import jax

    from medjax.data.pipeline import make_iterator
    from medjax.federated.arrays import flatten, unflatten
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.state import build_model, split_model

    model_def, like, _ = split_model(build_model(cfg))
    state, _, _ = Checkpointer(workdir, read_only=True).restore_unsharded()
    params = unflatten(flatten(state["params"]), like)
    model = model_def.merge(jax.tree.map(np.asarray, params))
    out = []
    for d in site_dirs:
        data = dataclasses.replace(cfg.data, dir=str(d), augment=False, shuffle=False, cache_dir="")
        losses = []
        with make_iterator(data, batch_size=cfg.train.batch_size, seed=seed) as it:
            for i in range(batches):
                batch = next(it)
                loss, _ = model(batch["image"], mask_key=jax.random.key(seed + i), deterministic=True)
                losses.append(float(loss))
        out.append(float(np.mean(losses)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", default="data/demo")
    ap.add_argument("--workdir", default="/tmp/fedcmp")
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--mu", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    ap.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                    help="config overrides on top of the demo preset (e.g. a smaller model)")
    args = ap.parse_args()

    from medjax.config import apply_overrides, get_preset
    from medjax.data.demo_sites import split_demo_sites
    from medjax.data.sources import load_records
    from medjax.federated.inprocess import InProcessSites
    from medjax.federated.server import FederatedServer
    from medjax.training.pretraining import pretrain

    wd = Path(args.workdir)
    steps = args.rounds * args.local_steps
    sites = split_demo_sites(args.demo, wd / "sites", args.sites, "by-site", args.seed)
    pooled = wd / "pooled.json"
    pooled.write_text(json.dumps([{"image": r["image"]} for s in sites for r in load_records(s)]))
    base = apply_overrides(get_preset("demo"), [
        f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 10)}", f"train.seed={args.seed}",
        "checkpoint.every_steps=100000", "train.log_every=1000",
        f"federated.rounds={args.rounds}", f"federated.local_steps={args.local_steps}",
        f"federated.proximal_mu={args.mu}", *args.overrides])
    rows, timing = [], {}

    def record(name, workdir, seconds):
        losses = eval_loss(base, workdir, sites)
        rows.append((name, losses, seconds))
        print(name, [round(x, 4) for x in losses], f"{seconds:.0f} s", flush=True)

    t = time.time()
    pretrain(apply_overrides(base, [f"data.dir={pooled}"]), wd / "central", restart=True, progress=False)
    record("centralised (pooled data)", wd / "central", time.time() - t)
    for i, s in enumerate(sites, 1):
        t = time.time()
        pretrain(apply_overrides(base, [f"data.dir={s}"]), wd / f"alone-{i}", restart=True, progress=False)
        record(f"site-{i} alone", wd / f"alone-{i}", time.time() - t)
    for strategy in ("fedavg", "fedprox"):
        t = time.time()
        cfg = apply_overrides(base, [f"federated.strategy={strategy}", f"data.dir={sites[0]}"])
        with FederatedServer(cfg, wd / strategy, restart=True, log=lambda s: None) as server:
            server.run(InProcessSites({f"site-{i}": str(s) for i, s in enumerate(sites, 1)}, wd / f"{strategy}-states"))
        record(strategy.replace("fed", "Fed").replace("avg", "Avg").replace("prox", "Prox"), wd / strategy,
               time.time() - t)
        recs = [json.loads(x) for x in (wd / strategy / "metrics.jsonl").read_text().splitlines()]
        glob = [r for r in recs if r["site"] == "global"]
        timing[strategy] = (np.mean([r["seconds"] for r in glob[1:]] or [glob[0]["seconds"]]),
                            glob[0]["bytes_sent"], glob[0]["bytes_received"])

    lines = [f"# Federated MAE pretraining on the demo sites ({args.sites} sites, by-site split)", "",
             f"Every model: {steps} optimizer steps (federated: {args.rounds} rounds x {args.local_steps} local steps "
             f"at every site), demo preset with {' '.join(args.overrides) or 'no overrides'} "
             f"(model {base.model.variant}, crops {base.data.crop_size}, batch {base.train.batch_size}), seed {args.seed}. "
             f"FedProx mu = {args.mu}. "
             "Loss: MAE loss on 2 fixed batches of fixed crops and masks per site (the sites' training volumes, "
             "no augmentation), the same for every model. Produced by `benchmarks/federated_compare.py`.", "",
             "| model | " + " | ".join(f"site-{i}" for i in range(1, len(sites) + 1)) + " | mean | wall s |",
             "| --- |" + " --- |" * (len(sites) + 2)]
    for name, losses, seconds in rows:
        lines.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in losses) + f" | {np.mean(losses):.4f} | {seconds:.0f} |")
    lines += ["", "| strategy | seconds per round (in process, all sites in turn) | bytes server -> sites | bytes sites -> server |",
              "| --- | --- | --- | --- |"]
    for k, (sec, sent, recv) in timing.items():
        lines.append(f"| {k} | {sec:.1f} | {sent:,} | {recv:,} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
