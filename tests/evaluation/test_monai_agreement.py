"""medjax metrics against MONAI's (``monai.metrics``, installed with the interop extra) on random and hand cases.

One module so that the slow ``monai.metrics`` import is paid once; each test pins one convention (FROC
interpolation, empty masks, surface distances, surface Dice, confusion-matrix metrics).
"""

from __future__ import annotations

import numpy as np
import pytest

from medjax.evaluation import detection as det

metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")


def test_froc_matches_monai_compute_froc_score_on_random_curves():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n_images = int(rng.choice([1, 2, 3, 4, 8]))
        fp = rng.choice(np.linspace(0.1, 1.0, 10), size=int(rng.integers(0, 30)))
        n_refs = int(rng.integers(1, 12))
        tp = rng.choice(np.linspace(0.1, 1.0, 10), size=n_refs)
        tp[rng.random(n_refs) < 0.3] = 0.0
        tp[0] = 0.0  # MONAI drops the lowest threshold, meant for the score 0 of missed lesions: keep one missed
        rates = (0.125, 0.25, 0.5, 1, 2, 4, 8) if trial % 2 else (0.25, 0.5, 1, 2, 4, 8)
        m_fps, m_sens = metrics.compute_froc_curve_data(fp, tp, n_refs, n_images)
        ref_score = float(metrics.compute_froc_score(m_fps, m_sens, rates))
        fps, sens, _ = det.froc_curve(fp, np.where(tp > 0, tp, -np.inf), n_images)
        ours = det.froc_sensitivity(fps, sens, rates)
        assert float(np.mean(ours)) == pytest.approx(ref_score, abs=1e-12), trial
        for r, v in zip(rates, ours):
            assert v == pytest.approx(float(metrics.compute_froc_score(m_fps, m_sens, (r,))), abs=1e-12), (trial, r)
