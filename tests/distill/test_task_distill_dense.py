"""Task distillation for segmentation (per-voxel KL + decoder features) and detection (teacher heat map + confident
boxes): hand-computed loss values, the step's loss equal to task + weights x terms, zero for a teacher equal to the
student, no gradient into the teacher and its bits kept, and a `finetune` run with a segmentation teacher."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.finetune.conftest import tiny

LN3 = math.log(3.0)


def _state(cfg, seed):
    from medjax.finetune.tasks import build_task_model
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.state import train_state_spec

    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, tx=tx, model_factory=lambda: build_task_model(cfg, seed=seed))
    return spec, tx, schedule, spec.init()


def _arrays(st):
    return {"params": st.params, "model_state": st.model_state}


def _copy(st):
    return jax.tree.map(lambda x: x.copy(), st)


def _bits(tree):
    return jax.tree.map(np.array, tree)


def _same_bits(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), y), a, b)))


# ------------------------------------------------------------------------------------------ hand-computed values
def test_per_voxel_kl_hand_values():
    from medjax.distill.losses import soft_target_kl

    # two voxels, two labels: voxel 1 teacher (3/4, 1/4) vs student (1/2, 1/2); voxel 2 equal logits
    s = jnp.array([[[[0.0, 0.0], [2.0, 1.0]]]])  # (B=1, 1, 2 voxels, K=2)
    t = jnp.array([[[[LN3, 0.0], [2.0, 1.0]]]])
    kl1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(soft_target_kl(s, t, 1.0)) == pytest.approx(kl1 / 2, rel=1e-5)  # mean over the 2 voxels
    # T = 2: teacher (sqrt3, 1) / (1 + sqrt3), student still uniform; x T^2
    p = math.sqrt(3.0) / (1 + math.sqrt(3.0))
    kl2 = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert float(soft_target_kl(s, t, 2.0)) == pytest.approx(4.0 * kl2 / 2, rel=1e-5)


def test_heatmap_kl_and_confident_boxes_hand_values():
    from medjax.distill.losses import bernoulli_kl
    from medjax.distill.task_losses import confident_box_loss

    s = jnp.zeros((1, 2, 1, 1, 1))  # student p = 1/2 in both cells
    t = jnp.array([LN3, -LN3]).reshape(1, 2, 1, 1, 1)  # teacher p = 3/4 and 1/4
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # the same for both cells (symmetric)
    assert float(bernoulli_kl(s, t, 1.0)) == pytest.approx(kl, rel=1e-5)
    p = math.sqrt(3.0) / (1 + math.sqrt(3.0))
    assert float(bernoulli_kl(s, t, 2.0)) == pytest.approx(4.0 * (p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))),
                                                           rel=1e-5)
    assert float(bernoulli_kl(t, t, 2.0)) == pytest.approx(0.0, abs=1e-7)

    student = {"heatmap": s, "size": jnp.array([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0]]).reshape(1, 2, 1, 1, 3),
               "offset": jnp.zeros((1, 2, 1, 1, 3))}
    teacher = {"heatmap": t, "size": jnp.array([[1.5, 2.0, 3.0], [0.0, 0.0, 0.0]]).reshape(1, 2, 1, 1, 3),
               "offset": jnp.full((1, 2, 1, 1, 3), LN3)}
    # threshold 0.5: only cell 0 (p = 3/4) is a target: 0.1 x |1 - 1.5| + 3 x |1/2 - 3/4|
    loss, cells = confident_box_loss(student, teacher, 0.5)
    assert float(cells) == 1.0 and float(loss) == pytest.approx(0.1 * 0.5 + 0.75, rel=1e-5)
    # threshold 0.2: both cells, averaged over 2: cell 1 adds 0.1 x 27 + 0.75
    loss, cells = confident_box_loss(student, teacher, 0.2)
    assert float(cells) == 2.0 and float(loss) == pytest.approx((0.05 + 0.75 + 2.7 + 0.75) / 2, rel=1e-5)
    loss, cells = confident_box_loss(student, teacher, 0.9)  # no confident cell: no box target
    assert float(cells) == 0.0 and float(loss) == 0.0


def test_decoder_feature_loss_hand_values():
    from medjax.distill.task_losses import decoder_feature_loss

    s = jnp.array([[[1.0], [0.0]]])  # (B=1, 2 voxels, 1 channel): energy map (1, 0)
    t = jnp.ones((1, 2, 2))  # 2 channels: energy map (1, 1) / sqrt 2
    assert float(decoder_feature_loss(s, t)) == pytest.approx(2.0 - math.sqrt(2.0), rel=1e-5)
    assert float(decoder_feature_loss(2.0 * t, t)) == pytest.approx(0.5, rel=1e-6)  # same width: smooth-L1 (e=1)
    assert float(decoder_feature_loss(t, t)) == 0.0


# ------------------------------------------------------------------------------------------------ segmentation
@pytest.fixture(scope="module")
def seg():
    cfg = tiny("segmentation", distill_weight=0.5, temperature=3.0, distill_feature_weight=0.25)
    spec, tx, schedule, state = _state(cfg, 0)
    other = _state(cfg, 1)[3]
    k = jax.random.split(jax.random.key(0))
    batch = {"image": jax.random.normal(k[0], (2, 8, 8, 8, 1)),
             "label": jax.random.randint(k[1], (2, 8, 8, 8), 0, 3).astype(jnp.int32)}
    return cfg, spec, tx, schedule, state, other, batch


def test_segmentation_step_adds_weighted_terms_and_keeps_the_teacher(seg):
    from medjax.distill.losses import soft_target_kl
    from medjax.distill.task import TaskTeacher, make_task_distill_step
    from medjax.distill.task_losses import decoder_feature_loss, segmentation_distill_loss
    from medjax.finetune.tasks import segmentation_loss
    from medjax.training.steps import make_train_step

    cfg, spec, tx, schedule, state, other, batch = seg
    plain = make_train_step(spec.model_def, tx, schedule, donate=False,
                            loss_fn=lambda m, b, k: segmentation_loss(m, b, k, cfg=cfg))
    _, m_plain = plain(state, batch)
    teacher = TaskTeacher(spec.model_def, _arrays(other), None, "memory")
    before = _bits(teacher.arrays)
    step = make_task_distill_step(cfg, spec.model_def, tx, schedule, teacher)
    new_state, m = step(_copy(state), batch)
    _, m_same = step.rebind(_arrays(state))(_copy(state), batch)
    assert float(m_same["loss"]) == pytest.approx(float(m_plain["loss"]), abs=1e-6)  # equal teacher: both terms 0

    @jax.jit
    def terms(student, teacher, images):
        s_logits, s_feats = spec.model_def.merge(student.params, student.model_state)(images, return_features=True)
        t_logits, t_feats = spec.model_def.merge(teacher.params, teacher.model_state)(images, return_features=True)
        return soft_target_kl(s_logits, t_logits, 3.0), decoder_feature_loss(s_feats, t_feats)

    kd, feat = terms(state, other, batch["image"])
    assert float(kd) > 0 and float(feat) > 0
    expected = float(m_plain["loss"]) + 0.5 * float(kd) + 0.25 * float(feat)
    assert float(m["loss"]) == pytest.approx(expected, rel=1e-5)
    assert _same_bits(teacher.arrays, before)
    assert not _same_bits(new_state.params, _bits(state.params))  # the student did train

    # no gradient reaches the teacher's parameters
    student = spec.model_def.merge(state.params, state.model_state)
    g = jax.jit(jax.grad(lambda tp: segmentation_distill_loss(
        student, batch, None, cfg=cfg, teacher_def=spec.model_def,
        teacher_arrays={"params": tp, "model_state": other.model_state}, weight=0.5, temperature=3.0,
        feature_weight=0.25)[0]))(other.params)
    assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g))


def test_finetune_segmentation_with_a_teacher_run(tmp_path):
    from medjax.config.overrides import to_dict
    from medjax.data.testing import write_tiny_dataset
    from medjax.finetune.loop import finetune
    from medjax.finetune.tasks import build_task_model
    from medjax.training.checkpoint import Checkpointer, read_meta
    from medjax.training.state import state_to_dict, train_state_spec

    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True, spacing=(2.0, 2.0, 2.0))
    tcfg = tiny("segmentation")
    tcfg = dataclasses.replace(tcfg, data=dataclasses.replace(tcfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0)))
    with Checkpointer(tmp_path / "teacher") as ckpt:  # a segmentation run's step-0 checkpoint as the teacher
        st = train_state_spec(tcfg, model_factory=lambda: build_task_model(tcfg, seed=7)).init()
        ckpt.save(0, state_to_dict(st), meta={"config": to_dict(tcfg), "task": "segmentation"}, force=True)
        ckpt.wait()
    # the student: a shallower encoder and a narrower decoder (features matched by attention transfer)
    cfg = dataclasses.replace(tcfg, train=dataclasses.replace(tcfg.train, steps=1),
                              model=dataclasses.replace(tcfg.model, variant="Mu/4:depth=1"))
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(
        cfg.finetune, teacher=str(tmp_path / "teacher"), cache=False, decoder_features=2, distill_feature_weight=1.0))
    out = finetune(cfg, tmp_path / "student", progress=False, evaluate=False)
    assert out["step"] == 1 and np.isfinite(out["final_loss"])
    assert read_meta(tmp_path / "student")["teacher"].endswith("checkpoints/0")


# --------------------------------------------------------------------------------------------------- detection
def test_detection_step_adds_heatmap_and_box_terms_and_keeps_the_teacher():
    from medjax.distill.losses import bernoulli_kl
    from medjax.distill.task import TaskTeacher, make_task_distill_step
    from medjax.distill.task_losses import confident_box_loss
    from medjax.finetune.tasks import detection_loss
    from medjax.training.steps import make_train_step

    # a threshold below the heat-map prior (0.01) makes every teacher cell a box target
    cfg = tiny("detection", distill_weight=0.5, temperature=2.0, distill_box_threshold=0.001)
    spec, tx, schedule, state = _state(cfg, 0)
    other = _state(cfg, 1)[3]
    images = jax.random.normal(jax.random.key(3), (2, 8, 8, 8, 1))
    out = jax.jit(lambda st: spec.model_def.merge(st.params, st.model_state)(images))(state)
    grid = out["heatmap"].shape[1:-1]
    heat = np.zeros((2, *grid, 1), np.float32)
    heat[0, 0, 0, 0, 0] = 1.0
    batch = {"image": images, "heatmap": heat, "center_mask": heat[..., 0].copy(),
             "log_size": np.full((2, *grid, 3), 1.0, np.float32), "offset": np.full((2, *grid, 3), 0.5, np.float32)}
    plain = make_train_step(spec.model_def, tx, schedule, donate=False,
                            loss_fn=lambda m, b, k: detection_loss(m, b, k, cfg=cfg))
    _, m_plain = plain(state, batch)
    teacher = TaskTeacher(spec.model_def, _arrays(other), None, "memory")
    before = _bits(teacher.arrays)
    step = make_task_distill_step(cfg, spec.model_def, tx, schedule, teacher)
    _, m = step(_copy(state), batch)
    _, m_same = step.rebind(_arrays(state))(_copy(state), batch)
    assert float(m_same["loss"]) == pytest.approx(float(m_plain["loss"]), abs=1e-6)

    @jax.jit
    def terms(teacher):
        t_out = spec.model_def.merge(teacher.params, teacher.model_state)(images)
        return bernoulli_kl(out["heatmap"], t_out["heatmap"], 2.0), *confident_box_loss(out, t_out, 0.001)

    heat_kd, box_kd, cells = terms(other)
    heat_kd = float(heat_kd)
    assert float(cells) == np.prod(out["heatmap"].shape[:-1]) and float(box_kd) > 0
    expected = float(m_plain["loss"]) + 0.5 * (heat_kd + float(box_kd))
    assert float(m["loss"]) == pytest.approx(expected, rel=1e-5)
    assert _same_bits(teacher.arrays, before)
