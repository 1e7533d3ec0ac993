"""Frozen-feature probes (``medjax probe``): does a pretrained encoder's representation already hold the task?

The config is a classification config (``demo_cls``: "is there a lesion in this window"): its records are split
as in fine-tuning (:func:`medjax.finetune.loop.split_records`: the last ``finetune.val_records`` held out, the
first ``finetune.num_labeled`` of the rest for training). Every volume is tiled into windows of
``data.crop_size`` (:mod:`medjax.finetune.features`) and embedded by each frozen encoder; then, per level,

- ``window``: one sample per window, its target whether the window holds an object of at least
  ``finetune.min_object_voxels`` voxels (``finetune.class_from_label``; the question fine-tuning trains on);
- ``volume``: one sample per volume (the mean of its window features), its target the record's ``class`` (or,
  with ``class_from_label``, whether the volume holds an object),

a probe is fitted on the training samples and scored on the held-out ones: ``linear`` (standardised features,
L2-regularised logistic regression with class-balanced weights, the L2 strength chosen by 4-fold
cross-validation grouped by volume) or ``knn`` (cosine, similarity-weighted votes of the k nearest training
samples). Metrics: accuracy and AUROC (:func:`medjax.evaluation.auroc`; of class 1 for two classes).

The baseline every pretrained encoder must beat is the same architecture at random initialisation (one probe
per seed). The verdict compares the headline metric (window AUROC when windows have targets, else volume AUROC):
``beats`` when the pretrained mean exceeds the random-init mean by more than 3 standard deviations (and by more
than 0), ``does-not-beat`` when it is not above it, else ``unclear``. The standard deviation is pooled over both
arms' seeds, sqrt((s_p^2 + s_r^2) / 2), when several pretrained encoders (e.g. MAE seeds) are probed, so that
the MAE's own seed-to-seed spread counts; with one pretrained encoder it is the random-init seeds' std, and the
text says that the pretrained spread is unmeasured.
"""

from __future__ import annotations

import math
import time

import numpy as np

from medjax.errors import ConfigError

MARGIN_STD = 3.0  # a pretrained encoder "beats" random init by more than this many random-init std


def _labels(cfg, sample: dict, record: dict, positions, window) -> tuple[int, np.ndarray | None]:
    """``(volume target, window targets (W,) or None)`` of one preprocessed record."""
    from medjax.finetune.evaluate import window_classes
    from medjax.finetune.tasks import object_boxes

    ft = cfg.finetune
    if ft.class_from_label:
        label = np.asarray(sample["label"])
        wy = window_classes(label, positions, window, ft.min_object_voxels, cfg.data.spatial_dims,
                            cfg.data.slice_axis)
        return int(len(object_boxes(label, ft.min_object_voxels)) > 0), wy
    y = record.get("class")
    if not isinstance(y, (int, np.integer)) or not 0 <= int(y) < ft.num_classes:
        raise ConfigError(f"record {record.get('id')!r}: probing needs one class index in [0, "
                          f"finetune.num_classes={ft.num_classes}) per record, got class={y!r}; multi-label "
                          "classes are not probed")
    return int(y), None


def check_probe_config(cfg) -> None:
    if cfg.task != "classification":
        raise ConfigError(f"task={cfg.task!r}: `medjax probe` fits classifiers; use a classification config "
                          "(e.g. --config demo_cls)")
    if cfg.finetune.val_records < 1:
        raise ConfigError("finetune.val_records=0: the probe scores held-out volumes; set finetune.val_records "
                          "to the number of records to hold out")


def prepare(cfg, records: list[dict]) -> list[dict]:
    """Read, preprocess and tile each record once: ``id``, ``y`` (volume target), ``wy`` (window targets or
    None), ``inputs`` (the padded model inputs) and ``positions`` (the windows), for :func:`embed`."""
    from medjax.evaluation.sliding_window import tile
    from medjax.finetune.features import model_inputs, window_size
    from medjax.finetune.predict import preprocess_record

    window = window_size(cfg)
    out = []
    for r in records:
        s = preprocess_record(cfg, r)
        inputs, positions = tile(model_inputs(s["image"], cfg.data.spatial_dims, cfg.data.slice_axis), window,
                                 cfg.finetune.eval_overlap)
        y, wy = _labels(cfg, s, r, positions, window)
        out.append({"id": r["id"], "y": y, "wy": wy, "inputs": inputs, "positions": positions,
                    "window": window, "batch": max(1, cfg.finetune.eval_batch)})
    return out


