"""Knowledge distillation: a small student encoder learns a large frozen teacher's tokens (``medjax distill``).

Modules: :mod:`~medjax.distill.losses` (smooth-L1 / cosine feature matching, soft-target KL),
:mod:`~medjax.distill.student` (student encoder + projection), :mod:`~medjax.distill.teacher` (the frozen
teacher read from a run), :mod:`~medjax.distill.step` (the jitted step, teacher inside), :mod:`~medjax.distill.run`
(the run on the shared loop).
"""

from medjax.distill.losses import cosine_distance, feature_loss, smooth_l1, soft_target_kl

__all__ = ["cosine_distance", "distill", "feature_loss", "smooth_l1", "soft_target_kl"]


def distill(*args, **kwargs):
    """:func:`medjax.distill.run.distill` (imported lazily)."""
    from medjax.distill.run import distill as _distill

    return _distill(*args, **kwargs)
