"""ExperimentLauncher: real `medjax pretrain` runs in a background process (tiny model, CPU)."""

from __future__ import annotations

import time

import pytest

from medjax.errors import ConfigError
from medjax.interactive.launcher import ExperimentLauncher


@pytest.fixture
def make_launcher(tmp_path, volumes, tiny_overrides):
    made = []

    def make(steps: int) -> ExperimentLauncher:
        la = ExperimentLauncher("demo", workdir=tmp_path / "run",
                                overrides=tiny_overrides + [f"data.dir={volumes}", f"train.steps={steps}"], poll_s=0.2)
        made.append(la)
        return la

    yield make
    for la in made:  # never leave a run behind, whatever the test did
        if la.running:
            la.stop(kill=True)
            la.process.wait(timeout=30)


def test_command_reflects_the_widgets(make_launcher, tmp_path, volumes):
    la = make_launcher(3)
    assert la._steps.value == 3 and la._variant.value == "Mu/8" and la._data.value == str(volumes)
    la._variant.value = "Ti/8"
    la._lr.value = 0.002
    cmd = la.command(restart=True)
    assert cmd[1:5] == ["-m", "medjax", "pretrain", "--config"] and cmd[-1] == "--restart"
    assert cmd[cmd.index("--workdir") + 1] == str(tmp_path / "run")
    # widget settings come after the extra overrides, so they win
    assert cmd.index("model.variant=Ti/8") > cmd.index("model.variant=Mu/8")
    assert "train.lr=0.002" in cmd and "--restart" not in la.command(restart=False)
    assert not la.running and la.returncode is None and la.metrics() == []
    la._variant.options = ("nope",)  # an invalid setting is reported before anything is launched
    with pytest.raises(ConfigError):
        la.start()
    assert la.process is None


@pytest.mark.slow
def test_runs_a_tiny_pretraining_to_completion(make_launcher, tmp_path, volumes):
    la = make_launcher(3)
    la.start()
    assert la.running and la._start.disabled and not la._stop.disabled
    code = la.wait(timeout=600)
    assert code == 0, la.log()
    records = la.metrics()
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in records)
    assert [e.step for e in la.checkpoints()] == [2, 3]
    assert la._progress.value == 3 and la._status.value.startswith("finished (exit 0)")
    assert [v for _, v in la._ckpts.options] == [3, 2]
    assert bytes(la._plot.value).startswith(b"\x89PNG")
    viewer = la.open_viewer("reconstruction", volume=str(volumes / "vol00.nii.gz"))
    assert viewer.run.step == 3 and viewer.outputs["input"].shape == (16, 16, 16)


@pytest.mark.slow
def test_stop_checkpoints_and_resume_continues(make_launcher, tmp_path, volumes):
    la = make_launcher(100000)
    la.start()
    deadline = time.time() + 600
    while not la.metrics() and time.time() < deadline and la.running:
        time.sleep(0.2)
    assert la.metrics(), la.log()
    la.stop()
    assert la.wait(timeout=300) == 0, la.log()
    stopped_at = la.checkpoints()[-1].step
    assert stopped_at >= la.metrics()[-1]["step"] >= 1
    la._steps.value = stopped_at + 1
    la.resume()
    assert la.wait(timeout=600) == 0, la.log()
    assert la.metrics()[-1]["step"] == stopped_at + 1
    assert la.checkpoints()[-1].step == stopped_at + 1
    assert "resumed from" in la.log(200)
