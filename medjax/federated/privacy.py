"""Client-side differential privacy for federated averaging: clip each site's update, add Gaussian noise at the
site, and account for the privacy spent over rounds (DP-FedAvg, McMahan et al. 2018). Pure numpy plus
``dp-accounting``; no Flower import, so the server, the sites and the tests share one definition.

What is protected. A site's *update* (its parameters after local training minus the global parameters it
started from, as named arrays) is clipped to global L2 norm ``C`` and then noised with ``N(0, (sigma C)^2)`` per
coordinate, where ``sigma`` is the noise multiplier. Whatever a site holds (one patient or its whole data set)
can then move what it sends by at most ``C`` in L2 norm, so everything downstream of the noised updates (each
update seen by the coordinator, the aggregate, every global model and metric computed from them) is
``(epsilon, delta)``-differentially private with respect to that site's data, and therefore also with respect to
any one patient in it (a patient belongs to one site). ``epsilon`` is the bound on how much the released models
can reveal about whether a given site's (or patient's) data took part: the log of the largest ratio between the
probabilities of any outcome with and without it, except with probability ``delta``.

Where the noise is added, and why. :func:`add_gaussian_noise` adds the *full* ``sigma C`` at every site, not
the ``sigma C / sqrt(n)`` of distributed DP (where only the sum of ``n`` updates carries ``sigma C``):

- the coordinator sees each site's update unless secure aggregation hides them; with full per-site noise each
  update it sees is already private, so the reported ``epsilon`` holds against the coordinator too;
- with ``sigma C / sqrt(n)`` the guarantee silently weakens when sites drop out of a round (fewer noise shares
  in the sum) and rests entirely on secure aggregation being on and correct.

The price: the average of ``n`` noised updates carries noise std ``sigma C / sqrt(n)`` per coordinate
(:func:`aggregate_noise_std`), ``sqrt(n)`` times more than central DP would need for the same ``epsilon``. With
the few sites of a hospital consortium that is the honest trade.

What it does not protect: data that leaves a site by other routes (metrics, logs, file names: the federated
app sends only parameters and aggregate metrics); a model that memorises without being released (the site's
own local model); the fact that a site is a member of the consortium (public anyway); and nothing at all when
``epsilon`` is large. Sites are few and take part every round (``sampling_rate`` 1: no amplification by
sampling), so meaningful budgets (``epsilon`` of a few units) need ``sigma`` well above 1 and few rounds.

Accounting. :class:`PrivacyAccountant` composes one Poisson-sampled Gaussian mechanism per round (each site
takes part with probability ``sampling_rate``, the round's fraction of sites; 1.0 when every site trains every
round) with the Renyi-DP accountant of ``dp-accounting``, and converts to ``epsilon`` at the given ``delta``.
A ``sampling_rate`` below 1 lowers ``epsilon`` only towards observers who do not learn which sites took part
(readers of the global model); the coordinator knows, so towards it count with ``sampling_rate`` 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["clip_update", "add_gaussian_noise", "aggregate_noise_std", "update_norm", "PrivacyAccountant"]

_SHRINK_TRIES = 64


def _check_update(update: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    if not isinstance(update, Mapping) or not update:
        raise ValueError(f"{what}: the update must be a non-empty dict of named float arrays, got {type(update).__name__}")
    out = {}
    for key, value in update.items():
        a = np.asarray(value)
        if a.dtype.kind != "f":
            raise ValueError(f"{what}: update[{key!r}] has dtype {a.dtype}; updates are float arrays "
                             "(parameter differences)")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{what}: update[{key!r}] holds NaN or infinite values; the local training diverged "
                             "(lower the learning rate or local steps)")
        out[key] = a
    return out


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {need}, got {value!r}")
    return v


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm over every coordinate of every array of ``update`` (accumulated in float64)."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in update.values()))


def clip_update(update: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``update`` so that its global L2 norm is at most ``clip_norm``.

    Args:
      update: named float arrays (any shapes), the site's parameter difference.
      clip_norm: ``C`` > 0, in the units of the parameters.

    Returns:
      ``(clipped, norm)``: ``norm`` is the global L2 norm before clipping (float64). When ``norm <= C`` the
      arrays are returned unchanged (the same objects); otherwise every array is multiplied by one factor
      close to ``C / norm``, chosen so that the norm of the stored (rounded, same dtype) result is ``<= C``
      exactly, not just up to rounding.
    """
    arrays = _check_update(update, "clip_update")
    c = _check_positive("clip_norm", clip_norm)
    norm = update_norm(arrays)
    if norm <= c:
        return dict(arrays), norm
    factor = c / norm
    for _ in range(_SHRINK_TRIES):
        out = {k: (a.astype(np.float64) * factor).astype(a.dtype) for k, a in arrays.items()}
        if update_norm(out) <= c:
            return out, norm
        # float32 rounding pushed the norm a hair above C: shrink by a few units in the last place and retry
        eps = max(float(np.finfo(a.dtype).eps) for a in arrays.values())
        factor *= 1.0 - 2.0 * eps
    raise RuntimeError(f"clip_update: could not bring the norm {norm} below {c}")  # pragma: no cover


