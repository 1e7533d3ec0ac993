"""The fine-tuning methods' plot: held-out metric against trainable parameters, one point per method.

Written beside the table by :func:`medjax.peft.compare.compare_methods` (``compare_methods.png``); a plain
matplotlib ``Figure`` drawn by Agg, so no display is needed and pyplot's backend (e.g. a notebook's) is untouched.
"""

from __future__ import annotations

from pathlib import Path


def plot_methods(result: dict, path) -> Path:
    """Save a PNG of a :func:`medjax.peft.compare.compare_methods` result to ``path``.

    Left: the held-out metric (mean over seeds, ± sample std error bars; no bar for one seed) against the
    trainable parameters of the whole model (log scale); right, when the result has the counts: against the
    trainable parameters inside the encoder (symmetric log scale, so ``linear``'s 0 has a place), where the methods
    differ most (the task head, which every method trains, dominates the left panel). One marker per method,
    named in the legend with its number of seeds. Methods without a finished run are left out. Returns ``path``.
    """
    import matplotlib
    from matplotlib.figure import Figure

    from medjax.finetune.compare import _mean_std

    points = []
    for method, r in result["methods"].items():
        mean, std = _mean_std(r.get("per_seed", []))
        if mean is None or not r.get("trainable_params"):
            continue
        n = sum(v is not None for v in r["per_seed"])
        points.append((method, float(r["trainable_params"]), r.get("encoder_trainable_params"), mean,
                       std if n > 1 else 0.0, n))
    if not points:
        raise ValueError(f"{path}: no method has a finished run with a held-out {result['metric']!r} to plot")
    encoder = all(p[2] is not None for p in points)
    fig = Figure(figsize=(11.0 if encoder else 6.4, 4.4), dpi=110)
    axes = fig.subplots(1, 2 if encoder else 1, sharey=True, squeeze=False)[0]
    colors = matplotlib.colormaps["tab10"]
    markers = "osD^vPX*hp"
    for i, (method, x, xe, y, err, n) in enumerate(points):
        style = {"fmt": markers[i % len(markers)], "ms": 8, "capsize": 4, "color": colors(i % 10), "alpha": 0.85}
        axes[0].errorbar([x], [y], yerr=[err] if n > 1 else None, label=f"{method} (n={n})", **style)
        if encoder:
            axes[1].errorbar([float(xe)], [y], yerr=[err] if n > 1 else None, **style)
    xs = [p[1] for p in points]
    axes[0].set_xscale("log")
    axes[0].set_xlim(min(xs) / 2, max(xs) * 2)
    axes[0].set_xlabel("trainable parameters, whole model (log scale)")
    axes[0].set_ylabel(f"held-out {result['metric']} (mean ± std over seeds)")
    axes[0].legend(fontsize=8, loc="best")
    if encoder:
        axes[1].set_xscale("symlog", linthresh=100)
        axes[1].set_xlim(-10, max(float(p[2]) for p in points) * 3)
        axes[1].set_xlabel("trainable parameters inside the encoder (symlog: 0 = frozen)")
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3)
    seeds = result.get("seeds", [])
    fig.suptitle(f"{result.get('config', '')}: {result.get('steps')} fine-tuning steps, seeds "
                 f"{', '.join(str(s) for s in seeds)}; n = seeds finished per method", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
