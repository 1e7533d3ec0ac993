"""A LoRA run killed after a checkpoint resumes exactly: same trainable parameters, losses and steps as the
uninterrupted run (its checkpoints hold only the trainable parameters; the base is rebuilt and checked)."""

import json
import shutil

import pytest

from medjax.data.testing import write_tiny_dataset
from medjax.finetune.loop import finetune
from medjax.training.checkpoint import Checkpointer
from medjax.training.digest import params_digest
from tests.peft.test_checkpoint_merge import _cfg, _mae


def _digest(workdir):
    state, _, _ = Checkpointer(workdir, read_only=True).restore_unsharded()
    return params_digest(state["params"])


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_lora_run_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True)
    cfg = _cfg(data, "lora", tmp_path / "mae", steps=4, lora_dropout=0.1)
    cfg = cfg.__class__(**{**cfg.__dict__, "checkpoint": cfg.checkpoint.__class__(every_steps=1, keep=4)})
    _mae(tmp_path / "mae", cfg, seed=7)
    whole = finetune(cfg, tmp_path / "whole", progress=False, evaluate=False)
    shutil.copytree(tmp_path / "whole", tmp_path / "killed")
    for step in (3, 4):  # never reached the disk
        shutil.rmtree(tmp_path / "killed" / "checkpoints" / str(step))
    again = finetune(cfg, tmp_path / "killed", progress=False, evaluate=False)
    assert again["resumed_from"] == 2 and again["step"] == whole["step"] == 4
    assert again["final_loss"] == whole["final_loss"]
    assert _digest(tmp_path / "killed") == _digest(tmp_path / "whole")
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "whole") and len(_losses(tmp_path / "whole")) == 4
