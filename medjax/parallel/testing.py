"""Run a snippet in a fresh interpreter with N fake CPU devices (for sharding tests).

``--xla_force_host_platform_device_count`` must be set before jax is imported, so multi-device checks run in a
subprocess. The snippet calls ``emit(obj)`` once to hand a JSON-able result back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

_MARK = "MEDJAX_RESULT_JSON:"
_PRELUDE = f"""
import json as _json
def emit(obj):
    print({_MARK!r} + _json.dumps(obj), flush=True)
"""


def run_with_devices(code: str, devices: int = 8, *, timeout: float = 300, cwd=None, env: dict | None = None):
    """Run ``code`` with ``devices`` CPU devices; return what it passed to ``emit`` (None if nothing).

    Raises AssertionError with the tail of stderr when the process fails.
    """
    return spawn_with_devices(code, devices, cwd=cwd, env=env).result(timeout)


class Pending:
    """A snippet running in a subprocess (from :func:`spawn_with_devices`); ``result()`` waits for its ``emit``."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def result(self, timeout: float = 300):
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"snippet timed out after {timeout} s:\n{err[-4000:]}") from None
        if self.proc.returncode != 0:
            raise AssertionError(f"snippet failed with exit code {self.proc.returncode}:\n{err[-4000:]}")
        for line in reversed(out.splitlines()):
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
        return None


def spawn_with_devices(code: str, devices: int = 8, *, cwd=None, env: dict | None = None) -> Pending:
    """Start ``code`` with ``devices`` CPU devices without waiting (run several side by side)."""
    full_env = dict(os.environ)
    full_env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env=full_env,
    )
    return Pending(proc)