def add_gaussian_noise(update: Mapping[str, np.ndarray], clip_norm: float, noise_multiplier: float,
                       rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Add ``N(0, (noise_multiplier * clip_norm)^2)`` independently to every coordinate of a clipped update.

    This is the per-site noise of client-side DP: each site adds the *full* standard deviation ``sigma C``
    (not ``sigma C / sqrt(n)``), so each update is private on its own, also towards the coordinator, and
    dropouts cannot weaken the guarantee; see the module docs for the reasoning and the cost.

    Args:
      update: named float arrays, already clipped to ``clip_norm`` (:func:`clip_update`).
      clip_norm: ``C`` > 0, the clipping norm used.
      noise_multiplier: ``sigma`` >= 0 (0 adds nothing, and gives no privacy).
      rng: the site's generator; draw it from a seed the coordinator does not know.

    Returns:
      A new dict: each array plus noise, in the array's dtype (noise drawn in float64, then cast).
    """
    arrays = _check_update(update, "add_gaussian_noise")
    std = _check_positive("clip_norm", clip_norm) * _check_positive("noise_multiplier", noise_multiplier,
                                                                    allow_zero=True)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(...)), got {type(rng).__name__}")
    return {k: (a.astype(np.float64) + rng.normal(0.0, std, size=a.shape)).astype(a.dtype) if std > 0 else a.copy()
            for k, a in arrays.items()}


def aggregate_noise_std(clip_norm: float, noise_multiplier: float, sites: int) -> float:
    """Noise std per coordinate in the plain average of ``sites`` noised updates: ``sigma C / sqrt(sites)``."""
    return float(clip_norm) * float(noise_multiplier) / math.sqrt(int(sites))


class PrivacyAccountant:
    """``(epsilon, delta)`` spent by a federated run with per-site clipping and Gaussian noise.

    Each round is one Poisson-sampled Gaussian mechanism (``dp_accounting.PoissonSampledDpEvent(sampling_rate,
    GaussianDpEvent(noise_multiplier))``), composed with ``dp_accounting``'s Renyi-DP accountant.

    Args:
      noise_multiplier: ``sigma`` (noise std over clipping norm); 0 means no privacy (``epsilon`` infinite).
      sampling_rate: probability that a site takes part in a round, in ``(0, 1]`` (``federated.fraction``;
        1.0 when every site trains every round).
      delta: target ``delta`` in ``(0, 1)``, typically below 1 / (number of patients).

    ``step(rounds)`` records rounds; ``epsilon()`` is the total spent so far (0.0 before any round);
    ``round_epsilon()`` is what one round alone spends.
    """

    def __init__(self, noise_multiplier: float, sampling_rate: float, delta: float):
        self.noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
        q = float(sampling_rate)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"sampling_rate must be in (0, 1] (the fraction of sites per round), got {sampling_rate!r}")
        d = float(delta)
        if not 0.0 < d < 1.0:
            raise ValueError(f"delta must be in (0, 1), typically below 1 / (number of patients), got {delta!r}")
        self.sampling_rate, self.delta = q, d
        self.rounds = 0
        self._cache: dict[int, float] = {}

    def _event(self):
        from dp_accounting import dp_event

        return dp_event.PoissonSampledDpEvent(self.sampling_rate, dp_event.GaussianDpEvent(self.noise_multiplier))

    def step(self, rounds: int = 1) -> PrivacyAccountant:
        """Record ``rounds`` more rounds (>= 0); returns ``self``."""
        n = int(rounds)
        if n < 0 or n != rounds:
            raise ValueError(f"rounds must be a non-negative integer, got {rounds!r}")
        self.rounds += n
        return self

    def epsilon(self) -> float:
        """Total ``epsilon`` at ``delta`` after the recorded rounds (``inf`` with no noise).

        The rounds are identical mechanisms, so they are composed in one call
        (``RdpAccountant().compose(event, rounds)``; the same as composing them one by one, in one RDP evaluation).
        """
        if self.rounds == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        if self.rounds not in self._cache:
            from dp_accounting.rdp import rdp_privacy_accountant

            accountant = rdp_privacy_accountant.RdpAccountant()
            accountant.compose(self._event(), self.rounds)
            self._cache[self.rounds] = float(accountant.get_epsilon(self.delta))
        return self._cache[self.rounds]

    def round_epsilon(self) -> float:
        """``epsilon`` of a single round at ``delta`` (rounds compose sub-additively: total <= rounds x this)."""
        return PrivacyAccountant(self.noise_multiplier, self.sampling_rate, self.delta).step(1).epsilon()

    def __repr__(self) -> str:
        return (f"PrivacyAccountant(noise_multiplier={self.noise_multiplier:g}, sampling_rate={self.sampling_rate:g}, "
                f"delta={self.delta:g}, rounds={self.rounds}, epsilon={self.epsilon():.4g})")
