"""Run logging: a tqdm progress bar (stderr), ``WORKDIR/metrics.jsonl`` and TensorBoard events in ``WORKDIR/tb``.

``metrics.jsonl`` holds one JSON object per logged step: ``step`` (optimizer steps done), ``loss``, ``lr``,
``grad_norm``, ``samples_per_s``, ``nonfinite_count`` and ``time`` (Unix seconds). Each line is flushed as it is
written. On resume, lines with ``step`` greater than the restored step are dropped (:func:`truncate_metrics`)
and TensorBoard is told to purge later events, so both stay consistent with the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
TB_DIR = "tb"
SCALARS = ("loss", "lr", "grad_norm", "samples_per_s")


def read_metrics(path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a torn last line, from a killed run, is skipped)."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    with open(p) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def truncate_metrics(path, max_step: int, key: str = "step") -> int:
    """Keep only records with ``record[key] <= max_step`` (rewritten atomically); returns how many were kept.
    ``key`` is ``"round"`` for a federated run's metrics."""
    p = Path(path)
    if not p.exists():
        return 0
    keep = [r for r in read_metrics(p) if int(r.get(key, 0)) <= max_step]
    tmp = p.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for r in keep:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return len(keep)


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class RunLogger:
    """Progress bar + metrics.jsonl + TensorBoard for one run. Only enabled on process 0.

    Args:
      workdir: the run directory.
      total_steps: ``cfg.train.steps``.
      start_step: the step the run starts (or resumes) at.
      enabled: False on processes other than 0 (everything becomes a no-op).
      progress: show the tqdm bar on stderr.
      tensorboard: write TensorBoard events to ``WORKDIR/tb``.
      desc: label of the progress bar (e.g. "pretrain", "finetune").
    """

    def __init__(self, workdir, *, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True, desc: str = "pretrain"):
        self.workdir = Path(workdir)
        self.enabled = enabled
        self.metrics_path = self.workdir / METRICS_FILE
        self.tb_dir = self.workdir / TB_DIR
        self._bar = None
        self._tb = None
        self._file = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.metrics_path, start_step)
        self._file = open(self.metrics_path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step makes TensorBoard drop events a killed run wrote after the restored checkpoint
            self._tb = SummaryWriter(str(self.tb_dir), purge_step=start_step if start_step > 0 else None)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, file=sys.stderr, unit="step",
                             dynamic_ncols=True, desc=desc)

    def progress(self, step: int, loss: float | None = None, samples_per_s: float | None = None) -> None:
        """Advance the bar to ``step`` and show the latest loss and throughput."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        post = {}
        if loss is not None:
            post["loss"] = f"{loss:.4f}"
        if samples_per_s:
            post["samples/s"] = f"{samples_per_s:.1f}"
        if post:
            self._bar.set_postfix(post, refresh=False)

    def log(self, step: int, metrics: dict) -> dict:
        """Append one record (host floats) to metrics.jsonl (flushed) and the TensorBoard scalars."""
        record = {"step": int(step)}
        for k in ("loss", "lr", "grad_norm", "samples_per_s"):
            if k in metrics:
                record[k] = _finite(metrics[k])
        record["nonfinite_count"] = int(metrics.get("nonfinite_count", 0))
        record["time"] = time.time()
        if not self.enabled:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k in SCALARS:
                if record.get(k) is not None:
                    self._tb.add_scalar(f"train/{k}", record[k], int(step))
        return record

    def log_eval(self, step: int, values: dict) -> dict:
        """Append an evaluation record ``{"step", **values, "time"}`` (host floats, e.g. ``val_loss``,
        ``probe_window_auroc``) to metrics.jsonl and TensorBoard (``eval/<key>``). It has no ``loss`` key, so
        readers of the training curve skip it."""
        record = {"step": int(step), **{k: _finite(float(v)) if v is not None else None for k, v in values.items()},
                  "time": time.time()}
        if not self.enabled:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                if record.get(k) is not None:
                    self._tb.add_scalar(f"eval/{k}", record[k], int(step))
        return record

    def images(self, step: int, images: dict) -> None:
        """TensorBoard images: ``{tag: (H, W) float in [0, 1]}``."""
        if self._tb is None:
            return
        for tag, img in images.items():
            self._tb.add_image(tag, img, int(step), dataformats="HW")
        self._tb.flush()

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the progress bar, the TensorBoard writer (and its thread) and metrics.jsonl; idempotent."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._file is not None:
            self._file.close()
            self._file = None
