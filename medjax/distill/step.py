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
one). Optionally also intermediate blocks (``distill.layers``) and attention maps (``distill.attention_weight``):
see :func:`distill_loss`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from medjax.distill.losses import attention_kl, feature_loss
from medjax.models.masking import random_masking


def distill_loss(model, batch: dict, mask_key: jax.Array, *, teacher_def, teacher_params, kind: str = "smooth_l1",
                 beta: float = 1.0, mask_ratio: float = 0.0, layer_weight: float = 1.0,
                 attention_weight: float = 0.0, deterministic: bool = False):
    """``(loss, aux)`` of a :class:`~medjax.distill.student.Student` ``model`` against the frozen teacher.

    ``loss = final + layer_weight * mean_pairs(layer) + attention_weight * mean_pairs(attention)``:

    - final: ``feature_loss`` (``kind``, ``beta``) between the projected student tokens and the teacher's tokens
      after the final LayerNorm, at the patches the student sees (and the CLS token when both have one);
    - layer (only with ``model.layer_pairs``): the same on the outputs of each (student, teacher) block pair, each
      side through a parameter-free LayerNorm, the student's through its pair's projection;
    - attention (only with ``attention_weight`` > 0): :func:`~medjax.distill.losses.attention_kl` between the
      attention maps of the same block pairs (the last blocks when there are none), both restricted to the
      matched tokens and renormalised; heads averaged when the head counts differ.

    aux: ``student`` / ``teacher`` (B, T, D_t) matched final tokens, ``final``, ``layer`` and ``attention`` losses.
    """
    from medjax.distill.layers import match_indices, normalize_tokens, take_attention, take_tokens

    images = batch["image"]
    teacher = teacher_def.merge(jax.tree.map(jax.lax.stop_gradient, teacher_params)).encoder
    student = model.encoder
    pt, ps = teacher.num_prefix_tokens, student.num_prefix_tokens
    if tuple(student.grid) != tuple(teacher.grid):
        raise ValueError(f"student patch grid {tuple(student.grid)} differs from the teacher's {tuple(teacher.grid)}; "
                         "give the student the teacher's patch size (model.variant=S/16 for a B/16 teacher)")
    pairs = tuple(getattr(model, "layer_pairs", ()))
    attn_pairs = (pairs or ((len(student.blocks), len(teacher.blocks)),)) if attention_weight > 0 else ()
    want_attn = bool(attn_pairs)

    def run(encoder, layers, **kw):
        out = encoder(images, return_attention=want_attn, return_layers=layers, **kw)
        out = out if isinstance(out, tuple) else (out,)
        tokens, rest = out[0], list(out[1:])
        attn = rest.pop(0) if want_attn else None
        hidden = dict(zip(layers, rest.pop(0))) if layers else {}
        return tokens, attn, hidden

    t_tokens, t_attn, t_hidden = run(teacher, tuple(sorted({t for _, t in pairs})), deterministic=True)
    t_tokens = jax.lax.stop_gradient(t_tokens)
    ids_keep = None
    kw = {}
    if mask_ratio > 0:
        ids_keep = random_masking(mask_key, images.shape[0], student.num_patches, mask_ratio).ids_keep
        kw["visible_ids"] = ids_keep
    s_tokens, s_attn, s_hidden = run(student, tuple(sorted({s for s, _ in pairs})), deterministic=deterministic,
                                     **kw)
    s_idx, t_idx = match_indices(ps, pt, student.num_patches, ids_keep)
    s_match, t_match = take_tokens(model.project(s_tokens), s_idx), take_tokens(t_tokens, t_idx)
    final = feature_loss(s_match, t_match, kind, beta=beta)
    loss = final
    layer = jnp.zeros((), jnp.float32)
    if pairs:
        per = [feature_loss(normalize_tokens(take_tokens(model.project_layer(i, s_hidden[s]), s_idx)),
                            normalize_tokens(take_tokens(t_hidden[t], t_idx)), kind, beta=beta)
               for i, (s, t) in enumerate(pairs)]
        layer = sum(per) / len(per)
        loss = loss + layer_weight * layer
    attention = jnp.zeros((), jnp.float32)
    if attn_pairs:
        s_full = ps == 0 or pt > 0  # the student keeps all its tokens (its CLS is matched, or it has none)
        t_full = ids_keep is None and (pt == 0 or ps > 0)
        per = [attention_kl(take_attention(s_attn[s - 1], s_idx, s_full),
                            take_attention(t_attn[t - 1], t_idx, t_full)) for s, t in attn_pairs]
        attention = sum(per) / len(per)
        loss = loss + attention_weight * attention
    return loss, {"student": s_match, "teacher": t_match, "final": final, "layer": layer, "attention": attention}


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
                       kind=dcfg.loss, beta=float(dcfg.beta), mask_ratio=float(dcfg.mask_ratio),
                       layer_weight=float(dcfg.layer_weight), attention_weight=float(dcfg.attention_weight))

    return make_teacher_step(model_def, tx, schedule, make_loss, teacher.params, teacher.shardings,
                             state_shardings=state_shardings, batch_sharding=batch_sharding, grad_accum=grad_accum,
                             max_nonfinite=max_nonfinite, donate=donate)
