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
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")


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


# ------------------------------------------------------------------------------------------------- segmentation
from medjax.evaluation import segmentation as seg  # noqa: E402
from medjax.evaluation import surface_area  # noqa: E402


def _onehot(mask) -> "torch.Tensor":
    """(X, Y[, Z]) bool -> MONAI's (1, 2, X, Y[, Z]) one-hot batch (background, foreground)."""
    t = torch.as_tensor(np.asarray(mask, dtype=np.float32))
    return torch.stack([1 - t, t])[None]


def _random_pairs(n, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        nd = 3 if len(out) % 3 else 2
        shape = tuple(int(v) for v in rng.integers(6, 13, size=nd))
        p = ndimage.binary_opening(rng.random(shape) < 0.55)
        r = ndimage.binary_opening(rng.random(shape) < 0.55)
        if p.any() and r.any():
            out.append((p, r, tuple(float(v) for v in rng.uniform(0.4, 3.0, nd)), float(rng.uniform(0, 4))))
    return out


def test_dice_hausdorff_nsd_match_monai_on_random_masks():
    """Masks touch the array border; anisotropic spacing; 2D and 3D."""
    for i, (p, r, sp, tol) in enumerate(_random_pairs(24)):
        P, R = _onehot(p), _onehot(r)
        assert seg.dice(p, r) == pytest.approx(float(metrics.compute_dice(P, R, include_background=False)), abs=1e-6)
        for pct, ours in ((None, seg.hausdorff(p, r, sp)), (95, seg.hd95(p, r, sp))):
            theirs = float(metrics.compute_hausdorff_distance(P, R, percentile=pct, spacing=sp))
            assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6), (i, pct)
        for surface, sub in (("voxels", False), ("area", True)):
            theirs = float(metrics.compute_surface_dice(P, R, [tol], spacing=sp, use_subvoxels=sub))
            assert seg.nsd(p, r, sp, tol, surface=surface) == pytest.approx(theirs, abs=1e-6), (i, surface)


def test_surface_element_tables_match_monai():
    from monai.metrics.utils import get_code_to_measure_table

    for sp in ((1.0, 1.0, 1.0), (0.7, 1.9, 3.1), (2.5, 0.5, 1.0), (1.0, 1.0), (0.3, 2.2)):
        theirs = get_code_to_measure_table(sp)[0].numpy().astype(np.float64)
        nd = len(sp)
        n_corners = 2**nd
        # MONAI's corner weights run the other way round (the first corner is the highest bit)
        reverse = [sum(1 << b for b in range(n_corners) if c & (1 << (n_corners - 1 - b))) for c in range(2**n_corners)]
        ours = surface_area.element_measures(sp)[reverse]
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6, err_msg=str(sp))


def test_empty_mask_conventions_against_monai():
    z = np.zeros((6, 6, 6), bool)
    a = z.copy()
    a[2:4, 2:4, 2:4] = True
    Z, A = _onehot(z), _onehot(a)
    with pytest.warns(UserWarning):
        # both empty: MONAI's ignore_empty / NaN results equal medjax's empty="nan"; ignore_empty=False is "perfect"
        assert np.isnan(float(metrics.compute_dice(Z, Z, include_background=False, ignore_empty=True)))
        assert np.isnan(seg.dice(z, z, empty="nan"))
        assert float(metrics.compute_dice(Z, Z, include_background=False, ignore_empty=False)) == seg.dice(z, z)
        assert np.isnan(float(metrics.compute_hausdorff_distance(Z, Z, percentile=95)))
        assert np.isnan(seg.hd95(z, z, empty="nan"))
        for sub, surface in ((False, "voxels"), (True, "area")):
            assert np.isnan(float(metrics.compute_surface_dice(Z, Z, [1.0], use_subvoxels=sub)))
            assert np.isnan(seg.nsd(z, z, surface=surface, empty="nan"))
            # one empty: NSD 0 in both
            assert float(metrics.compute_surface_dice(Z, A, [1.0], use_subvoxels=sub)) == 0.0
            assert seg.nsd(z, a, surface=surface, empty="nan") == 0.0
        # one empty, documented differences: MONAI's ignore_empty Dice is NaN for an empty reference (medjax 0)
        # and its Hausdorff distance is NaN (medjax inf)
        assert np.isnan(float(metrics.compute_dice(A, Z, include_background=False, ignore_empty=True)))
        assert seg.dice(a, z, empty="nan") == 0.0
        assert float(metrics.compute_dice(Z, A, include_background=False, ignore_empty=True)) == 0.0
        assert np.isnan(float(metrics.compute_hausdorff_distance(Z, A, percentile=95)))
        assert np.isinf(seg.hd95(z, a))


