"""AdapterSwitcher: one base encoder in memory, several task adapters, their predictions on the same volume.

``AdapterSwitcher("runs/mae", {"tissue": "runs/tissue_lora", "lesion": "runs/lesion_lora"}, "sub-000.nii.gz")``
reads the base encoder once (:class:`medjax.peft.bank.AdapterBank`), each adapter's trainable arrays, and shows
the volume (preprocessed as the adapter's training did, reoriented to RAS+ for display) with the selected
adapter's prediction: the label map over the image for segmentation, the class probabilities (volume and per
window) for classification. A *task* toggle switches adapters; every prediction is computed once, on first view.
"""

from __future__ import annotations

import os

import numpy as np

from medjax.interactive import render
from medjax.interactive.recon_viewer import as_display_volume
from medjax.interactive.render import PLANES, Panel, WidgetDisplay


def _record(volume) -> dict:
    """A record ``{"id", "image"}`` for :func:`medjax.finetune.predict.preprocess_record` from a path or record."""
    if isinstance(volume, dict):
        return {"id": str(volume.get("id", "volume")), "image": volume["image"]}
    if isinstance(volume, (str, os.PathLike)):
        return {"id": os.path.basename(os.fspath(volume)), "image": os.fspath(volume)}
    raise TypeError(f"volume: expected a NIfTI/DICOM path or a record dict with 'image'; got {type(volume)}")