def embed(prepared: list[dict], encoders: list, pools: tuple[str, ...],
          layers: tuple[int | None, ...] = (None,)) -> list[dict]:
    """Per prepared record: ``id``, ``y``, ``wy``, ``feats`` (per encoder ``{feature_key(pool, layer): (W, D)
    float32}`` window features, every pool and layer from one forward pass)."""
    from medjax.finetune.features import window_features_by_pool

    return [{"id": p["id"], "y": p["y"], "wy": p["wy"],
             "feats": window_features_by_pool(encoders, p["inputs"], p["positions"], p["window"], pools,
                                              batch=p["batch"], layers=layers)}
            for p in prepared]


def collect(cfg, encoders: list, records: list[dict], pools: tuple[str, ...],
            layers: tuple[int | None, ...] = (None,)) -> list[dict]:
    """:func:`prepare` then :func:`embed`, one record at a time (only one volume's inputs in memory)."""
    out = []
    for r in records:
        out += embed(prepare(cfg, [r]), encoders, pools, layers)
    return out


def _metrics(scores: np.ndarray, y: np.ndarray, fit: dict) -> dict:
    from medjax.evaluation.classification import accuracy, auroc

    both = 0 < len(np.unique(y)) and len(np.unique(y)) > 1
    if scores.shape[1] == 2:
        a = float(auroc(scores[:, 1], y)) if both else None
    else:
        a = float(auroc(scores, y)) if both else None
    return {"auroc": a, "accuracy": float(accuracy(scores.argmax(1), y)), "n": int(len(y)),
            "positives": int((y > 0).sum()), "lambda": fit["lambda"]}


def probe_one(k: int, train: list[dict], test: list[dict], kind: str, num_classes: int, knn_k: int,
              pool: str = "mean") -> dict:
    """Metrics per level of encoder ``k``'s ``pool`` features (a :func:`medjax.finetune.features.feature_key`;
    see module doc)."""
    from medjax.finetune.probe_fit import fit_and_score

    def feats(r):
        return r["feats"][k][pool]

    out = {}
    if all(r["wy"] is not None for r in train + test):
        x = np.concatenate([feats(r) for r in train])
        y = np.concatenate([r["wy"] for r in train])
        g = np.concatenate([np.full(len(r["wy"]), i) for i, r in enumerate(train)])
        tx = np.concatenate([feats(r) for r in test])
        ty = np.concatenate([r["wy"] for r in test])
        if len(np.unique(y)) > 1:
            fit = fit_and_score(kind, x, y, g, tx, num_classes, knn_k)
            out["window"] = _metrics(fit["scores"], ty, fit)
    vx = np.stack([feats(r).mean(0) for r in train])
    vy = np.asarray([r["y"] for r in train])
    if len(np.unique(vy)) > 1:
        fit = fit_and_score(kind, vx, vy, np.arange(len(vy)), np.stack([feats(r).mean(0) for r in test]),
                            num_classes, knn_k)
        out["volume"] = _metrics(fit["scores"], np.asarray([r["y"] for r in test]), fit)
    return out


def _mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    return m, (math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0)


def _summarise(runs: list[dict]) -> dict:
    """Per level and metric: the values over runs, their mean and sample std."""
    out = {}
    for level in ("window", "volume"):
        per = [r["metrics"].get(level) for r in runs]
        if not any(per):
            continue
        out[level] = {}
        for m in ("auroc", "accuracy"):
            vals = [p.get(m) if p else None for p in per]
            mean, std = _mean_std(vals)
            out[level][m] = {"values": vals, "mean": mean, "std": std}
    return out


def _spread(p: dict, r: dict) -> tuple[float, str]:
    """The std the margin is measured in: pooled over both arms, sqrt((s_p^2 + s_r^2) / 2), when both have at least
    two seeds; else the random-init seeds' std (one pretrained encoder has no measured spread)."""
    n_p = sum(v is not None for v in p["values"])
    n_r = sum(v is not None for v in r["values"])
    if n_p > 1 and n_r > 1:
        return math.sqrt(((p["std"] or 0.0) ** 2 + (r["std"] or 0.0) ** 2) / 2), \
            f"pooled std ({n_p} pretrained, {n_r} random-init seeds)"
    return r["std"] or 0.0, f"std of the {n_r} random-init seed{'s' if n_r != 1 else ''}"