# ------------------------------------------------------------------------------------------------- classification
from medjax.evaluation import classification as cls  # noqa: E402


def test_auroc_matches_monai_compute_roc_auc():
    rng = np.random.default_rng(5)
    for trial in range(20):
        n, k = int(rng.integers(10, 40)), int(rng.integers(2, 5))
        logits = np.round(rng.normal(size=(n, k)), 1)
        labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
        onehot = np.eye(k)[labels]
        for avg in ("macro", "weighted", "micro", None):
            theirs = metrics.compute_roc_auc(torch.as_tensor(logits), torch.as_tensor(onehot), average=avg or "none")
            np.testing.assert_allclose(cls.auroc(logits, labels, average=avg), theirs, atol=1e-12,
                                       err_msg=f"{trial} {avg}")
        multi = (rng.random((n, k)) < 0.5).astype(np.int64)
        multi[0], multi[1] = 1, 0
        theirs = metrics.compute_roc_auc(torch.as_tensor(logits), torch.as_tensor(multi), average="macro")
        assert cls.auroc(logits, multi) == pytest.approx(float(theirs), abs=1e-12)


def test_confusion_matrix_metrics_match_monai():
    rng = np.random.default_rng(6)
    for trial in range(20):
        n, k = int(rng.integers(10, 50)), int(rng.integers(2, 5))
        labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
        pred = rng.integers(0, k, n)
        cm = metrics.get_confusion_matrix(torch.as_tensor(np.eye(k)[pred]), torch.as_tensor(np.eye(k)[labels]),
                                          include_background=True).sum(0)  # (K, 4): tp, fp, tn, fn per class
        mine = cls.confusion_matrix(pred, labels, k)
        tp = np.diag(mine)
        np.testing.assert_array_equal(cm[:, 0].numpy(), tp)
        np.testing.assert_array_equal(cm[:, 1].numpy(), mine.sum(0) - tp)
        np.testing.assert_array_equal(cm[:, 3].numpy(), mine.sum(1) - tp)
        for name, fn in (("sensitivity", cls.sensitivity), ("specificity", cls.specificity)):
            per = metrics.compute_confusion_matrix_metric(name, cm).numpy()
            expected = per[1] if k == 2 else np.nanmean(per)
            assert fn(pred, labels, k) == pytest.approx(float(expected), abs=1e-6), (trial, name)
        acc = metrics.compute_confusion_matrix_metric("accuracy", cm).numpy()  # one-vs-rest accuracy per class
        assert cls.accuracy(pred, labels) == pytest.approx(float(tp.sum() / n))
        np.testing.assert_allclose(acc, (tp + (n - mine.sum(0) - mine.sum(1) + tp)) / n, atol=1e-6)


def test_real_brain_masks_match_monai_at_anisotropic_spacing():
    """MNI152 grey- and white-matter masks (real anatomy, every 4th slice along z so the voxels are 2 x 2 x 8 mm)
    against each other: Dice, HD95 and both NSD definitions agree with MONAI."""
    from nilearn.datasets import load_mni152_gm_mask, load_mni152_wm_mask

    gm = np.asarray(load_mni152_gm_mask(resolution=2).dataobj)[:, :, ::4] > 0
    wm = np.asarray(load_mni152_wm_mask(resolution=2).dataobj)[:, :, ::4] > 0
    sp = (2.0, 2.0, 8.0)
    P, R = _onehot(gm), _onehot(wm)
    assert seg.dice(gm, wm) == pytest.approx(float(metrics.compute_dice(P, R, include_background=False)), abs=1e-6)
    hd = float(metrics.compute_hausdorff_distance(P, R, percentile=95, spacing=sp))
    assert seg.hd95(gm, wm, sp) == pytest.approx(hd, rel=1e-6)
    for surface, sub in (("voxels", False), ("area", True)):
        theirs = float(metrics.compute_surface_dice(P, R, [2.0], spacing=sp, use_subvoxels=sub))
        assert seg.nsd(gm, wm, sp, 2.0, surface=surface) == pytest.approx(theirs, abs=1e-5), surface
    # the two definitions differ on real anatomy at these voxels
    assert abs(seg.nsd(gm, wm, sp, 2.0, surface="area") - seg.nsd(gm, wm, sp, 2.0)) > 1e-3
