"""Crash-safety of distillation in subprocesses: `medjax distill` (representation) and `medjax finetune` with a
teacher (task distillation), each SIGKILLed right after its first checkpoint and started again, end bit-identical
to an uninterrupted run (parameters, and one log line per step)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.integration.killing import cpu_env, kill_after_first_checkpoint, logged_steps, medjax_cmd, run_to_end

pytestmark = pytest.mark.slow

STEPS = 40  # checkpoints every 5 steps: a 35-step window after the first one to kill the run in


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return cpu_env(tmp_path_factory.mktemp("jaxcache"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from medjax.data.testing import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("data"), n=3, layout="folder", with_labels=True,
                              spacing=(2.0, 2.0, 2.0))


def _save_step0(cfg, workdir, factory=None, **meta) -> None:
    """A run directory holding only the step-0 checkpoint of ``cfg`` (random weights teach as well as any here)."""
    from medjax.config.overrides import to_dict
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.state import state_to_dict, train_state_spec

    with Checkpointer(workdir) as ckpt:
        state = train_state_spec(cfg, model_factory=factory).init()
        ckpt.save(0, state_to_dict(state), meta={"config": to_dict(cfg), **meta}, force=True)
        ckpt.wait()


def _kill_resume_and_compare(cmd_for, tmp_path, env) -> None:
    whole = run_to_end(cmd_for(tmp_path / "whole"), tmp_path / "whole", env)
    work = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint(cmd_for(work), work, env, STEPS)
    again = run_to_end(cmd_for(work), work, env)
    assert again["resumed_from"] == killed_at and again["step"] == whole["step"] == STEPS
    assert again["params_digest"] == whole["params_digest"]
    assert again["final_loss"] == whole["final_loss"]
    assert logged_steps(work) == logged_steps(tmp_path / "whole") == list(range(1, STEPS + 1))


def test_representation_distillation_sigkill_resume(data, env, tmp_path):
    from medjax.config.distill_schema import DistillConfig
    from medjax.config.overrides import to_json
    from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig

    cfg = Config(
        name="tiny_distill", task="mae",
        data=DataConfig(dir=str(data), spatial_dims=3, crop_size=(16,), spacing=(2.0, 2.0, 2.0),
                        samples_per_volume=2, workers=0),
        model=ModelConfig(variant="Mu/8", decoder_width=32, decoder_depth=1, decoder_heads=2),
        train=TrainConfig(steps=STEPS, batch_size=2, lr=1e-3, warmup_steps=2, log_every=1),
        checkpoint=CheckpointConfig(every_steps=5, keep=3),
        distill=DistillConfig(mask_ratio=0.5),
    )
    _save_step0(cfg, tmp_path / "teacher")
    student = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, variant="Mu/8:width=32,heads=2"))
    (tmp_path / "student.json").write_text(to_json(student))

    def cmd(workdir):
        return medjax_cmd("distill", "--teacher", tmp_path / "teacher", "--config", tmp_path / "student.json",
                          "--workdir", workdir, "--no-progress")

    _kill_resume_and_compare(cmd, tmp_path, env)


def test_task_distillation_sigkill_resume(data, env, tmp_path):
    from medjax.config.overrides import to_json
    from medjax.finetune.tasks import build_task_model
    from tests.finetune.conftest import tiny

    cfg = tiny("classification", class_from_label=True, min_object_voxels=1, cache=False)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0), augment=True),
        train=dataclasses.replace(cfg.train, steps=STEPS, log_every=1),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=5, keep=3))
    _save_step0(cfg, tmp_path / "teacher", lambda: build_task_model(cfg, seed=7), task="classification")
    (tmp_path / "student.json").write_text(to_json(cfg))

    def cmd(workdir):
        return medjax_cmd("finetune", "--config", tmp_path / "student.json", "--workdir", workdir, "--no-progress",
                          "--set", f"finetune.teacher={tmp_path / 'teacher'}", "finetune.distill_weight=0.5",
                          "finetune.temperature=2.0")

    _kill_resume_and_compare(cmd, tmp_path, env)
