"""Runs and checkpoints for the viewers: list them, load a trained model from a workdir, and prepare a volume the
way training did.

A *run* is a workdir written by ``medjax pretrain``: ``WORKDIR/config.json`` plus ``WORKDIR/checkpoints/<step>/``.
Anything that names a run works: the workdir, one checkpoint directory ``WORKDIR/checkpoints/<step>``, or a
:class:`LoadedRun` already in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medjax.errors import CheckpointError, DataError

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class CheckpointEntry:
    """One complete checkpoint: ``step``, its directory and the loss saved in its meta (None if absent)."""

    step: int
    path: Path
    loss: float | None = None


@dataclass
class LoadedRun:
    """A model ready for inference.

    Attributes:
      cfg: the run's :class:`medjax.config.Config` (``None`` for a bare model handed in directly).
      model: the Flax NNX module (an :class:`medjax.models.MAE` for pretraining runs, or a ViT).
      step: the checkpoint step (``None`` for a model not read from disk).
      workdir: the run directory (``None`` likewise).
      meta: the checkpoint's meta JSON (config, parameter count, loss, ...).
    """

    cfg: Any
    model: Any
    step: int | None = None
    workdir: Path | None = None
    meta: dict = field(default_factory=dict)

    @property
    def encoder(self):
        """The ViT encoder (the model itself when it is a ViT)."""
        return getattr(self.model, "encoder", self.model)

    @property
    def input_size(self) -> tuple[int, ...]:
        """Spatial size in voxels/pixels the model takes, one entry per spatial dim."""
        return tuple(self.encoder.input_size)

    def __repr__(self) -> str:
        where = f"{self.workdir} step {self.step}" if self.workdir is not None else "in memory"
        return f"LoadedRun({type(self.model).__name__} {self.input_size}, {where})"


# ----------------------------------------------------------------------------------------------- listing
def list_checkpoints(workdir) -> list[CheckpointEntry]:
    """Complete checkpoints of a run, oldest first, with the loss saved in each one's meta (safe while the run
    is writing: orbax lists a step only once its save is complete; a step deleted meanwhile has loss None)."""
    root = Path(workdir).expanduser().absolute() / CHECKPOINTS
    if not root.is_dir():
        return []
    from medjax.training.checkpoint import Checkpointer

    out = []
    with Checkpointer(workdir, read_only=True) as ckpt:
        for step in ckpt.all_steps():
            try:
                value = (ckpt.read_item("meta", step) or {}).get("loss")
                loss = float(value) if value is not None else None
            except (CheckpointError, OSError, ValueError, TypeError, AttributeError):
                loss = None
            out.append(CheckpointEntry(step, root / str(step), loss))
    return out


def list_runs(root="runs") -> list[Path]:
    """Run directories under ``root`` (those holding a ``config.json``), sorted by name; ``root`` itself counts."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    return [p for p in candidates if (p / CONFIG_FILE).is_file()]


def resolve_run(path) -> tuple[Path, int | None]:
    """``(workdir, step)`` from a workdir (step None: latest), its ``checkpoints/`` folder or a
    ``WORKDIR/checkpoints/<step>`` directory (:func:`medjax.training.restore.resolve_checkpoint`)."""
    from medjax.training.restore import resolve_checkpoint

    return resolve_checkpoint(path)


def load_run_config(workdir):
    """The :class:`medjax.config.Config` saved as ``WORKDIR/config.json``."""
    from medjax.config import load_config

    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the run directory must hold the config.json `medjax pretrain` "
                              "writes")
    return load_config(str(path))


# ----------------------------------------------------------------------------------------------- loading
def load_run(src, step: int | None = None) -> LoadedRun:
    """Load the model of a run at ``step`` (default: the step named by ``src``, else the latest checkpoint).

    Args:
      src: a workdir, a checkpoint directory, a :class:`LoadedRun` (returned as is) or an NNX module (wrapped,
        with ``cfg=None``).
      step: checkpoint step to load.

    Only the parameters (and model state) are read, straight onto the default device
    (:mod:`medjax.training.restore`); the optimizer state is not. The model is built abstractly first (no random
    initialisation of full-size parameters).

    Raises:
      CheckpointError: no such run / checkpoint, or the checkpoint does not match the saved config.
    """
    if isinstance(src, LoadedRun):
        return src
    if not isinstance(src, (str, os.PathLike)):
        if hasattr(src, "encoder") or hasattr(src, "blocks"):
            return LoadedRun(cfg=None, model=src)
        raise TypeError(f"expected a run directory, checkpoint directory, LoadedRun or model; got {type(src)}")

    from medjax.training.restore import open_checkpoint, restore_model
    from medjax.training.state import abstract_model, build_model

    workdir, named_step = resolve_run(src)
    cfg = load_run_config(workdir)
    if cfg.task != "mae":
        raise CheckpointError(f"{workdir}: task={cfg.task!r}; the viewers load MAE pretraining runs")
    saved = open_checkpoint(workdir, named_step if step is None else int(step))
    model_def, abstract_params, abstract_state = abstract_model(lambda: build_model(cfg))
    try:
        params, model_state, _ = restore_model(saved, abstract_params, abstract_state)
    except CheckpointError as e:
        raise CheckpointError(f"{e} (the model is built from {workdir / CONFIG_FILE})") from None
    model = model_def.merge(params, model_state or None)
    step, meta = saved.step, saved.meta
    return LoadedRun(cfg=cfg, model=model, step=step, workdir=workdir, meta=dict(meta or {}))