class AdapterSwitcher(WidgetDisplay):
    """Task adapters over one loaded base, switched on one volume.

    Args:
      base: the MAE workdir/checkpoint every adapter was trained over, or an
        :class:`~medjax.peft.bank.AdapterBank` (its adapters are kept).
      adapters: ``{name: workdir or checkpoint folder}`` of PEFT fine-tuning runs to add (may be empty when
        ``base`` is a bank that holds them already).
      volume: a NIfTI/DICOM path or a record dict (``{"id", "image"}``).
      adapter: the adapter shown first (default: the first one).
      plane: ``"sagittal"``, ``"coronal"`` or ``"axial"``.
      alpha: opacity of the label overlay.

    Attributes: ``bank``, ``names``, ``adapter`` (the current name), ``predictions`` (name -> dict with
    ``task``, and ``labels`` ``(X, Y, Z)`` uint8 + ``probs`` ``(X, Y, Z, K)`` for segmentation, or ``probs``
    ``(K,)`` + ``window_probs`` ``(W, K)`` for classification; all on the adapter's preprocessed grid, in its
    voxel order), ``widget``.
    """

    def __init__(self, base, adapters=None, volume=None, *, adapter: str | None = None, plane: str = "axial",
                 alpha: float = 0.45, interactive: bool = True):
        from medjax.peft.bank import AdapterBank

        self.bank = base if isinstance(base, AdapterBank) else AdapterBank(base)
        for name, path in (adapters or {}).items():
            self.bank.add(name, path)
        self.names = tuple(self.bank.adapters)
        if not self.names:
            raise ValueError("AdapterSwitcher needs at least one adapter: pass {name: fine-tuning workdir}")
        if volume is None:
            raise ValueError("AdapterSwitcher needs a volume (a NIfTI/DICOM path or a record dict)")
        self.record = _record(volume)
        self.adapter = adapter or self.names[0]
        if self.adapter not in self.names:
            raise KeyError(f"adapter={self.adapter!r}: choose one of {', '.join(self.names)}")
        self.alpha = float(alpha)
        self.predictions: dict[str, dict] = {}
        self._inputs: dict[str, dict] = {}  # preprocessed volume per data config (shared by adapters alike)
        self.plane = plane if plane in PLANES else "axial"
        self.index: dict[str, int] = {}
        self.widget = None
        self._hold = False
        self.predict(self.adapter)
        self._reset_index()
        if interactive:
            self._build_widgets()
            self.refresh()

    # -- model ---------------------------------------------------------------------------------------------------
    def _input(self, cfg) -> dict:
        """The volume preprocessed with ``cfg.data`` (once per distinct data config), plus its RAS+ display."""
        key = repr(cfg.data)
        if key not in self._inputs:
            from medjax.finetune.predict import preprocess_record

            s = preprocess_record(cfg, dict(self.record))
            image = np.asarray(s["image"], np.float32)
            shown, shown_affine = as_display_volume(image[..., 0], s["affine"])
            self._inputs[key] = {"image": image, "affine": s["affine"], "display": shown,
                                 "display_affine": shown_affine, "window": render.auto_window(shown)}
        return self._inputs[key]

    def predict(self, name: str) -> dict:
        """Adapter ``name``'s prediction on the volume (computed on first call, then cached)."""
        if name not in self.predictions:
            from medjax.finetune.predict import Predictor

            cfg, model_def, params, model_state = self.bank.model(name)
            inp = self._input(cfg)
            pred = Predictor(cfg, model_def, params, model_state)
            if cfg.task == "segmentation":
                probs = pred.segment(inp["image"])
                labels = probs.argmax(-1).astype(np.uint8)
                out = {"task": cfg.task, "probs": probs, "labels": labels,
                       "display": as_display_volume(labels, inp["affine"])[0]}
            elif cfg.task == "classification":
                window_probs, _ = pred.window_probs(inp["image"])
                out = {"task": cfg.task, "window_probs": window_probs, "probs": pred.volume_probs(window_probs)}
            else:
                raise ValueError(f"adapter {name!r}: task={cfg.task!r}; the switcher shows segmentation and "
                                 "classification adapters")
            out["num_classes"] = int(cfg.finetune.num_classes)
            self.predictions[name] = out
        return self.predictions[name]

    def select(self, name: str) -> None:
        """Show adapter ``name`` (its prediction is computed on first view)."""
        if name not in self.names:
            raise KeyError(f"adapter={name!r}: choose one of {', '.join(self.names)}")
        if self.widget is not None and self._task.value != name:
            self._task.value = name  # the observer calls back here
            return
        self.adapter = name
        self.predict(name)
        self._reset_index(keep=True)
        self.refresh()

    # -- views ---------------------------------------------------------------------------------------------------
    def _current(self) -> dict:
        return self._input(self.bank.adapters[self.adapter].cfg)

    def _reset_index(self, keep: bool = False) -> None:
        shape = self._current()["display"].shape
        for p in PLANES:
            n = shape[render.FIXED_AXIS[p]]
            self.index[p] = min(self.index[p], n - 1) if keep and p in self.index else n // 2

    def describe(self, name: str | None = None) -> str:
        """One line: the adapter, its method and size, and what it predicts on this volume."""
        name = name or self.adapter
        a, pred = self.bank.adapters[name], self.predict(name)
        head = f"{name}: {a.method}, {a.trainable_params:,} trainable parameters (step {a.step})"
        if pred["task"] == "segmentation":
            counts = np.bincount(pred["labels"].ravel(), minlength=pred["num_classes"])
            share = ", ".join(f"{k}: {c / counts.sum():.1%}" for k, c in enumerate(counts))
            return f"{head}; voxels per label {share}"
        probs = ", ".join(f"{p:.3f}" for p in pred["probs"])
        return f"{head}; class probabilities {probs} ({len(pred['window_probs'])} windows)"

    def panels(self) -> list[Panel]:
        """The current view: the input slice, and the same slice with the adapter's prediction."""
        inp, pred = self._current(), self.predict(self.adapter)
        shown, aff = inp["display"], inp["display_affine"]
        idx = self.index[self.plane]
        width, level = inp["window"]
        gray = render.window_level(np.array(render.display_slice(shown, self.plane, idx)), width, level)
        lay = render.plane_layout(self.plane)
        common = {"extent": render.slice_extent(aff, shown.shape, self.plane), "letters": lay.letters,
                  "xlabel": f"{render.world_axis_name(lay.col_axis)} (mm)",
                  "ylabel": f"{render.world_axis_name(lay.row_axis)} (mm)"}
        method = self.bank.adapters[self.adapter].method
        if pred["task"] == "segmentation":
            labels = np.array(render.display_slice(pred["display"], self.plane, idx))
            overlay = [render.label_rgba(labels, self.alpha, n=pred["num_classes"] - 1)]
            title = f"{self.adapter} ({method}): labels 1..{pred['num_classes'] - 1}"
        else:
            overlay = []
            title = f"{self.adapter} ({method}): " + ", ".join(
                f"p{k} {p:.2f}" for k, p in enumerate(pred["probs"]))
        return [Panel(gray=gray, title="input", **common),
                Panel(gray=gray, title=title, overlays=overlay, **common)]

    def to_png(self) -> bytes:
        mm = render.axis_world_mm(self._current()["display_affine"], self._current()["display"].shape,
                                  render.FIXED_AXIS[self.plane])
        axis = render.world_axis_name(render.FIXED_AXIS[self.plane])
        title = (f"{self.record['id']}: adapter {self.adapter!r} over one base ({len(self.names)} adapters); "
                 f"{self.plane} {axis} = {mm[self.index[self.plane]]:.1f} mm")
        return render.render_png(self.panels(), suptitle=title, panel_inches=3.0)

    def refresh(self) -> None:
        if self.widget is not None:
            self.image.value = self.to_png()
            self._status.value = self.describe()

    # -- widgets -------------------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w

        self.image = w.Image(format="png", layout=w.Layout(width="auto"))
        self._task = w.ToggleButtons(options=self.names, value=self.adapter, description="task")
        self._plane = w.Dropdown(options=PLANES, value=self.plane, description="plane", layout=w.Layout(width="200px"))
        n = self._current()["display"].shape[render.FIXED_AXIS[self.plane]]
        self._slice = w.IntSlider(value=self.index[self.plane], min=0, max=n - 1, description="slice",
                                  continuous_update=False)
        self._status = w.Label()
        self._task.observe(lambda ch: self._on_task(ch["new"]), names="value")
        self._plane.observe(lambda ch: self._on_plane(ch["new"]), names="value")
        self._slice.observe(self._on_slice, names="value")
        self.widget = w.VBox([self._task, self.image, w.HBox([self._plane, self._slice]), self._status])

    def _sync_slider(self) -> None:
        n = self._current()["display"].shape[render.FIXED_AXIS[self.plane]]
        self._hold = True
        try:
            self._slice.max = n - 1
            self._slice.value = self.index[self.plane]
        finally:
            self._hold = False

    def _on_task(self, name: str) -> None:
        self.adapter = name
        self.predict(name)
        self._reset_index(keep=True)
        self._sync_slider()
        self.refresh()

    def _on_plane(self, plane: str) -> None:
        self.plane = plane
        self._sync_slider()
        self.refresh()

    def _on_slice(self, change) -> None:
        self.index[self.plane] = int(change["new"])
        if not self._hold:
            self.refresh()

    def __repr__(self) -> str:
        return f"AdapterSwitcher({self.bank!r}, showing {self.adapter!r} on {self.record['id']})"
