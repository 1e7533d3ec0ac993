"""Pretrained-then-fine-tuned vs from-scratch: the same config, data subset, seed and steps, two runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

_HEADLINE = {"segmentation": "mean_dice", "classification": "auroc", "detection": "ap_iou0.1"}


def compare(cfg, workdir, *, init_from: str, progress: bool = False) -> dict:
    """Fine-tune ``cfg`` from the MAE encoder of ``init_from`` (``WORKDIR/pretrained``) and from scratch
    (``WORKDIR/scratch``); return and write ``WORKDIR/compare.json``: per run the headline metric (mean Dice,
    AUROC or AP), the full held-out metrics without per-case lists, final loss and seconds; and ``delta``
    (pretrained minus scratch)."""
    from medjax.finetune.loop import finetune

    workdir = Path(workdir).expanduser().absolute()
    out: dict = {"config": cfg.name, "task": cfg.task, "num_labeled": cfg.finetune.num_labeled,
                 "steps": cfg.train.steps, "init_from": str(init_from)}
    key = _HEADLINE[cfg.task]
    for name, src in (("pretrained", init_from), ("scratch", "")):
        t0 = time.time()
        s = finetune(cfg, workdir / name, init_from=src, restart=True, progress=progress)
        ev = {k: v for k, v in (s.get("eval") or {}).items() if k != "cases"}
        out[name] = {"metric": ev.get(key), "eval": ev, "final_loss": s.get("final_loss"),
                     "seconds": round(time.time() - t0, 1)}
    a, b = out["pretrained"]["metric"], out["scratch"]["metric"]
    out["metric"] = key
    out["delta"] = (a - b) if a is not None and b is not None else None
    (workdir / "compare.json").write_text(json.dumps(out, indent=1) + "\n")
    return out
