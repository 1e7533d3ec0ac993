"""``medjax features``: one embedding per volume (optionally per window) from a frozen encoder, as ``.npy`` files
plus a CSV index, for researchers' own analyses (clustering, retrieval, statistics).

OUT layout::

    index.csv                 one row per volume: id, file, shape, preprocessed_shape, windows, embedding,
                              window_embeddings, window_positions (the last two empty without --per-window)
    features.json             what produced them: checkpoint, step, variant, pool, layer (encoder block; the
                              last is the output), feature_dim, window, overlap, spacing, intensity
    <id>.npy                  (D,) float32: the mean of the volume's window features
    <id>_windows.npy          (W, D) float32 (--per-window)
    <id>_positions.npy        (W, 1 + n) int64 (--per-window): slice index (0 in 3D), then the window's start
                              voxel per axis on the preprocessed grid

Volumes are read and preprocessed with the checkpoint's saved data settings (spacing, orientation, intensity,
foreground crop) unless a config is given, and tiled as in :mod:`medjax.finetune.features`. Only the file's
name, the voxel shapes and the features are written: no header field of the images.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from medjax.errors import ConfigError, DataError

COLUMNS = ("id", "file", "shape", "preprocessed_shape", "windows", "embedding", "window_embeddings",
           "window_positions")


def features_config(checkpoint, config):
    """The config whose data settings preprocess the volumes: ``config`` if given, else the checkpoint's."""
    from medjax.config.overrides import from_dict
    from medjax.config.schema import Config
    from medjax.training.restore import open_checkpoint

    if config is not None:
        return config
    saved = (open_checkpoint(checkpoint).meta or {}).get("config")
    if not saved:
        raise ConfigError(f"{checkpoint}: the checkpoint holds no saved config; pass --config with the data "
                          "settings (spacing, intensity, crop size) the encoder was trained with")
    return from_dict(Config, saved)


def export_features(checkpoint, in_dir, out_dir, *, per_window: bool = False, config=None, pool: str = "mean",
                    overlap: float | None = None, layer: int | None = None) -> dict:
    """Embed every volume of ``in_dir`` (a folder of NIfTI/DICOM volumes, an MSD folder or a manifest) with the
    encoder of ``checkpoint``; write the files above into ``out_dir``. ``layer`` pools that encoder block's
    tokens (1-based, through the final LayerNorm; :mod:`medjax.finetune.features`) instead of the output.

    Returns ``{"out": ..., "volumes": N, "feature_dim": D, "index": path of index.csv}``.

    Raises:
      DataError: ``in_dir`` holds no volumes (naming it); ConfigError: bad pool or overlap.
    """
    from medjax.data.sources import load_records
    from medjax.evaluation.sliding_window import tile
    from medjax.finetune.features import (check_layer, check_pool, feature_key, load_encoder_from, model_inputs,
                                          window_features_by_pool, window_size)
    from medjax.finetune.predict import preprocess_record
    from medjax.finetune.tasks import num_encoder_layers

    cfg = features_config(checkpoint, config)
    if overlap is not None:
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"--overlap {overlap}: use a fraction of the window in [0, 1)")
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, eval_overlap=float(overlap)))
    records = load_records(str(in_dir))
    if not records:
        raise DataError(in_dir, "no volumes found; pass a folder of .nii/.nii.gz (or DICOM series), an MSD "
                                "folder or a CSV/JSON manifest")
    enc = load_encoder_from(cfg, checkpoint)
    check_pool(pool, enc.cfg)
    block = None if layer is None else check_layer(layer, enc.cfg)
    key = feature_key(pool, block)
    window = window_size(enc.cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, dim = [], None
    for r in records:
        s = preprocess_record(enc.cfg, {"id": r["id"], "image": r["image"]})
        inputs, positions = tile(model_inputs(s["image"], enc.cfg.data.spatial_dims, enc.cfg.data.slice_axis),
                                 window, enc.cfg.finetune.eval_overlap)
        feats = window_features_by_pool([enc], inputs, positions, window, (pool,), layers=(block,),
                                        batch=max(1, enc.cfg.finetune.eval_batch))[0][key]
        dim = int(feats.shape[1])
        stem = str(r["id"])
        np.save(out / f"{stem}.npy", feats.mean(0).astype(np.float32), allow_pickle=False)
        row = {"id": stem, "file": Path(str(r["image"])).name, "shape": "x".join(map(str, s["orig_shape"])),
               "preprocessed_shape": "x".join(map(str, s["image"].shape[:-1])), "windows": len(positions),
               "embedding": f"{stem}.npy", "window_embeddings": "", "window_positions": ""}
        if per_window:
            pos = np.asarray([(n, *st) for n, st in positions], np.int64)
            np.save(out / f"{stem}_windows.npy", feats.astype(np.float32), allow_pickle=False)
            np.save(out / f"{stem}_positions.npy", pos, allow_pickle=False)
            row["window_embeddings"], row["window_positions"] = f"{stem}_windows.npy", f"{stem}_positions.npy"
        rows.append(row)
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    info = {"checkpoint": str(checkpoint), "step": enc.step, "variant": enc.cfg.model.variant, "pool": pool,
            "layer": block or num_encoder_layers(enc.cfg),
            "feature_dim": dim, "window": list(window), "overlap": enc.cfg.finetune.eval_overlap,
            "spacing": list(enc.cfg.data.spacing), "intensity": enc.cfg.data.intensity,
            "spatial_dims": enc.cfg.data.spatial_dims, "volumes": len(rows)}
    (out / "features.json").write_text(json.dumps(info, indent=1) + "\n")
    return {"out": str(out), "volumes": len(rows), "feature_dim": dim, "index": str(out / "index.csv")}
