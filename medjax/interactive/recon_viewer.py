"""ReconstructionViewer: what a pretrained MAE makes of a volume: input / masked / reconstruction / error.

``ReconstructionViewer("runs/demo", "data/demo/imagesTr/sub-000.nii.gz")`` loads the run's config and latest
checkpoint, preprocesses the volume as training did (:func:`medjax.interactive.checkpoints.model_input`), runs the
MAE once per mask draw, and shows the four images slice by slice (RAS+ display orientation, as
:class:`~medjax.interactive.volume_viewer.VolumeViewer`), with a mask-ratio slider and a re-sample button.
"""

from __future__ import annotations

import numpy as np

from medjax.interactive import render
from medjax.interactive.attention import attention_to_volume
from medjax.interactive.checkpoints import load_run, model_input
from medjax.interactive.render import PLANES, Panel, WidgetDisplay

OUTPUTS = ("input", "masked", "reconstruction", "error")


def as_display_volume(x: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A model-space array ``(*S[, C])`` (2D or 3D, channel 0 kept) reoriented to RAS+ as a 3D volume
    ``(X, Y, Z)``, with its affine; 2D inputs become one voxel thick along the slice normal."""
    from medjax.data.transforms import reorient

    a = np.asarray(x)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected a 2D or 3D array; got shape {a.shape}")
    out, aff = reorient(a, affine, "RAS", has_channels=False)
    return np.ascontiguousarray(out), aff


class ReconstructionViewer(WidgetDisplay):
    """MAE reconstructions of one volume, slice by slice.

    Args:
      workdir_or_checkpoint: a ``medjax pretrain`` workdir (latest checkpoint), a checkpoint directory
        ``WORKDIR/checkpoints/<step>`` or a :class:`~medjax.interactive.checkpoints.LoadedRun`.
      volume: path / nibabel image / :class:`~medjax.data.image.Image` / array ``(X, Y, Z[, C])``.
      mask_ratio: fraction of patches hidden (default: the model's ``mask_ratio``).
      seed: seeds the mask; :meth:`resample` draws the next mask from it.
      step: checkpoint step (default: latest or the one named).
      affine: ``(4, 4)`` voxel -> RAS+ mm for array volumes.
      plane: initial plane (``"sagittal"``, ``"coronal"``, ``"axial"``).

    Attributes: ``run`` (the loaded model), ``x`` (model input ``(*S, C)``), ``x_affine``, ``outputs``
    (``{"input", "masked", "reconstruction", "error", "mask"}``, each ``(*S)`` in model voxel order, channel 0;
    ``error = |reconstruction - input|``, zero on visible patches; ``mask`` 1 on masked voxels), ``loss``
    (the MAE loss of this draw), ``widget``.
    """

    def __init__(self, workdir_or_checkpoint, volume, *, mask_ratio: float | None = None, seed: int = 0,
                 step: int | None = None, affine=None, plane: str = "axial", interactive: bool = True):
        self.run = load_run(workdir_or_checkpoint, step)
        model = self.run.model
        if not hasattr(model, "reconstruct"):
            raise TypeError(f"ReconstructionViewer needs an MAE; got {type(model).__name__}")
        self.x, self.x_affine = model_input(self.run, volume, affine)
        self.mask_ratio = float(model.mask_ratio if mask_ratio is None else mask_ratio)
        self.seed = int(seed)
        self.draw = 0
        self._forward = _make_forward(model)
        shape3d = as_display_volume(self.x[..., 0], self.x_affine)[0].shape
        self.display_shape = shape3d
        self.planes = tuple(p for p in PLANES if _shows(shape3d, p))
        self.plane = plane if plane in self.planes else self.planes[-1]
        self.index = {p: shape3d[render.FIXED_AXIS[p]] // 2 for p in PLANES}
        self.widget = None
        self._hold = False
        self._compute()
        if interactive:
            self._build_widgets()
            self.refresh()

    # -- model ---------------------------------------------------------------------------------------------------
    def _compute(self) -> None:
        import jax

        key = jax.random.fold_in(jax.random.key(self.seed), self.draw)
        loss, mask, masked, recon = self._forward(self.x[None], key, self.mask_ratio)
        model = self.run.model
        inp = self.x[..., 0]
        rec = np.asarray(recon)[0, ..., 0]
        voxel_mask = attention_to_volume(np.asarray(mask)[0], model.grid, model.patch)
        self.outputs = {
            "input": inp,
            "masked": np.asarray(masked)[0, ..., 0],
            "reconstruction": rec,
            "error": np.abs(rec - inp) * voxel_mask,
            "mask": voxel_mask,
        }
        self.loss = float(loss)
        self._display = {k: as_display_volume(v, self.x_affine) for k, v in self.outputs.items()}
        self._gray_window = render.auto_window(inp)
        err = self.outputs["error"]
        self._error_max = float(np.percentile(err[voxel_mask > 0], 99)) if (voxel_mask > 0).any() else 1.0
        self._error_max = self._error_max if self._error_max > 0 else 1.0

    def resample(self) -> None:
        """Draw a new random mask (the next one from ``seed``) and redraw."""
        self.draw += 1
        self._compute()
        self.refresh()

    def set_mask_ratio(self, ratio: float) -> None:
        """Hide ``ratio`` of the patches (0 <= ratio < 1) and redraw."""
        self.mask_ratio = float(ratio)
        if self.widget is not None and abs(self._ratio.value - ratio) > 1e-9:
            self._ratio.value = ratio  # observer recomputes
            return
        self._compute()
        self.refresh()

    # -- views ---------------------------------------------------------------------------------------------------
    def slices(self, plane: str | None = None, index: int | None = None) -> dict[str, np.ndarray]:
        """``{name: 2D array}`` for ``OUTPUTS`` (and ``"mask"``) at ``plane``/``index`` (default: current), in
        display orientation (row 0 at the top)."""
        plane = plane or self.plane
        index = self.index[plane] if index is None else int(index)
        return {k: np.array(render.display_slice(v[0], plane, index)) for k, v in self._display.items()}

    def panels(self) -> list[Panel]:
        """The current view: four :class:`~medjax.interactive.render.Panel` s."""
        sl = self.slices()
        width, level = self._gray_window
        aff = self._display["input"][1]
        lay = render.plane_layout(self.plane)
        extent = render.slice_extent(aff, self.display_shape, self.plane)
        common = {"extent": extent, "letters": lay.letters, "xlabel": f"{render.world_axis_name(lay.col_axis)} (mm)",
                  "ylabel": f"{render.world_axis_name(lay.row_axis)} (mm)"}
        out = [Panel(gray=render.window_level(sl[k], width, level), title=k, **common)
               for k in ("input", "masked", "reconstruction")]
        out.append(Panel(gray=sl["error"], title="|error| (masked)", cmap="magma", vmin=0.0, vmax=self._error_max,
                         **common))
        return out

    def to_png(self) -> bytes:
        mm = render.axis_world_mm(self._display["input"][1], self.display_shape, render.FIXED_AXIS[self.plane])
        where = f"{self.plane} {render.world_axis_name(render.FIXED_AXIS[self.plane])} = " \
                f"{mm[self.index[self.plane]]:.1f} mm"
        step = f"step {self.run.step}, " if self.run.step is not None else ""
        title = f"MAE {step}mask ratio {self.mask_ratio:.2f}, draw {self.draw}, loss {self.loss:.4f}; {where}"
        return render.render_png(self.panels(), suptitle=title, panel_inches=2.8)

    def refresh(self) -> None:
        if self.widget is not None:
            self.image.value = self.to_png()
            self._status.value = f"loss {self.loss:.4f} (mask ratio {self.mask_ratio:.2f}, draw {self.draw})"

    # -- widgets -------------------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w

        self.image = w.Image(format="png", layout=w.Layout(width="auto"))
        self._plane = w.Dropdown(options=self.planes, value=self.plane, description="plane",
                                 layout=w.Layout(width="200px"))
        n = self.display_shape[render.FIXED_AXIS[self.plane]]
        self._slice = w.IntSlider(value=self.index[self.plane], min=0, max=n - 1, description="slice",
                                  continuous_update=False)
        self._ratio = w.FloatSlider(value=self.mask_ratio, min=0.0, max=0.95, step=0.05, description="mask ratio",
                                    continuous_update=False)
        self._button = w.Button(description="re-sample", icon="refresh", tooltip="draw a new random mask")
        self._status = w.Label()
        self._plane.observe(self._on_plane, names="value")
        self._slice.observe(self._on_slice, names="value")
        self._ratio.observe(lambda ch: self.set_mask_ratio(float(ch["new"])), names="value")
        self._button.on_click(lambda _: self.resample())
        self.widget = w.VBox([self.image, w.HBox([self._plane, self._slice]),
                              w.HBox([self._ratio, self._button, self._status])])

    def _on_plane(self, change) -> None:
        self.plane = change["new"]
        n = self.display_shape[render.FIXED_AXIS[self.plane]]
        self._hold = True
        try:
            self._slice.max = n - 1
            self._slice.value = self.index[self.plane]
        finally:
            self._hold = False
        self.refresh()

    def _on_slice(self, change) -> None:
        self.index[self.plane] = int(change["new"])
        if not self._hold:
            self.refresh()

    def __repr__(self) -> str:
        return f"ReconstructionViewer({self.run!r}, input {self.x.shape}, mask ratio {self.mask_ratio:.2f})"


def _shows(shape, plane: str) -> bool:
    lay = render.plane_layout(plane)
    return shape[lay.row_axis] > 1 and shape[lay.col_axis] > 1


def _make_forward(model):
    """Jitted ``(x (B, *S, C), key, mask_ratio) -> (loss, mask (B, L), masked, recon)`` for an NNX MAE."""
    import functools

    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnums=3)
    def forward(state, x, key, ratio):
        m = nnx.merge(graphdef, state)
        loss, aux = m(x, mask_key=key, mask_ratio=ratio, deterministic=True)
        r = m.reconstruct(x, aux["pred"], aux["mask"])
        return loss, aux["mask"], r["masked"], r["recon"]

    return lambda x, key, ratio: forward(state, x, key, round(float(ratio), 4))