# ----------------------------------------------------------------------------------------------- model input
def volume_sample(volume, affine=None) -> dict:
    """A sample dict ``{"image": (X, Y, Z[, C]), "affine": (4, 4) voxel -> RAS+ mm, "id": str}`` from a path,
    nibabel image, :class:`~medjax.data.image.Image` or array (``affine`` required for arrays unless 1 mm RAS)."""
    from medjax.data.image import Image

    if isinstance(volume, (str, os.PathLike)):
        from medjax.data.io import read_image

        img = read_image(volume, check=False)
        return {"image": np.asarray(img.array), "affine": img.affine, "id": os.path.basename(str(volume))}
    if isinstance(volume, Image):
        return {"image": np.asarray(volume.array), "affine": np.asarray(volume.affine, dtype=np.float64),
                "id": os.path.basename(volume.path) if volume.path else "volume"}
    if hasattr(volume, "dataobj") and hasattr(volume, "affine"):
        return {"image": np.asarray(volume.dataobj), "affine": np.asarray(volume.affine, dtype=np.float64),
                "id": "volume"}
    arr = np.asarray(volume)
    return {"image": arr, "affine": np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64),
            "id": "volume"}


def model_input(run: LoadedRun, volume, affine=None) -> tuple[np.ndarray, np.ndarray]:
    """The model's view of ``volume``: preprocessed as in training, then the central window the model takes.

    With a config (runs from disk) the volume goes through :func:`medjax.data.transforms.preprocess` of
    ``cfg.data`` (reorientation, spacing, foreground crop, intensity normalisation, padding); the result is used
    whole when it matches the model input size, else its centre crop. 2D models take the centre slice along
    ``cfg.data.slice_axis``. A bare model (no config) gets the volume reoriented to RAS, percentile-scaled to
    [0, 1] and centre-cropped / zero-padded to its input size.

    Returns:
      ``(x, affine)``: ``x`` float32 ``(*input_size, C)``; ``affine`` ``(4, 4)`` voxel -> RAS+ mm of ``x`` (for
      2D, of the slice inside the volume; its third column is the slice normal).
    """
    from medjax.data.transforms import crop, pad_to, percentile_scale, preprocess, reorient, slice_from_volume

    sample = volume_sample(volume, affine)
    enc = run.encoder
    size = tuple(enc.input_size)
    channels = int(enc.in_channels)
    image = sample["image"]
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4:
        raise DataError(sample["id"], f"expected a volume (X, Y, Z[, C]); got shape {image.shape}")
    if image.shape[-1] != channels:
        raise DataError(sample["id"], f"volume has {image.shape[-1]} channel(s); the model takes {channels}")
    sample["image"] = image
    if run.cfg is not None:
        data_cfg = run.cfg.data
        slice_axis = data_cfg.slice_axis
        pre = preprocess(sample, data_cfg)
        vol, aff = pre["image"], pre["affine"]
    else:
        slice_axis = 2
        vol, aff = reorient(image, sample["affine"], "RAS", has_channels=True)
        vol = percentile_scale(np.asarray(vol, dtype=np.float32), has_channels=True)
    if len(size) == 3:
        window = size
    else:
        in_plane = [a for a in range(3) if a != slice_axis]
        window = [1, 1, 1]
        for ax, s in zip(in_plane, size):
            window[ax] = s
        window = tuple(window)
    vol, aff = pad_to(vol, aff, window, value=0)
    starts = [(n - w) // 2 for n, w in zip(vol.shape[:3], window)]
    vol, aff = crop(vol, aff, tuple(slice(s, s + w) for s, w in zip(starts, window)))
    if len(size) == 2:
        vol, aff = slice_from_volume(vol, aff, 0, slice_axis)
    return np.ascontiguousarray(vol, dtype=np.float32), aff
