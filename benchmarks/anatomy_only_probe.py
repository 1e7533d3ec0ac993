"""How much of a window-classification score can anatomy alone give? A probe on tissue-map features.

The window task of ``demo_cls2d`` asks whether a window holds a lesion. When lesions only occur in some places
(``medjax data demo --lesions periventricular``), a classifier can rank windows well by *where* they are,
without seeing any lesion. This script measures that level: it fits the same linear probe as ``medjax probe``
(L2 chosen by grouped cross-validation, class-balanced) on six features per window computed from the **tissue
label map** only, which the lesions do not change:

- the fractions of background, CSF, grey matter and white matter in the window;
- the fraction of "deep CSF" (CSF at least 12 mm inside the brain: mostly the ventricles);
- the fraction of white matter within 10 mm of deep CSF (periventricular white matter).

Windows, their targets, the training volumes and the held-out volumes are exactly those of ``medjax probe`` for
the same config and overrides. With ``--checkpoint`` (MAE runs) and/or ``--random-init SEED ...``, each encoder's
mean-pooled window features are probed too, alone and concatenated with the six anatomy features: what an
encoder adds **beyond** the anatomy is the difference between ``with_anatomy`` and the anatomy-only AUROC.

Prints one JSON object: held-out window metrics (AUROC, accuracy, L2 chosen) of the anatomy-only probe, of each
encoder alone and with anatomy, and the window counts::

    python benchmarks/anatomy_only_probe.py --config demo_cls2d \\
        --set data.dir=data/demo96pv/probe32.json model.variant=Ti/4 data.crop_size=32,32
    python benchmarks/anatomy_only_probe.py --config demo_cls2d --checkpoint runs/pv_p4_s0 --random-init 0 \\
        --set data.dir=data/demo96pv/probe32.json model.variant=Ti/4 data.crop_size=32,32
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

DEEP_CSF_MM = 12.0
NEAR_MM = 10.0


def anatomy_maps(tissue: np.ndarray, spacing) -> np.ndarray:
    """``(6, X, Y, Z)`` float32 indicator maps (see module doc) of a ``(X, Y, Z)`` tissue map (0 bg, 1 CSF, 2 GM,
    3 WM) with voxel size ``spacing`` mm."""
    from scipy import ndimage

    brain = tissue > 0
    depth = ndimage.distance_transform_edt(brain, sampling=spacing)
    deep_csf = (tissue == 1) & (depth >= DEEP_CSF_MM)
    near = ndimage.distance_transform_edt(~deep_csf, sampling=spacing) <= NEAR_MM if deep_csf.any() else deep_csf
    maps = [tissue == t for t in (0, 1, 2, 3)] + [deep_csf, (tissue == 3) & near]
    return np.stack(maps).astype(np.float32)


def window_means(maps: np.ndarray, positions, window, slice_axis: int) -> np.ndarray:
    """``(W, C)``: each map's mean over each 2D window (zero beyond the volume, as the image is padded)."""
    planes = np.moveaxis(maps, 1 + slice_axis, 1)  # (C, slices, a, b)
    area = float(np.prod(window))
    out = [planes[(slice(None), n, *(slice(s, s + w) for s, w in zip(starts, window)))].sum(axis=(1, 2)) / area
           for n, starts in positions]
    return np.stack(out)


def tissue_paths(cfg) -> dict:
    """``{record id: tissue label map path}`` from the dataset JSON (``split_records`` keeps only the lesion map)."""
    import os

    path = cfg.data.dir if str(cfg.data.dir).endswith(".json") else os.path.join(cfg.data.dir, "dataset.json")
    with open(path) as f:
        entries = json.load(f)["training"]
    base = os.path.dirname(os.path.abspath(path))
    return {e["id"]: os.path.normpath(os.path.join(base, e["label"])) for e in entries}


def record_features(cfg, record: dict, tissue_path: str, encoders: list) -> dict:
    """One record's probe windows: ``x`` (W, 6) anatomy features, ``wy`` (W,) lesion targets and ``feats`` (one
    ``(W, D)`` mean-pooled feature array per encoder)."""
    from medjax.finetune.features import window_features_by_pool
    from medjax.finetune.predict import preprocess_record
    from medjax.finetune.probe import prepare

    if cfg.data.spatial_dims != 2:
        raise SystemExit("anatomy_only_probe: 2D configs only (e.g. demo_cls2d)")
    (p,) = prepare(cfg, [record])  # the probe's own windows and targets
    tissue = preprocess_record(cfg, dict(record, label=tissue_path))
    labels = np.asarray(tissue["label"])
    labels = labels[..., 0] if labels.ndim == 4 else labels
    maps = anatomy_maps(np.rint(labels).astype(np.int64), np.asarray(cfg.data.spacing, dtype=np.float64))
    feats = []
    if encoders:
        feats = [f["mean"] for f in window_features_by_pool(encoders, p["inputs"], p["positions"], p["window"],
                                                            ("mean",), batch=p["batch"])]
    return {"x": window_means(maps, p["positions"], p["window"], cfg.data.slice_axis), "wy": p["wy"], "feats": feats}


def _probe(train_x, train_y, groups, test_x, test_y) -> dict:
    from medjax.finetune.probe import _metrics
    from medjax.finetune.probe_fit import fit_and_score

    fit = fit_and_score("linear", train_x, train_y, groups, test_x, 2)
    return _metrics(fit["scores"], test_y, fit)


def main(argv=None) -> int:
    from medjax.config import load_config
    from medjax.finetune.features import load_encoder_from, random_encoder
    from medjax.finetune.loop import split_records

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="demo_cls2d")
    p.add_argument("--checkpoint", nargs="+", default=[], metavar="RUN", help="MAE runs whose encoders to add")
    p.add_argument("--random-init", nargs="+", type=int, default=[], metavar="SEED",
                   help="random-initialisation seeds of the same architecture to add")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    t0 = time.time()
    encoders = [load_encoder_from(cfg, c) for c in args.checkpoint]
    arch = encoders[0].cfg if encoders else cfg
    encoders += [random_encoder(arch, s) for s in args.random_init]
    train_recs, test_recs = split_records(cfg)
    tissue = tissue_paths(cfg)
    train = [record_features(arch, r, tissue[r["id"]], encoders) for r in train_recs]
    test = [record_features(arch, r, tissue[r["id"]], encoders) for r in test_recs]
    y = np.concatenate([r["wy"] for r in train])
    ty = np.concatenate([r["wy"] for r in test])
    groups = np.concatenate([np.full(len(r["wy"]), i) for i, r in enumerate(train)])

    def stack(recs, k=None, anatomy=True):
        parts = [[r["x"]] if anatomy else [] for r in recs]
        if k is not None:
            parts = [a + [r["feats"][k]] for a, r in zip(parts, recs)]
        return np.concatenate([np.concatenate(a, axis=1) for a in parts])

    out = {
        "config": cfg.name, "data": cfg.data.dir, "features": ["background", "csf", "grey", "white", "deep_csf",
                                                               "periventricular_white"],
        "train": {"volumes": len(train), "windows": int(len(y)), "window_positives": int(y.sum())},
        "held_out": {"volumes": len(test), "windows": int(len(ty)), "window_positives": int(ty.sum())},
        "window": _probe(stack(train), y, groups, stack(test), ty),
        "encoders": [
            {"encoder": e.name, "source": e.source, "seed": e.seed, "step": e.step,
             "alone": _probe(stack(train, k, False), y, groups, stack(test, k, False), ty),
             "with_anatomy": _probe(stack(train, k), y, groups, stack(test, k), ty)}
            for k, e in enumerate(encoders)
        ],
    }
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
