"""The fine-tuning methods' plot: held-out metric against trainable parameters, one point per method.

Written beside the table by :func:`medjax.peft.compare.compare_methods` (``compare_methods.png``); a plain
matplotlib ``Figure`` drawn by Agg, so no display is needed and pyplot's backend (e.g. a notebook's) is untouched.
"""

from __future__ import annotations

from pathlib import Path


def plot_methods(result: dict, path) -> Path:
    """Save a PNG of a :func:`medjax.peft.compare.compare_methods` result to ``path``.

    x: trainable parameters (log scale, count); y: the held-out metric, mean over seeds with ± sample std error
    bars (no bar for one seed); each point labelled with its method and the number of seeds. Methods without a
    finished run are left out. Returns ``path``.
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
        points.append((method, float(r["trainable_params"]), mean, std if n > 1 else 0.0, n))
    if not points:
        raise ValueError(f"{path}: no method has a finished run with a held-out {result['metric']!r} to plot")
    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["tab10"]
    for i, (method, x, y, err, n) in enumerate(points):
        ax.errorbar([x], [y], yerr=[err] if n > 1 else None, fmt="o", ms=7, capsize=4, color=colors(i % 10),
                    label=f"{method} (n={n})")
        ax.annotate(method, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    xs = [p[1] for p in points]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"held-out {result['metric']} (mean ± std over seeds)")
    seeds = result.get("seeds", [])
    ax.set_title(f"{result.get('config', '')}: {result.get('steps')} steps, seeds {seeds}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
