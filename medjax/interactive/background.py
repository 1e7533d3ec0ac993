"""Commands that widgets run in the background: started in their own session, output appended to a log file.

The ExperimentLauncher (one training run) and the FederatedView (a whole Flower deployment) both start a
``medjax`` command this way, wait for it and show the end of its log; this module is the one place that does it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO


def start_logged(command: list[str], log_path: Path, *, cwd: str | os.PathLike | None = None,
                 previous_log: IO[bytes] | None = None) -> tuple[subprocess.Popen, IO[bytes]]:
    """Start ``command`` in a new session with stdout and stderr appended to ``log_path``.

    The log gets a ``$ command`` line first, so one file keeps every run started in a workdir. A new session
    means Ctrl-C in the notebook's kernel does not reach the run, and the run's whole process group can be
    signalled. ``previous_log`` (the handle of an earlier start) is closed. Returns ``(process, log handle)``;
    the caller keeps the handle open while the process runs.
    """
    if previous_log is not None:
        previous_log.close()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    log.write(f"\n$ {' '.join(command)}\n".encode())
    log.flush()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    process = subprocess.Popen([sys.executable, "-c", _RESET_SIGINT, *command], cwd=cwd, env=env, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return process, log


# Runs the command with SIGINT at its default disposition: a process started from a non-interactive shell's
# background job (`nohup jupyter lab &`) inherits SIGINT ignored, a Python program then never installs its
# KeyboardInterrupt handler, and a widget's Stop (SIGINT, as Ctrl-C) would do nothing. Set in the child, not
# in a preexec_fn (unsafe in a kernel with threads); the disposition survives the exec.
_RESET_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                 "os.execvp(sys.argv[1], sys.argv[1:])")


def wait_logged(process: subprocess.Popen, log_path: Path, timeout: float | None = None) -> int:
    """Wait for ``process``; its exit status, or ``TimeoutError`` naming the log after ``timeout`` seconds."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"the run in {log_path.parent} is still going after {timeout} s; see {log_path}") from None


def tail_log(log_path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of ``log_path`` ("" before anything was started)."""
    if not log_path.is_file():
        return ""
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
