"""Helpers for crash tests that run a medjax command in a subprocess and SIGKILL it after its first checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def cpu_env(cache_dir) -> dict:
    """The subprocesses' environment: CPU only, one persistent compilation cache so reruns skip XLA compiles."""
    e = dict(os.environ)
    e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return e


def medjax_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "medjax", *map(str, args)]


def run_to_end(cmd: list[str], workdir, env) -> dict:
    """Run ``cmd`` to completion and return ``WORKDIR/summary.json``."""
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((Path(workdir) / "summary.json").read_text())


def checkpoint_steps(workdir) -> list[int]:
    """Finalised checkpoint steps of a run directory (Orbax writes a temporary name first, then renames)."""
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def kill_after_first_checkpoint(cmd: list[str], workdir, env, steps: int) -> int:
    """Start ``cmd``, SIGKILL it as soon as its first checkpoint is on disk; return the last step saved.

    Fails if the run ended before it could be killed, or if a checkpoint of the final step already exists (the
    kill would then prove nothing about resume).
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not checkpoint_steps(workdir) and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    saved = checkpoint_steps(workdir)
    assert saved and saved[-1] < steps, saved
    return saved[-1]


def logged_steps(workdir) -> list[int]:
    return [json.loads(line)["step"] for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
