"""Input-pipeline benchmark: medjax's grain pipeline, optionally against an equivalent MONAI pipeline.

Both sides run the same recipe on the same volumes: load, reorient to RAS, resample to ``spacing`` mm
(linear for images, nearest for labels), z-score over the non-zero voxels, crop to the foreground, pad to the
crop size, draw ``samples_per_volume`` random crops per volume, random flips. Throughput counts samples
(crops) delivered as batched host arrays, including worker start-up.

- Without ``cache``: medjax reads NIfTI through grain; MONAI uses a plain ``Dataset``.
- With ``cache``: medjax reads its prepared cache (memory-mapped crops, built first if missing); MONAI uses a
  ``PersistentDataset`` whose cache is filled by one untimed pass first (warm).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from medjax.config.schema import DataConfig


def bench_config(data_dir: str, *, crop: int = 96, spacing: float = 1.5, samples_per_volume: int = 2,
                 workers: int = 2, cache: str | None = None) -> DataConfig:
    """The DataConfig the benchmark runs (MRI z-score, foreground crop, augmentation on)."""
    return DataConfig(dir=data_dir, cache_dir=cache or "", crop_size=(crop,), spacing=(spacing,),
                      orientation="RAS", intensity="mri", crop_foreground=True,
                      samples_per_volume=samples_per_volume, augment=True, workers=workers, shuffle=True)


def _time_medjax(cfg: DataConfig, *, batch: int, epochs: int, seed: int, worker_mode: str = "threads") -> dict:
    # libraries are imported before the clock starts, as for the peer (whose imports precede its timing)
    import grain  # noqa: F401

    import medjax.data.io  # noqa: F401
    import medjax.data.sources  # noqa: F401
    import medjax.data.transforms.recipes  # noqa: F401
    from medjax.data.pipeline import make_iterator

    t0 = time.perf_counter()
    first = None
    samples = batches = first_samples = 0
    it = make_iterator(cfg, batch_size=batch, seed=seed, num_epochs=epochs, worker_mode=worker_mode)
    try:
        for b in it:
            samples += int(b["image"].shape[0])
            batches += 1
            if first is None:
                first, first_samples = time.perf_counter() - t0, samples
    finally:
        it.close()
    seconds = time.perf_counter() - t0
    return {"samples": samples, "batches": batches, **_rates(samples, seconds, first_samples, first)}


def _rates(samples: int, seconds: float, first_samples: int, first: float | None) -> dict:
    """Throughput over the whole run (start-up included) and after the first batch (steady state)."""
    first = first or 0.0
    rest = seconds - first
    return {"seconds": round(seconds, 3), "first_batch_seconds": round(first, 3),
            "samples_per_s": round(samples / seconds, 2) if seconds > 0 else 0.0,
            "steady_samples_per_s": round((samples - first_samples) / rest, 2) if rest > 0 else 0.0}


def run_bench(data_dir: str, *, crop: int = 96, spacing: float = 1.5, samples_per_volume: int = 2, batch: int = 2,
              workers: int = 2, epochs: int = 2, cache: str | None = None, peer: str | None = None,
              seed: int = 0, worker_mode: str = "threads") -> dict[str, Any]:
    """Run the benchmark and return one flat, JSON-serialisable dict.

    Keys: ``samples_per_s`` (start-up included), ``steady_samples_per_s`` (after the first batch),
    ``samples``, ``batches``, ``seconds``, ``first_batch_seconds``, ``source``
    ("nifti" or "cache"), ``settings``; with a cache that had to be built, ``prepare_seconds``; with
    ``peer="monai"``: the same keys prefixed ``peer_``, ``ratio`` and ``steady_ratio`` (medjax / peer) when
    MONAI imports, else ``peer_error``.
    """
    settings = {"dir": os.path.abspath(data_dir), "crop": crop, "spacing_mm": spacing,
                "samples_per_volume": samples_per_volume, "batch": batch, "workers": workers, "epochs": epochs,
                "cache": os.path.abspath(cache) if cache else None, "peer": peer, "seed": seed,
                "worker_mode": worker_mode}
    result: dict[str, Any] = {"bench": "data", "source": "cache" if cache else "nifti"}
    cfg = bench_config(data_dir, crop=crop, spacing=spacing, samples_per_volume=samples_per_volume,
                       workers=workers, cache=cache)
    if cache and not os.path.exists(os.path.join(cache, "manifest.json")):
        from medjax.data.cache import prepare

        manifest = prepare(data_dir, cache, cfg, workers=max(1, workers))
        result["prepare_seconds"] = manifest["summary"]["seconds"]
    result.update(_time_medjax(cfg, batch=batch, epochs=epochs, seed=seed, worker_mode=worker_mode))
    if peer:
        if peer != "monai":
            raise ValueError(f"unknown peer {peer!r}; the only peer is 'monai'")
        try:
            import monai  # noqa: F401
        except ImportError as e:
            result["peer_error"] = f"monai is not importable ({e}); install medjax[bench] to compare"
        else:
            peer_res = _time_monai(cfg, batch=batch, epochs=epochs, seed=seed, persistent=bool(cache))
            result.update({f"peer_{k}": v for k, v in peer_res.items()})
            if peer_res["samples_per_s"] > 0:
                result["ratio"] = round(result["samples_per_s"] / peer_res["samples_per_s"], 3)
            if peer_res["steady_samples_per_s"] > 0:
                result["steady_ratio"] = round(result["steady_samples_per_s"] / peer_res["steady_samples_per_s"], 3)
    result["settings"] = settings
    return result


def _monai_transforms(keys: list[str], crop: int, spacing: float, samples: int):
    from monai import transforms as mt

    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return mt.Compose([
        mt.LoadImaged(keys=keys),
        mt.EnsureChannelFirstd(keys=keys),
        mt.Orientationd(keys=keys, axcodes="RAS"),
        mt.Spacingd(keys=keys, pixdim=(spacing, spacing, spacing), mode=modes),
        mt.NormalizeIntensityd(keys=["image"], nonzero=True),
        mt.CropForegroundd(keys=keys, source_key="image"),
        mt.SpatialPadd(keys=keys, spatial_size=(crop, crop, crop)),
        mt.RandSpatialCropSamplesd(keys=keys, roi_size=(crop, crop, crop), num_samples=samples,
                                   random_size=False),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
    ])


def _time_monai(cfg: DataConfig, *, batch: int, epochs: int, seed: int, persistent: bool) -> dict:
    """The MONAI peer: same records and recipe; ``persistent`` times a warm PersistentDataset."""
    import monai.data as md
    from monai.utils import set_determinism

    from medjax.data.sources import load_records

    records = load_records(cfg.dir, split=cfg.split)
    has_label = all(r.get("label") for r in records)
    keys = ["image", "label"] if has_label else ["image"]
    data = [{k: r[k] for k in keys} for r in records]
    set_determinism(seed=seed)
    transform = _monai_transforms(keys, cfg.crop_size[0], float(cfg.spacing[0]), cfg.samples_per_volume)
    with tempfile.TemporaryDirectory(prefix="medjax_bench_monai_") as tmp:
        if persistent:
            ds = md.PersistentDataset(data, transform=transform, cache_dir=tmp)
            for item in ds:  # fill the persistent cache (untimed)
                del item
        else:
            ds = md.Dataset(data, transform=transform)
        t0 = time.perf_counter()
        samples = first_samples = 0
        first = None
        loader = md.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=cfg.workers)
        for _ in range(epochs):
            for b in loader:
                samples += int(b["image"].shape[0])
                if first is None:
                    first, first_samples = time.perf_counter() - t0, samples
        seconds = time.perf_counter() - t0
    return {"samples": samples, **_rates(samples, seconds, first_samples, first)}
