"""Fine-tuning resumes exactly: a run that lost everything after its step-2 checkpoint (as if killed there) and is
started again ends with the parameters, losses and metrics of the uninterrupted run (same batches,
augmentation, learning-rate schedule and optimizer state)."""

import dataclasses
import json
import shutil

import pytest

from medjax.data.testing import write_tiny_dataset
from medjax.finetune.loop import finetune
from medjax.training.checkpoint import Checkpointer
from medjax.training.digest import params_digest
from tests.finetune.conftest import tiny


def _cfg(data):
    cfg = tiny("classification", class_from_label=True, min_object_voxels=1)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0),
                                                           augment=True),
                               train=dataclasses.replace(cfg.train, steps=4, log_every=1),
                               checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=1, keep=4))


def _digest(workdir):
    state, _, _ = Checkpointer(workdir, read_only=True).restore_unsharded()
    return params_digest(state["params"])


def _losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_finetune_killed_after_a_checkpoint_resumes_exactly(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True)
    whole = finetune(_cfg(data), tmp_path / "whole", progress=False, evaluate=False)
    shutil.copytree(tmp_path / "whole", tmp_path / "killed")
    for step in (3, 4):  # the steps after the step-2 checkpoint never reached the disk
        shutil.rmtree(tmp_path / "killed" / "checkpoints" / str(step))
    again = finetune(_cfg(data), tmp_path / "killed", progress=False, evaluate=False)
    assert again["resumed_from"] == 2 and again["step"] == whole["step"] == 4
    assert again["final_loss"] == whole["final_loss"]
    assert _digest(tmp_path / "killed") == _digest(tmp_path / "whole")
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "whole") and len(_losses(tmp_path / "whole")) == 4
