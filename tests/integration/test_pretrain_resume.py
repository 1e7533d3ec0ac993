"""Crash-safety of `medjax pretrain` in subprocesses: same seed -> same digest; SIGKILL mid-run then resume ->
the digest of an uninterrupted run; SIGTERM -> checkpoint, exit 0, resumable."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.killing import (checkpoint_steps, cpu_env, kill_after_first_checkpoint, logged_steps,
                                       medjax_cmd, run_to_end)

pytestmark = pytest.mark.slow

STEPS = 60  # a 50-step window after the first checkpoint (step 10) to kill the run in
TINY = [
    "model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.crop_size=16", "data.spacing=2.0,2.0,2.0", "data.samples_per_volume=2", "data.workers=0",
    "train.batch_size=4", "train.warmup_steps=2", "train.lr=1e-3", "train.log_every=1", "checkpoint.keep=3",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return cpu_env(tmp_path_factory.mktemp("jaxcache"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from medjax.data.testing import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("data"), n=3, layout="folder", with_labels=False)


def _cmd(dataset, workdir, *extra):
    return medjax_cmd("pretrain", "--config", "demo", "--workdir", workdir, "--no-progress", "--set", *TINY,
                      f"data.dir={dataset}", *extra)


def _run(dataset, workdir, env, *extra) -> dict:
    return run_to_end(_cmd(dataset, workdir, *extra), workdir, env)


def _metrics_lines(workdir) -> int:
    p = Path(workdir) / "metrics.jsonl"
    return p.read_text().count("\n") if p.exists() else 0


def test_determinism_and_sigkill_resume(dataset, env, tmp_path):
    extra = (f"train.steps={STEPS}", "checkpoint.every_steps=10")
    a = _run(dataset, tmp_path / "a", env, *extra)
    b = _run(dataset, tmp_path / "b", env, *extra)
    assert a["params_digest"] == b["params_digest"]
    assert a["step"] == STEPS

    work = tmp_path / "killed"
    killed_at = kill_after_first_checkpoint(_cmd(dataset, work, *extra), work, env, STEPS)
    c = _run(dataset, work, env, *extra)
    assert c["resumed_from"] == killed_at
    assert c["params_digest"] == a["params_digest"]
    assert logged_steps(work) == list(range(1, STEPS + 1))


def test_sigterm_saves_and_resumes(dataset, env, tmp_path):
    work = tmp_path / "term"
    proc = subprocess.Popen(_cmd(dataset, work, "train.steps=100000", "checkpoint.every_steps=100000"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and _metrics_lines(work) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out
    saved = checkpoint_steps(work)
    assert len(saved) == 1 and 3 <= saved[0] < 100000
    s = _run(dataset, work, env, f"train.steps={saved[0] + 2}", "checkpoint.every_steps=100000")
    assert s["resumed_from"] == saved[0] and s["step"] == saved[0] + 2