def verdict(result: dict) -> dict:
    """Pretrained vs random init on the headline metric (see module doc); ``text`` names the numbers."""
    pre, rnd = result.get("pretrained"), result.get("random_init")
    if not pre or not rnd:
        return {"status": "no-comparison", "text": "only one arm was probed; nothing to compare"}
    level = "window" if "window" in pre["summary"] and "window" in rnd["summary"] else "volume"
    if level not in pre["summary"] or level not in rnd["summary"]:
        return {"status": "no-comparison", "text": "no level has both classes in training and held-out data"}
    p, r = pre["summary"][level]["auroc"], rnd["summary"][level]["auroc"]
    if p["mean"] is None or r["mean"] is None:
        return {"status": "no-comparison", "text": f"{level} AUROC undefined (one class only in held-out data)"}
    delta = p["mean"] - r["mean"]
    sd, sd_name = _spread(p, r)
    n_r = sum(v is not None for v in r["values"])
    margin = delta / sd if sd > 0 else (math.inf if delta > 0 else -math.inf if delta < 0 else 0.0)
    nums = (f"{level} AUROC pretrained {p['mean']:.3f}"
            + (f" ± {p['std']:.3f}" if len(p["values"]) > 1 else "")
            + f" vs random init {r['mean']:.3f} ± {r['std'] or 0.0:.3f} ({n_r} seeds): {delta:+.3f}"
            + (f" = {margin:+.1f} {sd_name}" if math.isfinite(margin) else ""))
    if delta > 0 and margin > MARGIN_STD:
        status, text = "beats", f"the pretrained encoder beats random initialisation: {nums}"
    elif delta <= 0:
        steps = ", ".join(f"step {c['step']} (loss {c['loss']:.3f})" if c.get("loss") is not None
                          else f"step {c['step']}" for c in pre["runs"])
        status = "does-not-beat"
        text = (f"the pretrained encoder does NOT beat random initialisation: {nums}. Either the MAE is "
                f"under-trained for this task ({steps}) or its encoder is not the one loaded (check model.* of "
                "the checkpoint's config against the preset)")
    else:
        status = "unclear"
        text = (f"the pretrained encoder is ahead of random initialisation but within {MARGIN_STD:g} "
                f"{sd_name}: {nums}")
        if n_r < 2:
            text += "; probe more random-init seeds (--seeds 0 1 2) to measure their spread"
    if status != "no-comparison" and len(p["values"]) < 2:
        text += ("; one pretrained encoder: its own seed-to-seed spread is not measured (give several "
                 "--checkpoint runs)")
    return {"status": status, "level": level, "metric": "auroc", "delta": delta,
            "margin_std": margin if math.isfinite(margin) else None, "std_used": sd_name, "text": text}


def probe(cfg, checkpoints=(), *, kind: str = "linear", random_init: bool = False, seeds=(0,),
          pool: str = "mean", knn_k: int = 20, baseline: bool = True, layer: int | None = None) -> dict:
    """One probe (``kind`` on ``pool`` features of ``layer``); see :func:`probe_grid`, whose single result this
    returns."""
    return probe_grid(cfg, checkpoints, kinds=(kind,), pools=(pool,), random_init=random_init, seeds=seeds,
                      knn_k=knn_k, baseline=baseline, layers=(layer,))[0]


