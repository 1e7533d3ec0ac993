"""The pure distillation step: the shared train step (:func:`medjax.training.steps.train_step_fn`) with a loss
that runs the frozen teacher inside the same jitted computation.

The teacher's parameters are an *argument* of the jitted step (placed once on the mesh, never donated, never
differentiated, with no optimizer state): ``step(state, batch)`` as the shared loop expects is
``jitted(state, batch, teacher_params)``. Everything else (gradient accumulation, clipping, the non-finite guard,
the randomness per step) is the shared step's, so resume and logging behave as in pretraining.

Per step (batch ``image`` ``(B, *S, C)``): teacher tokens ``(B, P_t + L, D_t)`` of the full input; student tokens
``(B, P_s + K, D_s)`` of the full input (K = L) or, with ``distill.mask_ratio`` > 0, of the MAE-style visible
patches only (mask drawn from the step's mask key, as pretraining draws it); the student's tokens are projected
to ``D_t`` and matched token by token with the teacher's at the same patches (and the CLS token when both have
one).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from medjax.distill.losses import feature_loss
from medjax.models.masking import random_masking


def distill_loss(model, batch: dict, mask_key: jax.Array, *, teacher_def, teacher_params, kind: str = "smooth_l1",
                 beta: float = 1.0, mask_ratio: float = 0.0, deterministic: bool = False):
    """``(loss, aux)`` of a :class:`~medjax.distill.student.Student` ``model`` against the frozen teacher.

    aux: ``{"student": (B, T, D_t) projected student tokens, "teacher": (B, T, D_t) matched teacher tokens}``.
    """
    images = batch["image"]
    teacher = teacher_def.merge(jax.tree.map(jax.lax.stop_gradient, teacher_params)).encoder
    t = jax.lax.stop_gradient(teacher(images, deterministic=True))
    student = model.encoder
    pt, ps = teacher.num_prefix_tokens, student.num_prefix_tokens
    if tuple(student.grid) != tuple(teacher.grid):
        raise ValueError(f"student patch grid {tuple(student.grid)} differs from the teacher's {tuple(teacher.grid)}; "
                         "give the student the teacher's patch size (model.variant=S/16 for a B/16 teacher)")
    t_patches = t[:, pt:]
    if mask_ratio > 0:
        m = random_masking(mask_key, images.shape[0], student.num_patches, mask_ratio)
        s = student(images, deterministic=deterministic, visible_ids=m.ids_keep)
        t_patches = jnp.take_along_axis(t_patches, m.ids_keep[:, :, None], axis=1)
    else:
        s = student(images, deterministic=deterministic)
    s = model.project(s)
    s_match, t_match = s[:, ps:], t_patches
    if ps and pt:  # both have a CLS token: match it too
        s_match = jnp.concatenate([s[:, :1], s_match], axis=1)
        t_match = jnp.concatenate([t[:, :1], t_match], axis=1)
    loss = feature_loss(s_match, t_match, kind, beta=beta)
    return loss, {"student": s_match, "teacher": t_match}


class BoundStep:
    """``step(state, batch)`` over a jitted ``f(state, batch, teacher_params)`` with the teacher bound; ``lower``
    and ``compile`` as the shared loop uses them with several processes."""

    def __init__(self, fn, teacher_params):
        self._fn, self._teacher = fn, teacher_params

    def __call__(self, state, batch):
        return self._fn(state, batch, self._teacher)

    def rebind(self, teacher_args) -> "BoundStep":
        """The same compiled step bound to other teacher arrays (same shapes and shardings: no recompilation)."""
        return BoundStep(self._fn, teacher_args)

    def lower(self, state, batch):
        lowered = self._fn.lower(state, batch, self._teacher)
        teacher = self._teacher

        class _Lowered:
            def compile(self):
                return BoundStep(lowered.compile(), teacher)

        return _Lowered()


def make_teacher_step(model_def, tx, schedule, make_loss, teacher_args, teacher_shardings, *, state_shardings=None,
                      batch_sharding=None, grad_accum: int = 1, max_nonfinite: int | None = None, trainable=None,
                      donate: bool = True) -> BoundStep:
    """The shared train step with a loss that reads frozen teacher arrays, jitted once with the teacher as an
    argument: ``make_loss(teacher_args) -> loss_fn(model, batch, key)`` is called inside the trace.

    ``teacher_args``: a pytree of arrays (placed with ``teacher_shardings``, a like pytree, when
    ``state_shardings`` is given); only the state (argument 0) is donated. Returns a :class:`BoundStep`.
    """
    from medjax.training.steps import train_step_fn

    def fn(state, batch, args):
        step = train_step_fn(model_def, tx, schedule, loss_fn=make_loss(args), grad_accum=grad_accum,
                             max_nonfinite=max_nonfinite, trainable=trainable)
        return step(state, batch)

    kwargs: dict = {"donate_argnums": (0,) if donate else ()}
    if state_shardings is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        mesh = jax.tree.leaves(state_shardings)[0].mesh
        kwargs["in_shardings"] = (state_shardings, batch_sharding, teacher_shardings)
        kwargs["out_shardings"] = (state_shardings, NamedSharding(mesh, PartitionSpec()))
    return BoundStep(jax.jit(fn, **kwargs), teacher_args)


def make_distill_step(model_def, tx, schedule, teacher, dcfg, *, state_shardings=None, batch_sharding=None,
                      grad_accum: int = 1, max_nonfinite: int | None = None, donate: bool = True) -> BoundStep:
    """The jitted representation-distillation step for the student ``model_def`` against ``teacher``
    (:class:`~medjax.distill.teacher.Teacher`) with the settings ``dcfg`` (``cfg.distill``).

    Jitted once, donating only the state; trace it inside the mesh context. Returns a :class:`BoundStep`.
    """
    def make_loss(teacher_params):
        return partial(distill_loss, teacher_def=teacher.model_def, teacher_params=teacher_params,
                       kind=dcfg.loss, beta=float(dcfg.beta), mask_ratio=float(dcfg.mask_ratio))

    return make_teacher_step(model_def, tx, schedule, make_loss, teacher.params, teacher.shardings,
                             state_shardings=state_shardings, batch_sharding=batch_sharding, grad_accum=grad_accum,
                             max_nonfinite=max_nonfinite, donate=donate)
