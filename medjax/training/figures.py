"""Matplotlib figures written at the end of a run (Agg backend, no display needed).

- ``reconstructions/step_XXXXXX.png``: rows = samples (for 3D: each sample's three orthogonal mid-slices),
  columns = input / masked / reconstruction / absolute error.
- ``loss.png``: the training loss against the step.

Volumes are in RAS+ voxel order (``(X, Y, Z)``: right, anterior, superior); slices are drawn with the second
in-plane axis pointing up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = ("input", "masked", "reconstruction", "|error|")
PLANES_3D = ("sagittal", "coronal", "axial")


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """The middle 2D slices of ``volume`` ``(*S,)`` (channel already removed): one for 2D, three for 3D
    (sagittal ``(Y, Z)``, coronal ``(X, Z)``, axial ``(X, Y)``)."""
    v = np.asarray(volume)
    if v.ndim == 2:
        return [v]
    if v.ndim != 3:
        raise ValueError(f"mid_slices: expected a 2D or 3D array, got shape {v.shape}")
    x, y, z = (s // 2 for s in v.shape)
    return [v[x, :, :], v[:, y, :], v[:, :, z]]


def panel_rows(images: np.ndarray, masked: np.ndarray, recon: np.ndarray) -> list[tuple[str, list[np.ndarray]]]:
    """Rows of 2D panels ``(label, [input, masked, recon, |error|])`` from ``(N, *S, C)`` arrays (channel 0)."""
    rows = []
    for i in range(images.shape[0]):
        per = [mid_slices(a[i, ..., 0]) for a in (images, masked, recon)]
        err = mid_slices(np.abs(recon[i, ..., 0] - images[i, ..., 0]))
        names = PLANES_3D if images.ndim == 5 else ("slice",)
        for p, plane in enumerate(names):
            rows.append((f"sample {i} {plane}", [per[0][p], per[1][p], per[2][p], err[p]]))
    return rows


def save_reconstructions(path, images, masked, recon, *, title: str = "") -> str:
    """Write the reconstruction grid PNG to ``path``; arrays ``(N, *S, C)`` float in input intensity units.

    Input, masked and reconstruction share one grey scale (the input's 1st-99th percentile); the error has its
    own. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images, masked, recon = (np.asarray(a, np.float32) for a in (images, masked, recon))
    rows = panel_rows(images, masked, recon)
    lo, hi = np.percentile(images, [1, 99]) if images.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    ehi = max(float(np.percentile(np.abs(recon - images), 99)), 1e-6)
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.0 * len(rows)), squeeze=False)
    for r, (label, panels) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            vmin, vmax = (0.0, ehi) if c == 3 else (lo, hi)
            ax.imshow(panel.T, cmap="magma" if c == 3 else "gray", origin="lower", vmin=vmin, vmax=vmax,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)


def save_loss_curve(path, steps, losses, *, title: str = "training loss") -> str:
    """Write the loss-vs-step PNG to ``path``; returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(list(steps), list(losses), lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)


def tensorboard_image(panels: list[np.ndarray]) -> np.ndarray:
    """Panels (2D arrays) side by side, each scaled to [0, 1], zero-padded to a common height: ``(H, W)``."""
    scaled = []
    for p in panels:
        p = np.asarray(p, np.float32).T[::-1]  # second in-plane axis up, as in the PNGs
        lo, hi = float(p.min()), float(p.max())
        scaled.append((p - lo) / (hi - lo) if hi > lo else np.zeros_like(p))
    h = max(p.shape[0] for p in scaled)
    padded = [np.pad(p, ((0, h - p.shape[0]), (0, 1))) for p in scaled]
    return np.concatenate(padded, axis=1)
