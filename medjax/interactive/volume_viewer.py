"""VolumeViewer: three orthogonal planes of a volume with slice, window/level and overlay controls.

``VolumeViewer("data/demo/imagesTr/sub-000.nii.gz", label="data/demo/labelsTr/sub-000.nii.gz")`` in a notebook
cell shows the sagittal, coronal and axial planes through the chosen voxel, reoriented to RAS+ for display so
any stored orientation (LPS, PIR, ...) appears the same way; see :mod:`medjax.interactive.render` for the
on-screen convention. The figure is drawn with matplotlib into an ``ipywidgets.Image`` (PNG), so it works in
any front end and the image bytes change whenever a control moves.
"""

from __future__ import annotations

import os

import numpy as np

from medjax.data.image import Image, orientation_code
from medjax.errors import DataError
from medjax.interactive import render
from medjax.interactive.render import CT_PRESETS, PLANES, Panel, WidgetDisplay

_OVERLAYS = ("label", "mask", "overlay")
_WINDOW_CHOICES = ("auto",) + tuple(CT_PRESETS) + ("custom",)


# ----------------------------------------------------------------------------------------------- inputs
def as_image(src, affine=None, *, is_label: bool = False, channel: int = 0, what: str = "volume") -> Image:
    """A 3D :class:`Image` ``(X, Y, Z)`` from a path (NIfTI / DICOM), a nibabel image, an :class:`Image` or an
    array (with ``affine``: ``(4, 4)`` voxel -> RAS+ mm; default 1 mm voxels, RAS).

    4D / channels-last inputs keep channel ``channel``; 2D ``(X, Y)`` inputs get a third axis of one voxel.
    """
    if isinstance(src, (str, os.PathLike)):
        from medjax.data.io import read_image

        img = read_image(src, check=False, is_label=is_label)
    elif isinstance(src, Image):
        img = src
    elif hasattr(src, "dataobj") and hasattr(src, "affine"):  # nibabel image
        img = Image(np.asarray(src.dataobj), np.asarray(src.affine, dtype=np.float64), has_channels=len(src.shape) == 4)
    else:
        arr = np.asarray(src)
        img = Image(arr, np.eye(4), has_channels=arr.ndim == 4)
    if affine is not None:  # an explicit affine wins (arrays have none of their own)
        img = Image(img.array, np.asarray(affine, dtype=np.float64), img.path, img.has_channels, img.extra)
    arr = np.asarray(img.array)
    if img.has_channels or arr.ndim == 4:
        if not 0 <= channel < arr.shape[-1]:
            raise DataError(img.path or what, f"channel {channel} out of range: the {what} has {arr.shape[-1]}")
        arr = arr[..., channel]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(img.path or what, f"{what} must be 2D or 3D (optionally with channels); got shape {arr.shape}")
    aff = np.asarray(img.affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise DataError(img.path or what, f"{what} affine must be (4, 4) voxel -> RAS+ mm; got {aff.shape}")
    return Image(arr, aff, img.path, False, dict(img.extra))


def _to_ras(img: Image) -> tuple[np.ndarray, np.ndarray]:
    from medjax.data.transforms import reorient

    arr, aff = reorient(np.asarray(img.array), img.affine, "RAS", has_channels=False)
    return np.ascontiguousarray(arr), aff


# ----------------------------------------------------------------------------------------------- viewer
class VolumeViewer(WidgetDisplay):
    """Three orthogonal planes of a volume, RAS+ display orientation, slice / window / overlay controls.

    Args:
      src: NIfTI/DICOM path, nibabel image, :class:`~medjax.data.image.Image` or array ``(X, Y, Z)`` (2D
        ``(X, Y)`` and channels-last inputs accepted; channel 0 is shown).
      label: label map on the same voxel grid (path / image / array), drawn with a discrete colour per class.
      mask: binary (lesion) mask on the same grid, drawn in red.
      overlay: heat map ``(X, Y, Z)`` float on the same grid (e.g. attention), drawn with a colour map.
      affine: ``(4, 4)`` voxel -> RAS+ mm for array inputs (default: 1 mm voxels, RAS).
      window: ``None`` (CT: ``"brain"``; otherwise automatic percentiles), ``"auto"``, a CT preset name
        (``"brain"`` 80/40, ``"soft tissue"`` 400/40, ``"lung"`` 1500/-600, ``"bone"`` 1800/400 HU) or
        ``(width, level)`` in the image's units.
      convention: ``"radiological"`` (patient's right on the screen's left) or ``"neurological"``.
      title: figure title (default: the file name).

    Attributes: ``array`` (RAS+ ``(X, Y, Z)``), ``affine`` (its voxel -> RAS+ mm), ``stored_orientation`` (code
    of the input, e.g. ``"LPS"``), ``index`` (``{plane: slice index}``), ``planes`` (planes shown), ``widget``.
    """

    def __init__(self, src, *, label=None, mask=None, overlay=None, affine=None, window=None,
                 convention: str = "radiological", title: str | None = None, interactive: bool = True):
        img = as_image(src, affine)
        self.stored_orientation = orientation_code(img.affine)
        self.array, self.affine = _to_ras(img)
        self.shape = tuple(self.array.shape)
        self.modality = img.extra.get("modality")
        self.convention = convention
        render.plane_layout("axial", convention)  # validate
        self.title = title if title is not None else (os.path.basename(img.path) if img.path else "")
        self._src_affine = img.affine
        self._src_shape = tuple(img.array.shape)
        self.layers: dict[str, np.ndarray | None] = {name: None for name in _OVERLAYS}
        self._heat_range = (0.0, 1.0)
        self._n_labels = 1
        for name, value in (("label", label), ("mask", mask), ("overlay", overlay)):
            if value is not None:
                self.set_layer(name, value, redraw=False)
        self.planes = tuple(p for p in PLANES if self._shows(p))
        self.index = {p: self.shape[render.FIXED_AXIS[p]] // 2 for p in PLANES}
        self.window = render.resolve_window(window, self.array, modality=self.modality)
        self._window_name = window if isinstance(window, str) else ("custom" if window is not None else None)
        self.opacity = 0.5
        self.visible = {name: True for name in _OVERLAYS}
        self.widget = None
        self._hold = False
        self.slice_callbacks: list = []  # f(plane, index) called after a slice moves, before the redraw
        if interactive:
            self._build_widgets()
            self.refresh()

    # -- data ---------------------------------------------------------------------------------------------------
    def _shows(self, plane: str) -> bool:
        lay = render.plane_layout(plane, self.convention)
        return self.shape[lay.row_axis] > 1 and self.shape[lay.col_axis] > 1

    def set_layer(self, name: str, value, *, affine=None, redraw: bool = True) -> None:
        """Set (or clear with ``None``) overlay ``name`` (``"label"``, ``"mask"`` or ``"overlay"``): a path,
        image or array on the volume's stored voxel grid (arrays: same shape as the volume as given)."""
        if name not in _OVERLAYS:
            raise ValueError(f"overlay name {name!r}: use one of {_OVERLAYS}")
        if value is None:
            self.layers[name] = None
        else:
            is_array = not isinstance(value, (str, os.PathLike, Image)) and not hasattr(value, "dataobj")
            layer = as_image(value, self._src_affine if (is_array and affine is None) else affine,
                             is_label=name != "overlay", what=name)
            if layer.array.shape != self._src_shape or not np.allclose(layer.affine, self._src_affine, atol=1e-3):
                raise DataError(layer.path or name, f"{name} is not on the volume's voxel grid (shape "
                                f"{tuple(layer.array.shape)} vs {self._src_shape}, or another affine); resample it "
                                "onto the volume first")
            arr = _to_ras(layer)[0]
            if name == "overlay":
                arr = arr.astype(np.float32)
                finite = arr[np.isfinite(arr)]
                self._heat_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            else:
                arr = np.rint(arr).astype(np.int32) if arr.dtype.kind == "f" else arr.astype(np.int32)
                if name == "label":
                    self._n_labels = max(int(arr.max()), 1)
            self.layers[name] = arr
        if redraw and self.widget is not None:
            self._sync_overlay_controls()
            self.refresh()

    def set_overlay(self, heat, *, affine=None) -> None:
        """Replace the heat-map overlay (``(X, Y, Z)`` on the stored grid, or ``None``) and redraw."""
        self.set_layer("overlay", heat, affine=affine)

    def slice_image(self, plane: str, index: int | None = None) -> np.ndarray:
        """The 2D array shown for ``plane`` at slice ``index`` (default: current), in display orientation
        (row 0 at the top of the screen), raw intensities (before window/level)."""
        index = self.index[plane] if index is None else index
        return np.array(render.display_slice(self.array, plane, index, self.convention))

    def slice_layer(self, name: str, plane: str, index: int | None = None) -> np.ndarray | None:
        """The 2D overlay ``name`` for ``plane`` at ``index`` (display orientation), or None if unset."""
        layer = self.layers[name]
        if layer is None:
            return None
        index = self.index[plane] if index is None else index
        return np.array(render.display_slice(layer, plane, index, self.convention))

    def letters(self, plane: str) -> tuple[str, str, str, str]:
        """Orientation letters at the (top, bottom, left, right) edges of ``plane``."""
        return render.plane_layout(plane, self.convention).letters

    def slice_mm(self, plane: str, index: int | None = None) -> float:
        """World position (mm along x, y or z) of ``plane``'s slice ``index`` (default: current)."""
        axis = render.FIXED_AXIS[plane]
        index = self.index[plane] if index is None else index
        return float(render.axis_world_mm(self.affine, self.shape, axis)[int(index)])

    def panels(self) -> list[Panel]:
        """The current view as :class:`~medjax.interactive.render.Panel` s, one per shown plane."""
        width, level = self.window
        out = []
        for plane in self.planes:
            lay = render.plane_layout(plane, self.convention)
            gray = render.window_level(self.slice_image(plane), width, level)
            overlays = []
            if self.layers["label"] is not None and self.visible["label"]:
                overlays.append(render.label_rgba(self.slice_layer("label", plane), self.opacity, self._n_labels))
            if self.layers["mask"] is not None and self.visible["mask"]:
                overlays.append(render.mask_rgba(self.slice_layer("mask", plane), self.opacity))
            if self.layers["overlay"] is not None and self.visible["overlay"]:
                overlays.append(render.heat_rgba(self.slice_layer("overlay", plane), self.opacity,
                                                 *self._heat_range))
            cross = (self.slice_mm(_PLANE_OF_AXIS[lay.col_axis]), self.slice_mm(_PLANE_OF_AXIS[lay.row_axis]))
            out.append(Panel(
                gray=gray, overlays=overlays,
                title=f"{plane}  {render.world_axis_name(lay.fixed_axis)} = {self.slice_mm(plane):.1f} mm "
                      f"[{self.index[plane]}]",
                extent=render.slice_extent(self.affine, self.shape, plane, self.convention),
                letters=lay.letters, crosshair=cross,
                xlabel=f"{render.world_axis_name(lay.col_axis)} (mm)",
                ylabel=f"{render.world_axis_name(lay.row_axis)} (mm)",
            ))
        return out

    def to_png(self) -> bytes:
        """The current view as PNG bytes."""
        title = self.title + (f"  (stored {self.stored_orientation})" if self.title else "")
        return render.render_png(self.panels(), suptitle=title)

    # -- programmatic control ----------------------------------------------------------------------------------
    def set_slice(self, plane: str, index: int) -> None:
        """Show slice ``index`` (voxels along x / y / z of the RAS+ volume) in ``plane``."""
        n = self.shape[render.FIXED_AXIS[plane]]
        if not 0 <= int(index) < n:
            raise IndexError(f"{plane} slice {index} out of range 0..{n - 1}")
        if self.widget is not None:
            self._sliders[plane].value = int(index)  # observer redraws
        else:
            self._on_slice(plane, int(index))

    def set_window(self, window) -> None:
        """Window: ``"auto"``, a CT preset name or ``(width, level)``."""
        self.window = render.resolve_window(window, self.array, modality=self.modality)
        if self.widget is not None:
            self._hold = True
            try:
                self._preset.value = window if isinstance(window, str) else "custom"
                self._width.value, self._level.value = self.window
            finally:
                self._hold = False
            self.refresh()

    def refresh(self) -> None:
        """Redraw the figure into the widget."""
        if self.widget is not None:
            for plane in PLANES:
                self._mm_labels[plane].value = f"{render.world_axis_name(render.FIXED_AXIS[plane])} = " \
                                               f"{self.slice_mm(plane):.1f} mm"
            self.image.value = self.to_png()

    # -- widgets ------------------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w

        self.image = w.Image(format="png", layout=w.Layout(width="auto"))
        self._sliders, self._mm_labels, rows = {}, {}, []
        for plane in PLANES:
            n = self.shape[render.FIXED_AXIS[plane]]
            s = w.IntSlider(value=self.index[plane], min=0, max=n - 1, description=plane,
                            continuous_update=False, layout=w.Layout(width="360px"))
            s.observe(lambda ch, p=plane: self._on_slice(p, ch["new"]), names="value")
            self._sliders[plane] = s
            self._mm_labels[plane] = w.Label()
            if n > 1:
                rows.append(w.HBox([s, self._mm_labels[plane]]))
        lo, hi = float(np.nanmin(self.array)), float(np.nanmax(self.array))
        span = max(hi - lo, 1e-6)
        width, level = self.window
        initial = self._window_name if self._window_name in _WINDOW_CHOICES else (
            "auto" if self._window_name is None and not render.looks_like_ct(self.array, self.modality) else
            ("brain" if self._window_name is None else "custom"))
        self._preset = w.Dropdown(options=_WINDOW_CHOICES, value=initial, description="window",
                                  layout=w.Layout(width="220px"))
        self._width = w.FloatSlider(value=width, min=span / 1000, max=max(2 * span, width), step=span / 500,
                                    description="width", continuous_update=False, readout_format=".4g")
        self._level = w.FloatSlider(value=level, min=min(lo - span / 2, level), max=max(hi + span / 2, level),
                                    step=span / 500, description="level", continuous_update=False,
                                    readout_format=".4g")
        self._preset.observe(self._on_preset, names="value")
        self._width.observe(self._on_window, names="value")
        self._level.observe(self._on_window, names="value")
        self._opacity = w.FloatSlider(value=self.opacity, min=0.0, max=1.0, step=0.05, description="opacity",
                                      continuous_update=False)
        self._opacity.observe(self._on_opacity, names="value")
        self._toggles = {}
        for name in _OVERLAYS:
            cb = w.Checkbox(value=True, description=name, indent=False, layout=w.Layout(width="90px"))
            cb.observe(lambda ch, n=name: self._on_toggle(n, ch["new"]), names="value")
            self._toggles[name] = cb
        self._overlay_box = w.HBox([])
        self._sync_overlay_controls()
        controls = w.VBox(rows + [w.HBox([self._preset, self._width, self._level]), self._overlay_box])
        self.widget = w.VBox([self.image, controls])

    def _sync_overlay_controls(self) -> None:
        present = [self._toggles[n] for n in _OVERLAYS if self.layers[n] is not None]
        self._overlay_box.children = tuple(present + [self._opacity]) if present else ()

    def _on_slice(self, plane: str, value: int) -> None:
        self.index[plane] = int(value)
        for callback in self.slice_callbacks:
            callback(plane, int(value))
        if not self._hold:
            self.refresh()

    def _on_preset(self, change) -> None:
        name = change["new"]
        if name == "custom" or self._hold:
            return
        self.set_window(name)

    def _on_window(self, change) -> None:
        if self._hold:
            return
        self.window = (float(self._width.value), float(self._level.value))
        self._hold = True
        try:
            self._preset.value = "custom"
        finally:
            self._hold = False
        self.refresh()

    def _on_opacity(self, change) -> None:
        self.opacity = float(change["new"])
        self.refresh()

    def _on_toggle(self, name: str, value: bool) -> None:
        self.visible[name] = bool(value)
        self.refresh()

    def __repr__(self) -> str:
        return (f"VolumeViewer({self.title or 'array'}: {self.shape} RAS+ from {self.stored_orientation}, "
                f"window {self.window[0]:.4g}/{self.window[1]:.4g})")


_PLANE_OF_AXIS = {render.FIXED_AXIS[p]: p for p in PLANES}

