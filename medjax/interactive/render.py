"""Shared rendering for the viewers: window/level, display orientation of the three planes, PNG figures, and the
static-PNG fallback in each viewer's mimebundle.

Display convention (radiological by default, as most clinical viewers): volumes are first reoriented to RAS+
(array axes increase towards patient Right, Anterior, Superior); then

- sagittal (fixed x): Superior up, Anterior on the screen's left;
- coronal (fixed y): Superior up, patient's Right on the screen's left (``"neurological"``: Left on the left);
- axial (fixed z): Anterior up, patient's Right on the screen's left (``"neurological"``: Left on the left).

A displayed 2D slice is ``(rows, cols)``: row 0 is the top of the screen, column 0 its left edge. Tick labels
are world coordinates in millimetres (RAS+) along the displayed axes.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field

import numpy as np

PLANES = ("sagittal", "coronal", "axial")
FIXED_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
CONVENTIONS = ("radiological", "neurological")
# (width, level) in Hounsfield units
CT_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (80.0, 40.0),
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
_WORLD_NAMES = ("x", "y", "z")
_POS_LETTER = ("R", "A", "S")
_NEG_LETTER = ("L", "P", "I")


# ----------------------------------------------------------------------------------------------- window / level
def window_level(array, width: float, level: float) -> np.ndarray:
    """Map intensities to display grey levels in ``[0, 1]`` (float32): ``level - width/2`` -> 0, ``level +
    width/2`` -> 1, clipped outside. ``width`` must be > 0 (same units as ``array``, e.g. HU)."""
    width = float(width)
    if not width > 0:
        raise ValueError(f"window width must be > 0; got {width}")
    lo = float(level) - width / 2.0
    out = (np.asarray(array, dtype=np.float32) - np.float32(lo)) / np.float32(width)
    return np.clip(out, 0.0, 1.0)


def auto_window(array, lo: float = 1.0, hi: float = 99.0) -> tuple[float, float]:
    """``(width, level)`` spanning the ``lo``..``hi`` percentiles of the non-zero voxels (all voxels if none
    is non-zero): the usual automatic window for MRI, whose intensities have no absolute scale."""
    a = np.asarray(array, dtype=np.float32)
    a = a[np.isfinite(a)]
    nz = a[a != 0]
    values = nz if nz.size else a
    if values.size == 0:
        return 1.0, 0.5
    p_lo, p_hi = (float(v) for v in np.percentile(values, [lo, hi]))
    if not p_hi > p_lo:
        p_lo, p_hi = float(values.min()), float(values.max())
    if not p_hi > p_lo:
        return 1.0, p_lo
    return p_hi - p_lo, (p_hi + p_lo) / 2.0


def looks_like_ct(array, modality: str | None = None) -> bool:
    """Whether intensities are Hounsfield units: the DICOM modality says CT, or (no modality) the data reach
    well below zero as air does (-1000 HU), which MRI magnitudes never do."""
    if modality:
        return str(modality).upper() == "CT"
    a = np.asarray(array)
    return bool(a.size) and float(np.nanmin(a)) <= -500.0


def resolve_window(window, array, *, modality: str | None = None) -> tuple[float, float]:
    """``(width, level)`` for ``window``: ``None`` (``"brain"`` for CT, automatic otherwise), ``"auto"``, a CT
    preset name from :data:`CT_PRESETS`, or a ``(width, level)`` pair."""
    if window is None:
        window = "brain" if looks_like_ct(array, modality) else "auto"
    if isinstance(window, str):
        if window == "auto":
            return auto_window(array)
        if window not in CT_PRESETS:
            raise ValueError(f"window={window!r}: use 'auto', one of {sorted(CT_PRESETS)} or (width, level)")
        return CT_PRESETS[window]
    width, level = (float(v) for v in window)
    if not width > 0:
        raise ValueError(f"window=(width={width}, level={level}): the width must be > 0")
    return width, level


# ----------------------------------------------------------------------------------------------- plane geometry
@dataclass(frozen=True)
class PlaneLayout:
    """How one plane of a RAS+ volume is laid out on screen.

    ``row_axis``/``col_axis``: the volume axes shown down the rows / across the columns; ``row_flip``/
    ``col_flip``: whether index 0 of that axis is at the bottom / right (i.e. the axis is reversed on screen);
    ``letters``: orientation letters at (top, bottom, left, right).
    """

    plane: str
    fixed_axis: int
    row_axis: int
    row_flip: bool
    col_axis: int
    col_flip: bool
    letters: tuple[str, str, str, str]


def plane_layout(plane: str, convention: str = "radiological") -> PlaneLayout:
    """The :class:`PlaneLayout` of ``plane`` (``"sagittal"``, ``"coronal"``, ``"axial"``) for a RAS+ volume."""
    if plane not in FIXED_AXIS:
        raise ValueError(f"plane={plane!r}: use one of {PLANES}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r}: use one of {CONVENTIONS}")
    fixed = FIXED_AXIS[plane]
    if plane == "sagittal":  # rows: z (S at top); cols: y with A on the left
        row, col, col_flip = 2, 1, True
    elif plane == "coronal":  # rows: z (S at top); cols: x
        row, col, col_flip = 2, 0, convention == "radiological"
    else:  # axial: rows: y (A at top); cols: x
        row, col, col_flip = 1, 0, convention == "radiological"
    top, bottom = _POS_LETTER[row], _NEG_LETTER[row]
    left, right = (_POS_LETTER[col], _NEG_LETTER[col]) if col_flip else (_NEG_LETTER[col], _POS_LETTER[col])
    return PlaneLayout(plane, fixed, row, True, col, col_flip, (top, bottom, left, right))


def display_slice(volume, plane: str, index: int, convention: str = "radiological") -> np.ndarray:
    """The 2D slice of a RAS+ volume ``(X, Y, Z[, ...])`` at ``index`` along ``plane``'s fixed axis, laid out
    for the screen: ``(rows, cols[, ...])``, row 0 at the top, column 0 at the left (a view, no copy)."""
    lay = plane_layout(plane, convention)
    vol = np.asarray(volume) if not isinstance(volume, np.ndarray) else volume
    n = vol.shape[lay.fixed_axis]
    if not 0 <= int(index) < n:
        raise IndexError(f"{plane} slice {index} out of range: the volume has {n} slices along that axis")
    sl = np.take(vol, int(index), axis=lay.fixed_axis)
    # remaining spatial axes keep their order; move (row, col) first
    remaining = [a for a in range(3) if a != lay.fixed_axis]
    order = (remaining.index(lay.row_axis), remaining.index(lay.col_axis)) + tuple(range(2, sl.ndim))
    out = np.transpose(sl, order)
    if lay.row_flip:
        out = out[::-1]
    if lay.col_flip:
        out = out[:, ::-1]
    return out


def axis_world_mm(affine, shape, axis: int) -> np.ndarray:
    """World coordinate (mm, RAS+) along world axis ``axis`` of each voxel index along array ``axis`` of a RAS+
    volume, through the volume centre (exact for axis-aligned affines)."""
    a = np.asarray(affine, dtype=np.float64)
    centre = (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    idx = np.arange(shape[axis], dtype=np.float64)
    vox = np.repeat(centre[None], idx.size, axis=0)
    vox[:, axis] = idx
    return (vox @ a[:3, :3].T + a[:3, 3])[:, axis]


def slice_extent(affine, shape, plane: str, convention: str = "radiological") -> tuple[float, float, float, float]:
    """``(left, right, bottom, top)`` in mm of a displayed slice (voxel edges), for ``imshow(extent=...)``."""
    lay = plane_layout(plane, convention)

    def edges(axis):
        mm = axis_world_mm(affine, shape, axis)
        step = (mm[-1] - mm[0]) / (len(mm) - 1) if len(mm) > 1 else float(np.linalg.norm(np.asarray(affine)[:3, axis]))
        return mm[0] - step / 2, mm[-1] + step / 2

    c0, c1 = edges(lay.col_axis)
    r0, r1 = edges(lay.row_axis)
    left, right = (c1, c0) if lay.col_flip else (c0, c1)
    bottom, top = (r0, r1) if lay.row_flip else (r1, r0)
    return float(left), float(right), float(bottom), float(top)


def world_axis_name(axis: int) -> str:
    return _WORLD_NAMES[axis]


# ----------------------------------------------------------------------------------------------- colours
def label_colors(n: int) -> np.ndarray:
    """``(n + 1, 4)`` RGBA for labels 0..n: 0 transparent, then a fixed qualitative palette (tab10/tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    colors = np.zeros((n + 1, 4))
    for k in range(1, n + 1):
        colors[k] = cmap((k - 1) % cmap.N)
    return colors


def label_rgba(labels, alpha: float, n: int | None = None) -> np.ndarray:
    """Integer label slice ``(H, W)`` -> RGBA ``(H, W, 4)`` float32, background (0) transparent."""
    lab = np.asarray(labels).astype(np.int64)
    n = int(lab.max()) if n is None else int(n)
    colors = label_colors(max(n, 1)).astype(np.float32)
    out = colors[np.clip(lab, 0, max(n, 1))]
    out[..., 3] *= np.float32(alpha)
    return out


def heat_rgba(values, alpha: float, vmin: float, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """Heat-map slice ``(H, W)`` -> RGBA ``(H, W, 4)``, opacity growing with the value (low values see-through)."""
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float32)
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((v - vmin) / span, 0.0, 1.0)
    out = colormaps[cmap](t).astype(np.float32)
    out[..., 3] = np.float32(alpha) * np.sqrt(t)
    return out


def mask_rgba(mask, alpha: float, color=(1.0, 0.1, 0.1)) -> np.ndarray:
    """Binary mask slice ``(H, W)`` -> RGBA ``(H, W, 4)`` in one colour."""
    m = np.asarray(mask) > 0
    out = np.zeros(m.shape + (4,), dtype=np.float32)
    out[m, :3] = color
    out[m, 3] = alpha
    return out


# ----------------------------------------------------------------------------------------------- figures
@dataclass
class Panel:
    """One image in a figure.

    ``gray``: ``(H, W)`` display grey levels in ``[0, 1]`` (row 0 at the top); ``overlays``: RGBA ``(H, W, 4)``
    layers drawn on top in order; ``extent``: ``(left, right, bottom, top)`` in mm (None: pixel axes without
    ticks); ``letters``: orientation letters (top, bottom, left, right) or None; ``xlabel``/``ylabel``: axis
    titles; ``crosshair``: ``(x_mm, y_mm)`` lines or None.
    """

    gray: np.ndarray
    title: str = ""
    overlays: list = field(default_factory=list)
    extent: tuple | None = None
    letters: tuple | None = None
    xlabel: str = ""
    ylabel: str = ""
    crosshair: tuple | None = None
    cmap: str = "gray"
    vmin: float = 0.0
    vmax: float = 1.0


def render_png(panels: list[Panel], *, ncols: int | None = None, panel_inches: float = 3.2, dpi: int = 80,
               suptitle: str = "") -> bytes:
    """Draw ``panels`` side by side (``ncols`` per row, default all) with matplotlib (Agg, no pyplot, safe
    off the main thread) and return PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    ncols = min(ncols or n, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(panel_inches * ncols, panel_inches * nrows + (0.3 if suptitle else 0)), dpi=dpi)
    FigureCanvasAgg(fig)
    for i, p in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _draw_panel(ax, p)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _draw_panel(ax, p: Panel) -> None:
    kw = {"extent": p.extent} if p.extent is not None else {}
    ax.imshow(p.gray, cmap=p.cmap, vmin=p.vmin, vmax=p.vmax, interpolation="nearest", origin="upper",
              aspect="equal", **kw)
    for layer in p.overlays:
        ax.imshow(layer, interpolation="nearest", origin="upper", aspect="equal", **kw)
    ax.set_title(p.title, fontsize=9)
    if p.extent is None:
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.tick_params(labelsize=7)
        ax.set_xlabel(p.xlabel, fontsize=8)
        ax.set_ylabel(p.ylabel, fontsize=8)
    if p.crosshair is not None:
        ax.axvline(p.crosshair[0], color="#3fa7ff", lw=0.6, alpha=0.7)
        ax.axhline(p.crosshair[1], color="#3fa7ff", lw=0.6, alpha=0.7)
    if p.letters is not None:
        top, bottom, left, right = p.letters
        style = {"transform": ax.transAxes, "color": "#ffd24a", "fontsize": 9, "fontweight": "bold"}
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
        ax.text(0.02, 0.5, left, ha="left", va="center", **style)
        ax.text(0.98, 0.5, right, ha="right", va="center", **style)


# ----------------------------------------------------------------------------------------------- display mixin
class WidgetDisplay:
    """Mixin for viewers holding an ipywidgets ``self.widget`` and able to draw ``self.to_png()``.

    The mimebundle holds the live widget view and a static ``image/png`` of the current view: Jupyter shows the
    widget; a notebook exported to HTML without widget state (nbconvert) shows the PNG instead.
    """

    widget = None

    def to_png(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        bundle = {}
        live = getattr(self.widget, "_repr_mimebundle_", None)
        if live is not None:
            out = live(include=include, exclude=exclude, **kwargs)
            bundle.update(out[0] if isinstance(out, tuple) else (out or {}))
        bundle["image/png"] = base64.b64encode(self.to_png()).decode("ascii")
        bundle["text/plain"] = repr(self)
        return bundle
