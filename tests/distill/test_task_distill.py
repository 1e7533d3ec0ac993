"""Task distillation for classification (segmentation and detection: ``test_task_distill_dense.py``): the frozen
teacher inside the fine-tuning step adds ``distill_weight * soft_target_kl`` to the task loss (zero for a teacher
equal to the student), keeps its bits, and `finetune --set finetune.teacher=RUN` trains with it."""

import dataclasses

import jax
import numpy as np
import pytest

from medjax.data.testing import write_tiny_dataset
from medjax.errors import ConfigError
from tests.finetune.conftest import tiny


def _cfg(data=None, **ft):
    cfg = tiny("classification", class_from_label=True, min_object_voxels=1, **ft)
    if data is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0)))
    return cfg


def _state(cfg, seed):
    from medjax.finetune.tasks import build_task_model
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.state import train_state_spec

    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, tx=tx, model_factory=lambda: build_task_model(cfg, seed=seed))
    return spec, tx, schedule, spec.init()


def test_step_adds_weighted_kl_and_keeps_the_teacher():
    from medjax.distill.losses import soft_target_kl
    from medjax.distill.task import TaskTeacher, make_task_distill_step
    from medjax.finetune.tasks import classification_loss
    from medjax.training.steps import make_train_step

    cfg = _cfg(distill_weight=0.5, temperature=3.0)
    spec, tx, schedule, state = _state(cfg, 0)
    _, _, _, other = _state(cfg, 1)
    batch = {"image": jax.random.normal(jax.random.key(0), (2, 8, 8, 8, 1)), "class": np.array([0, 1], np.int32)}
    plain = make_train_step(spec.model_def, tx, schedule, loss_fn=lambda m, b, k: classification_loss(m, b, k, cfg=cfg),
                            donate=False)
    _, m_plain = plain(state, batch)

    def teacher_of(st):
        arrays = {"params": st.params, "model_state": st.model_state}
        return TaskTeacher(spec.model_def, arrays, None, "memory")

    teacher = teacher_of(other)
    before = jax.tree.map(np.array, teacher.arrays)
    step = make_task_distill_step(cfg, spec.model_def, tx, schedule, teacher)
    _, m = step(jax.tree.map(lambda x: x.copy(), state), batch)
    _, m_same = step.rebind({"params": state.params, "model_state": state.model_state})(
        jax.tree.map(lambda x: x.copy(), state), batch)
    assert float(m_same["loss"]) == pytest.approx(float(m_plain["loss"]), abs=1e-6)  # equal logits: KL 0

    @jax.jit
    def kl(student, teacher, images):
        s_logits = spec.model_def.merge(student.params, student.model_state)(images, deterministic=False)
        t_logits = spec.model_def.merge(teacher.params, teacher.model_state)(images, deterministic=True)
        return soft_target_kl(s_logits, t_logits, 3.0)

    kd = kl(state, other, batch["image"])
    expected = float(m_plain["loss"]) + 0.5 * float(kd)
    assert float(m["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(m["loss"]) > float(m_plain["loss"])
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), teacher.arrays, before)))


def test_finetune_with_a_teacher_run(tmp_path):
    from medjax.config.overrides import to_dict
    from medjax.finetune.loop import finetune
    from medjax.finetune.tasks import build_task_model
    from medjax.training.checkpoint import Checkpointer, read_meta
    from medjax.training.state import state_to_dict, train_state_spec

    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True, spacing=(2.0, 2.0, 2.0))
    tcfg = _cfg(data)
    with Checkpointer(tmp_path / "teacher") as ckpt:  # a classification run's step-0 checkpoint as the teacher
        st = train_state_spec(tcfg, model_factory=lambda: build_task_model(tcfg, seed=7)).init()
        ckpt.save(0, state_to_dict(st), meta={"config": to_dict(tcfg), "task": "classification"}, force=True)
        ckpt.wait()
    cfg = dataclasses.replace(tcfg, train=dataclasses.replace(tcfg.train, steps=1))
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, teacher=str(tmp_path / "teacher"),
                                                                cache=False))
    out = finetune(cfg, tmp_path / "student", progress=False, evaluate=False)
    assert out["step"] == 1 and np.isfinite(out["final_loss"])
    assert read_meta(tmp_path / "student")["teacher"].endswith("checkpoints/0")



def test_unsupported_settings_are_named():
    from medjax.distill.task import check_task_distill

    cfg = _cfg(teacher="runs/t")
    check_task_distill(cfg)
    check_task_distill(dataclasses.replace(cfg, task="segmentation"))
    with pytest.raises(ConfigError, match="task distillation needs"):
        check_task_distill(dataclasses.replace(cfg, task="mae"))
    for bad, key in (({"multi_label": True}, "multi_label"), ({"temperature": 0.0}, "finetune.temperature"),
                     ({"distill_weight": -1.0}, "finetune.distill_weight"),
                     ({"distill_feature_weight": 1.0}, "finetune.distill_feature_weight"),
                     ({"distill_box_threshold": 0.0}, "finetune.distill_box_threshold")):
        with pytest.raises(ConfigError, match=key):
            check_task_distill(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, **bad)))
