"""Classifiers on frozen features, pure numpy/scipy: standardisation, L2-regularised logistic regression with the
regularisation chosen by grouped cross-validation, and cosine k-nearest-neighbours.

Shapes: features ``(N, D)`` float, labels ``(N,)`` int class indices in ``[0, K)``, groups ``(N,)`` (e.g. the
volume each window came from, so cross-validation never splits a volume). Scores are ``(N, K)`` class
probabilities (linear) or neighbour votes (k-NN); both are deterministic for the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strengths tried (per sample, on standardised features)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature ``(x - mean) / std`` with the training set's statistics (std floored at 1e-6)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        x = np.asarray(x, np.float64)
        return cls(x.mean(0), np.maximum(x.std(0), 1e-6))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean) / self.std


def _class_weights(y: np.ndarray, k: int) -> np.ndarray:
    """Per-sample weights that give every present class the same total weight (mean weight 1)."""
    counts = np.bincount(y, minlength=k).astype(np.float64)
    present = counts > 0
    w_class = np.zeros(k)
    w_class[present] = len(y) / (present.sum() * counts[present])
    return w_class[y]


def fit_logistic(x: np.ndarray, y: np.ndarray, k: int, lam: float, *, balanced: bool = True) -> np.ndarray:
    """Multinomial logistic regression (softmax; K=2 included) with L2 ``lam`` on the weights (not the bias).

    Args:
      x: standardised features ``(N, D)``; y: labels ``(N,)``; k: classes; lam: L2 strength per sample.
      balanced: weigh classes equally (rare positives count as much as the common negatives).

    Returns ``W`` ``(D + 1, K)`` float64 (last row the bias), found by L-BFGS on the convex objective.
    """
    from scipy.optimize import minimize

    x = np.asarray(x, np.float64)
    n, d = x.shape
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    onehot = np.eye(k)[y]
    sw = _class_weights(y, k) if balanced else np.ones(n)
    sw = sw / sw.sum()
    reg = np.ones((d + 1, 1))
    reg[-1] = 0.0

    def objective(flat):
        w = flat.reshape(d + 1, k)
        z = xb @ w
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        loss = -(sw * (onehot * logp).sum(1)).sum() + 0.5 * lam * ((w * reg) ** 2).sum()
        grad = xb.T @ (sw[:, None] * (np.exp(logp) - onehot)) + lam * w * reg
        return loss, grad.ravel()

    res = minimize(objective, np.zeros((d + 1) * k), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-8})
    return res.x.reshape(d + 1, k)


def predict_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, K)`` of standardised features ``x`` under ``w`` from :func:`fit_logistic`."""
    z = np.asarray(x, np.float64) @ w[:-1] + w[-1]
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _score(probs: np.ndarray, y: np.ndarray) -> float:
    """Model-selection score: the class-balanced mean log-likelihood of the labels (higher is better; unlike
    AUROC it does not tie between regularisation strengths that rank the samples alike)."""
    w = _class_weights(y, probs.shape[1])
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float((w * np.log(p)).sum() / w.sum())


def choose_lambda(x: np.ndarray, y: np.ndarray, groups: np.ndarray, k: int, folds: int = 4,
                  lambdas=LAMBDAS) -> tuple[float, dict]:
    """The L2 strength with the best mean held-out log-likelihood over ``folds`` group folds (groups dealt round-robin
    in sorted order, deterministic); ties go to the stronger regularisation. Returns ``(lam, {lam: score})``."""
    uniq = np.unique(groups)
    folds = min(folds, len(uniq))
    if folds < 2:
        return float(lambdas[len(lambdas) // 2]), {}
    fold_of = {g: i % folds for i, g in enumerate(uniq)}
    fid = np.asarray([fold_of[g] for g in groups])
    scores = {}
    for lam in lambdas:
        vals = []
        for f in range(folds):
            tr, te = fid != f, fid == f
            if len(np.unique(y[tr])) < 2:
                continue
            std = Standardizer.fit(x[tr])
            w = fit_logistic(std(x[tr]), y[tr], k, lam)
            vals.append(_score(predict_logistic(w, std(x[te])), y[te]))
        scores[float(lam)] = float(np.mean(vals)) if vals else float("nan")
    finite = {lam: s for lam, s in scores.items() if np.isfinite(s)}
    if not finite:
        return float(lambdas[len(lambdas) // 2]), scores
    best = max(finite.values())
    return max(lam for lam, s in finite.items() if s >= best - 1e-12), scores


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, num_classes: int,
               temperature: float = 0.07) -> np.ndarray:
    """Cosine k-NN votes ``(N_test, K)``: each of the ``k`` most similar training samples votes for its class with
    weight ``exp(similarity / temperature)``; votes are normalised to sum to 1. Features are compared after
    standardisation with the training statistics and L2 normalisation. Ties in similarity go to the earlier
    training sample (stable sort)."""
    std = Standardizer.fit(train_x)

    def unit(v):
        v = std(v)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    a, b = unit(train_x), unit(test_x)
    k = max(1, min(int(k), len(a)))
    sim = b @ a.T  # (N_test, N_train)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sim, idx, axis=1)
    w = np.exp((s - s.max(1, keepdims=True)) / temperature)
    votes = np.zeros((len(b), num_classes))
    np.add.at(votes, (np.repeat(np.arange(len(b)), k), np.asarray(train_y)[idx].ravel()), w.ravel())
    return votes / votes.sum(1, keepdims=True)


def _one_blas_thread():
    """Run BLAS on one thread: these problems are small (a few thousand x a few hundred), and OpenBLAS's thread
    hand-offs cost ~10x the arithmetic on a busy machine (72 s vs 7 s measured for one window-level fit)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it BLAS keeps its own threads
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1)


def fit_and_score(kind: str, train_x, train_y, train_groups, test_x, num_classes: int, knn_k: int = 20) -> dict:
    """Fit probe ``kind`` (``linear`` or ``knn``) on the training features and score the test features.

    Returns ``{"scores": (N_test, K), "lambda": chosen L2 or None, "cv": {lam: score}}``."""
    with _one_blas_thread():
        return _fit_and_score(kind, train_x, train_y, train_groups, test_x, num_classes, knn_k)


def _fit_and_score(kind, train_x, train_y, train_groups, test_x, num_classes, knn_k):
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y = np.asarray(train_y, np.int64)
    if kind == "knn":
        return {"scores": knn_scores(train_x, train_y, test_x, knn_k, num_classes), "lambda": None, "cv": {}}
    if kind != "linear":
        raise ValueError(f"probe kind {kind!r}: use 'linear' or 'knn'")
    lam, cv = choose_lambda(train_x, train_y, np.asarray(train_groups), num_classes)
    std = Standardizer.fit(train_x)
    w = fit_logistic(std(train_x), train_y, num_classes, lam)
    return {"scores": predict_logistic(w, std(test_x)), "lambda": lam, "cv": cv}
