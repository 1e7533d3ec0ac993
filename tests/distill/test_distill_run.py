"""`medjax distill` end to end on a tiny teacher (Mu/8, 16^3 crops): zero loss for a student equal to the teacher,
a frozen teacher (no gradient, bit-identical parameters), exact resume after losing the last checkpoints, and a
student checkpoint that `medjax finetune --init-from` reads."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig
from medjax.data.testing import write_tiny_dataset
from medjax.distill.run import distill
from medjax.errors import CheckpointError, ConfigError
from medjax.training.checkpoint import Checkpointer
from medjax.training.digest import params_digest
from medjax.training.restore import read_arrays

STUDENT = "Mu/8:width=32,heads=2"  # half the teacher's width: a learned projection 32 -> 64


def _cfg(data, steps: int, variant: str = "Mu/8", **distill) -> Config:
    from medjax.config.distill_schema import DistillConfig

    return Config(
        name="tiny_distill", task="mae",
        data=DataConfig(dir=str(data), spatial_dims=3, crop_size=(16,), spacing=(2.0, 2.0, 2.0), samples_per_volume=2,
                        workers=0),
        model=ModelConfig(variant=variant, decoder_width=32, decoder_depth=1, decoder_heads=2),
        train=TrainConfig(steps=steps, batch_size=2, lr=1e-3, warmup_steps=0, log_every=1),
        checkpoint=CheckpointConfig(every_steps=2, keep=4),
        distill=DistillConfig(**distill),
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A teacher run: the step-0 checkpoint of an MAE run (random weights are a teacher as good as any here)."""
    from medjax.config.overrides import to_dict
    from medjax.training.state import state_to_dict, train_state_spec

    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True, spacing=(2.0, 2.0, 2.0))
    cfg = _cfg(data, 1)
    with Checkpointer(root / "teacher") as ckpt:
        ckpt.save(0, state_to_dict(train_state_spec(cfg).init()), meta={"config": to_dict(cfg)}, force=True)
        ckpt.wait()
    return root, data, root / "teacher"


def _digest(workdir):
    state, _, _ = Checkpointer(workdir, read_only=True).restore_unsharded()
    return params_digest(state["params"])


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_student_equal_to_teacher_has_zero_loss(teacher, tmp_path):
    _, data, tdir = teacher
    s = distill(_cfg(data, 1, teacher=str(tdir), init_from=str(tdir)), tmp_path / "same", progress=False)
    assert s["first_loss"] == 0.0 and s["teacher_width"] == s["student_width"] == 64
    enc = read_arrays(tdir)[0]["params"]["encoder"]
    assert s["teacher_params_digest"] == params_digest({"encoder": enc})


def test_teacher_gets_no_gradient_and_keeps_its_bits(teacher):
    from medjax.distill.step import distill_loss, make_distill_step
    from medjax.distill.student import build_student
    from medjax.distill.teacher import load_teacher
    from medjax.parallel.mesh import make_mesh
    from medjax.parallel.rules import logical_rules, use_mesh
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.state import train_state_spec

    _, data, tdir = teacher
    cfg = _cfg(data, 2, STUDENT, teacher=str(tdir))
    mesh, rules = make_mesh(cfg.mesh), logical_rules(cfg.mesh)
    t = load_teacher(str(tdir), cfg, mesh, rules)
    before = jax.tree.map(np.array, t.params)
    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, mesh, tx=tx, model_factory=lambda: build_student(cfg, t.width))
    state = spec.init()
    images = jax.random.normal(jax.random.key(3), (2, 16, 16, 16, 1))

    def of_teacher(tp):
        model = spec.model_def.merge(state.params)
        return distill_loss(model, {"image": images}, jax.random.key(0), teacher_def=t.model_def,
                            teacher_params=tp, mask_ratio=0.5)[0]

    loss, g = jax.value_and_grad(of_teacher)(t.params)
    assert float(loss) > 0 and not any(np.any(np.asarray(x)) for x in jax.tree.leaves(g))
    with use_mesh(mesh, rules):
        step = make_distill_step(spec.model_def, tx, schedule, t, cfg.distill)
        for _ in range(2):
            state, metrics = step(state, {"image": images})
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), b), t.params, before)
    assert all(jax.tree.leaves(same))
    assert set(state.params) == {"encoder", "proj"}
    assert state.params["proj"]["kernel"].shape == (32, 64)


def test_cli_run_resumes_exactly_and_finetune_inits_from_it(teacher, tmp_path, capsys):
    from medjax.cli import main
    from medjax.config.finetune_schema import FinetuneConfig
    from medjax.finetune.loop import finetune
    from medjax.training.checkpoint import read_meta

    root, data, tdir = teacher
    cfg_file = tmp_path / "student.json"
    from medjax.config.overrides import to_json

    cfg_file.write_text(to_json(_cfg(data, 4, STUDENT, loss="cosine", mask_ratio=0.5)))
    argv = ["distill", "--teacher", str(tdir), "--config", str(cfg_file), "--no-progress"]
    assert main(argv + ["--workdir", str(tmp_path / "whole")]) == 0
    assert "distillation loss" in capsys.readouterr().out
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert whole["step"] == 4 and whole["teacher_width"] == 64 and whole["student_width"] == 32
    losses = _losses(tmp_path / "whole")
    assert len(losses) == 4 and all(0 < v < 2 for v in losses)  # cosine distance lies in [0, 2]

    # lose everything after the step-2 checkpoint (as a SIGKILL there would) and run the same command again
    shutil.copytree(tmp_path / "whole", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "4")
    assert main(argv + ["--workdir", str(tmp_path / "killed")]) == 0
    again = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert again["resumed_from"] == 2 and again["final_loss"] == whole["final_loss"]
    assert _digest(tmp_path / "killed") == _digest(tmp_path / "whole")
    assert _losses(tmp_path / "killed") == losses

    # the student's encoder initialises a classifier of the student's size
    base = _cfg(data, 1, STUDENT)
    ft = dataclasses.replace(base, task="classification", data=dataclasses.replace(base.data, augment=False),
                             finetune=FinetuneConfig(val_records=0, class_from_label=True, min_object_voxels=1))
    out = finetune(ft, tmp_path / "cls", init_from=str(tmp_path / "whole"), progress=False, evaluate=False)
    assert out["step"] == 1
    init = read_meta(tmp_path / "cls")["init"]
    student_encoder = read_arrays(tmp_path / "whole")[0]["params"]["encoder"]
    assert init["step"] == 4 and init["loaded"] == len(jax.tree.leaves(student_encoder))


def test_bad_settings_are_named(teacher, tmp_path):
    _, data, tdir = teacher
    with pytest.raises(ConfigError, match="distill.teacher"):
        distill(_cfg(data, 1), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="distill.loss"):
        distill(_cfg(data, 1, teacher=str(tdir), loss="l2"), tmp_path / "b", progress=False)
    with pytest.raises(CheckpointError, match="not a run directory"):
        distill(_cfg(data, 1, teacher=str(tmp_path / "nowhere")), tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="patch grid"):
        distill(_cfg(data, 1, "Mu/4", teacher=str(tdir)), tmp_path / "d", progress=False)
    assert not (tmp_path / "b").exists()  # a bad setting fails before the workdir is written