def probe_grid(cfg, checkpoints=(), *, kinds=("linear",), pools=("mean",), random_init: bool = False, seeds=(0,),
               knn_k: int = 20, baseline: bool = True, layers=(None,)) -> list[dict]:
    """Probe the encoders of ``checkpoints`` (and/or random initialisations) on ``cfg``'s task, for every probe
    kind, pooling and layer: the windows are embedded once (every pool and layer from the same forward pass),
    then each ``(pool, layer, kind)`` is fitted on those features.

    Args:
      cfg: a classification config (records, split, windows, targets; see module doc).
      checkpoints: run directories or step folders whose encoders are probed (one result each).
      kinds: probes, each ``"linear"`` or ``"knn"``.
      pools: window features, each ``"mean"``, ``"max"`` (over the patch tokens) or ``"cls"``.
      layers: whose tokens are pooled: ``None`` (the encoder output) or 1-based block numbers (a block's output
        through the final LayerNorm; the last block is the output). MAE encoders often probe better a few blocks
        before the output, whose last blocks serve the reconstruction.
      random_init: probe only random initialisations (one per seed), no checkpoint.
      seeds: initialisation seeds of the random-init arm.
      knn_k: neighbours for ``kind="knn"``.
      baseline: with checkpoints, also probe random initialisations (the comparison the verdict needs).

    Returns one JSON-safe dict per ``(pool, layer, kind)``, pools outer, then layers: ``config``, ``kind``,
    ``pool``, ``layer`` (the block number; ``depth``, the last, is the encoder output), ``train`` /
    ``held_out`` (volume ids and window counts), ``pretrained`` and ``random_init`` (each ``runs`` [one per
    encoder: source/seed, step, loss, ``metrics`` {level: {auroc, accuracy, n, positives, lambda}}] and
    ``summary`` {level: {metric: {values, mean, std}}}; absent when not probed), ``verdict`` (see
    :func:`verdict`) and ``seconds`` (embedding plus this probe's fits).
    """
    from medjax.evaluation.accumulators import json_safe
    from medjax.finetune.features import check_layer, check_pool, feature_key, load_encoder_from, random_encoder
    from medjax.finetune.loop import split_records
    from medjax.finetune.tasks import num_encoder_layers

    t0 = time.time()
    check_probe_config(cfg)
    kinds, pools = tuple(dict.fromkeys(kinds)), tuple(dict.fromkeys(pools))
    for kind in kinds:
        if kind not in ("linear", "knn"):
            raise ConfigError(f"--kind {kind!r}: use linear or knn")
    checkpoints = [] if random_init else list(checkpoints)
    if not checkpoints and not random_init:
        raise ConfigError("give --checkpoint WORKDIR (a pretraining run) or --random-init")
    encoders = [load_encoder_from(cfg, c) for c in checkpoints]
    arch = encoders[0].cfg if encoders else cfg
    for pool in pools:
        check_pool(pool, arch)
    depth = num_encoder_layers(arch)
    layers = tuple(dict.fromkeys(None if x is None else check_layer(x, arch) for x in layers))
    if random_init or baseline:
        encoders += [random_encoder(arch, s) for s in seeds]
    train_recs, val_recs = split_records(cfg)
    train = collect(arch, encoders, train_recs, pools, layers)
    test = collect(arch, encoders, val_recs, pools, layers)
    embed_s = time.time() - t0
    k_cls = max(2, int(cfg.finetune.num_classes))
    results = []
    for pool, layer, kind in ((p, x, k) for p in pools for x in layers for k in kinds):
        t1 = time.time()
        key = feature_key(pool, layer)
        runs = [{"encoder": enc.name, "source": enc.source, "seed": enc.seed, "step": enc.step,
                 "loss": enc.loss, "feature_dim": int(train[0]["feats"][k][key].shape[1]),
                 "metrics": probe_one(k, train, test, kind, k_cls, knn_k, key)}
                for k, enc in enumerate(encoders)]
        out: dict = {"config": cfg.name, "kind": kind, "pool": pool, "layer": depth if layer is None else layer,
                     "depth": depth, "variant": arch.model.variant,
                     "window": list(cfg.data.crop_size), "spacing": list(cfg.data.spacing),
                     "train": _split_info(train), "held_out": _split_info(test)}
        pre = [r for r in runs if r["encoder"] == "checkpoint"]
        rnd = [r for r in runs if r["encoder"] == "random-init"]
        if pre:
            out["pretrained"] = {"runs": pre, "summary": _summarise(pre)}
        if rnd:
            out["random_init"] = {"runs": rnd, "summary": _summarise(rnd)}
        out["verdict"] = verdict(out)
        out["seconds"] = round(embed_s + time.time() - t1, 1)
        results.append(json_safe(out))
    return results


def _split_info(recs: list[dict]) -> dict:
    wy = [r["wy"] for r in recs if r["wy"] is not None]
    info = {"volumes": len(recs), "volume_positives": int(sum(r["y"] > 0 for r in recs)),
            "ids": [r["id"] for r in recs]}
    if wy:
        info["windows"] = int(sum(len(w) for w in wy))
        info["window_positives"] = int(sum(int(w.sum()) for w in wy))
    return info


def format_probe(result: dict) -> str:
    """A plain-text table of a :func:`probe` result: one row per encoder and level, then the summary and the
    verdict."""
    layer = result.get("layer")
    where = f" (block {layer} of {result['depth']})" if layer is not None and layer != result.get("depth") else ""
    lines = [f"{result['config']}: {result['kind']} probe on {result['pool']}-pooled {result['variant']} "
             f"features{where}; "
             f"train {result['train']['volumes']} volumes"
             + (f" / {result['train'].get('windows')} windows" if "windows" in result["train"] else "")
             + f", held out {result['held_out']['volumes']} volumes"
             + (f" / {result['held_out'].get('windows')} windows ({result['held_out'].get('window_positives')} "
                "positive)" if "windows" in result["held_out"] else ""),
             "| encoder | level | AUROC | accuracy |", "|---|---|---|---|"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    for arm in ("pretrained", "random_init"):
        if arm not in result:
            continue
        for r in result[arm]["runs"]:
            name = f"{r['source']} (step {r['step']})" if arm == "pretrained" else f"random init, seed {r['seed']}"
            for level, m in r["metrics"].items():
                lines.append(f"| {name} | {level} | {fmt(m['auroc'])} | {fmt(m['accuracy'])} |")
        for level, s in result[arm]["summary"].items():
            a = s["auroc"]
            if a["mean"] is not None:
                lines.append(f"{arm} {level} AUROC: {a['mean']:.3f} ± {a['std']:.3f} over {len(a['values'])}")
    lines.append(result["verdict"]["text"])
    return "\n".join(lines)
