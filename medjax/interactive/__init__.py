"""Interactive viewers and a training launcher for Jupyter (ipywidgets), plus pure attention mapping.

One line each, in a notebook cell::

    from medjax.interactive import VolumeViewer, ReconstructionViewer, AttentionViewer, ExperimentLauncher

    VolumeViewer("data/demo/imagesTr/sub-000.nii.gz", label="data/demo/labelsTr/sub-000.nii.gz")
    ReconstructionViewer("runs/demo", "data/demo/imagesTr/sub-000.nii.gz")
    AttentionViewer("runs/demo", "data/demo/imagesTr/sub-000.nii.gz")
    launcher = ExperimentLauncher("demo", workdir="runs/demo"); launcher

- :class:`VolumeViewer` ``(src, *, label=None, mask=None, overlay=None, affine=None, window=None)``: three
  orthogonal planes of a volume (path, nibabel image, :class:`medjax.data.image.Image` or array + affine),
  shown in RAS+ display orientation whatever the stored orientation, with slice, window/level and overlay
  controls.
- :class:`ReconstructionViewer` ``(workdir_or_checkpoint, volume, *, mask_ratio=None, seed=0)``: the MAE of a
  run on a volume preprocessed as in training: input / masked / reconstruction / error, slice by slice.
- :class:`AttentionViewer` ``(workdir_or_checkpoint_or_model, volume, *, layer=-1, head="mean")``: ViT attention
  (per layer and head, CLS or query patch, rollout) mapped to voxels and overlaid on the volume.
- :class:`ExperimentLauncher` ``(preset="demo", workdir=None)``: start / stop / resume ``medjax pretrain`` in a
  background process, with a live loss curve and the run's checkpoints.
- :class:`FederatedView` ``(workdir, *, rounds=None, command=None)``: a federated run's sites, rounds, global
  and per-site loss curves and epsilon spent, refreshed from ``WORKDIR/metrics.jsonl`` while it runs.
- :class:`AdapterSwitcher` ``(base, {name: finetune_workdir}, volume)``: several task adapters (PEFT runs) over
  one base encoder read once; a toggle switches between them and shows each one's prediction on the same volume.

Every viewer displays itself (``_repr_mimebundle_``: the live widget plus a static ``image/png`` of the current
view, so notebooks exported to HTML show the figure without a kernel) and exposes ``.widget`` for layouts.
Pure attention helpers (numpy, no widgets) live in :mod:`medjax.interactive.attention`.

Nothing is imported until used, so ``import medjax.interactive`` is cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "VolumeViewer": "medjax.interactive.volume_viewer",
    "ReconstructionViewer": "medjax.interactive.recon_viewer",
    "AttentionViewer": "medjax.interactive.attention_viewer",
    "ExperimentLauncher": "medjax.interactive.launcher",
    "FederatedView": "medjax.interactive.federated_view",
    "AdapterSwitcher": "medjax.interactive.adapter_switcher",
    "load_run": "medjax.interactive.checkpoints",
    "list_checkpoints": "medjax.interactive.checkpoints",
    "list_runs": "medjax.interactive.checkpoints",
    "attention_to_volume": "medjax.interactive.attention",
    "rollout": "medjax.interactive.attention",
    "cls_attention": "medjax.interactive.attention",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medjax.interactive' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
