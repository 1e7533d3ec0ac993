"""ExperimentLauncher: start, stop and resume ``medjax pretrain`` from a notebook, and watch it train.

``launcher = ExperimentLauncher("demo", workdir="runs/demo"); launcher`` shows the settings (data folder, ViT
variant, steps, batch size, mask ratio, learning rate), Start / Stop / Resume buttons, a progress bar and a live
loss curve, and the run's checkpoints with buttons opening the reconstruction and attention viewers.

The run is a separate process (``python -m medjax pretrain ...`` in its own session), so the kernel stays
responsive and the run survives a kernel restart. Stop sends SIGTERM: the run saves a checkpoint at the next
step and exits 0. Resume runs the same command again without ``--restart``: it continues from the latest
checkpoint in the same workdir. Progress comes from ``WORKDIR/metrics.jsonl``, polled by a background thread.
The process' output goes to ``WORKDIR/launcher.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from medjax.interactive.checkpoints import list_checkpoints
from medjax.interactive.background import start_logged, tail_log, wait_logged
from medjax.interactive.render import WidgetDisplay

VARIANTS = ("Mu/8", "Ti/8", "Ti/16", "S/16", "B/16", "L/16")
LOG_FILE = "launcher.log"


def _read_metrics(workdir: Path) -> list[dict]:
    from medjax.training.logging import METRICS_FILE, read_metrics

    return read_metrics(workdir / METRICS_FILE)


def _check_variant(cfg) -> None:
    from medjax.errors import ConfigError
    from medjax.config.variants import decode_variant

    try:
        decode_variant(cfg.model.variant, cfg.data.spatial_dims)
    except ValueError as e:
        raise ConfigError(f"model.variant: {e}") from None


class ExperimentLauncher(WidgetDisplay):
    """Run MAE pretraining in a background process and follow it.

    Args:
      preset: preset name or config file (``.py``/``.json``) as for ``medjax pretrain --config``.
      workdir: run directory (default ``runs/<config name>``).
      overrides: extra ``key=value`` config overrides passed first (the widget settings follow and win).
      volume: the volume the viewers open (default: the first image of the data folder).
      python: interpreter running ``-m medjax`` (default: this one).
      cwd: working directory of the run (default: the current one; relative paths resolve against it).
      poll_s: seconds between reads of ``metrics.jsonl``.

    Programmatic use (tests, scripts): :meth:`start`, :meth:`stop`, :meth:`resume`, :meth:`wait`,
    :meth:`metrics`, :meth:`checkpoints`, :meth:`command`, :attr:`returncode`, :attr:`running`.
    """

    def __init__(self, preset: str = "demo", workdir=None, *, overrides=(), volume=None, python: str | None = None,
                 cwd=None, poll_s: float = 1.0):
        from medjax.config import load_config

        self.preset = str(preset)
        self.overrides = [str(o) for o in overrides]
        self.cfg = load_config(self.preset, self.overrides)  # raises ConfigError early for bad settings
        self.cwd = Path(cwd or os.getcwd()).absolute()
        wd = Path(workdir) if workdir is not None else Path("runs") / self.cfg.name
        self.workdir = wd if wd.is_absolute() else self.cwd / wd
        self.volume = volume
        self.python = python or sys.executable
        self.poll_s = float(poll_s)
        self.process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._seen = (-1, -1)
        self._log = None
        self._build_widgets()
        self._update()

    # -- the run -------------------------------------------------------------------------------------------------
    def settings(self) -> list[str]:
        """The widget settings as ``key=value`` overrides."""
        return [
            f"data.dir={self._data.value}",
            f"model.variant={self._variant.value}",
            f"train.steps={int(self._steps.value)}",
            f"train.batch_size={int(self._batch.value)}",
            f"model.mask_ratio={float(self._ratio.value):g}",
            f"train.lr={float(self._lr.value):g}",
        ]

    def command(self, *, restart: bool) -> list[str]:
        """The ``medjax pretrain`` command line a Start (``restart=True``) or Resume would run."""
        cmd = [self.python, "-m", "medjax", "pretrain", "--config", self.preset, "--workdir", str(self.workdir),
               "--no-progress", "--set", *self.overrides, *self.settings()]
        return cmd + (["--restart"] if restart else [])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last run (None while running or before any); 0 also after a Stop."""
        return None if self.process is None else self.process.poll()

    def start(self) -> None:
        """Start a fresh run (``--restart``: the workdir's earlier checkpoints and metrics are removed)."""
        self._launch(restart=True)

    def resume(self) -> None:
        """Continue from the latest checkpoint in the workdir (a fresh run if there is none)."""
        self._launch(restart=False)

    def _launch(self, *, restart: bool) -> None:
        from medjax.config import load_config

        if self.running:
            raise RuntimeError(f"a run is already going in {self.workdir} (pid {self.process.pid}); stop it first")
        cfg = load_config(self.preset, self.overrides + self.settings())  # bad settings fail here, not in the log
        _check_variant(cfg)
        self.process, self._log = start_logged(self.command(restart=restart), self.workdir / LOG_FILE,
                                               cwd=self.cwd, previous_log=self._log)
        self._seen = (-1, -1)
        self._thread = threading.Thread(target=self._poll, name="medjax-launcher-poll", daemon=True)
        self._thread.start()
        self._update()

    def stop(self, *, kill: bool = False) -> None:
        """Ask the run to stop: SIGTERM (it checkpoints and exits 0), or SIGKILL with ``kill=True``."""
        if self.running:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self._status.value = f"stopping (pid {self.process.pid}) ..."

    def wait(self, timeout: float | None = None) -> int:
        """Block until the run ends; returns its exit status. Raises ``TimeoutError`` after ``timeout`` s."""
        if self.process is None:
            raise RuntimeError("no run started: call start() or resume() first")
        code = wait_logged(self.process, self.workdir / LOG_FILE, timeout)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._update()
        return code

    def metrics(self) -> list[dict]:
        """The records of ``WORKDIR/metrics.jsonl`` (step, loss, lr, grad_norm, samples_per_s, ...)."""
        return _read_metrics(self.workdir)

    def checkpoints(self):
        """The run's complete checkpoints (:class:`~medjax.interactive.checkpoints.CheckpointEntry`), oldest first."""
        return list_checkpoints(self.workdir)

    def log(self, lines: int = 40) -> str:
        """The last ``lines`` lines the run printed."""
        return tail_log(self.workdir / LOG_FILE, lines)

    def _poll(self) -> None:
        proc = self.process
        while proc.poll() is None:
            self._update()
            time.sleep(self.poll_s)
        self._update()

    # -- display -------------------------------------------------------------------------------------------------
    def _update(self) -> None:
        """Refresh progress, loss curve, status and checkpoint list from the workdir (thread-safe)."""
        with self._lock:
            records = [r for r in self.metrics() if r.get("loss") is not None]
            entries = self.checkpoints()
            last = records[-1]["step"] if records else 0
            total = int(self._steps.value)
            self._progress.max = max(total, 1)
            self._progress.value = min(last, self._progress.max)
            state = (len(records), len(entries))
            if state != self._seen:
                self._seen = state
                self._plot.value = self._loss_png(records)
                options = [(f"step {e.step}" + (f"  loss {e.loss:.4f}" if e.loss is not None else ""), e.step)
                           for e in reversed(entries)]
                self._ckpts.options = options
                if options:
                    self._ckpts.value = options[0][1]
            code = self.returncode
            if self.process is None:
                self._status.value = f"idle: {self.workdir}"
            elif code is None:
                loss = f", loss {records[-1]['loss']:.4f}" if records else ""
                self._status.value = f"running (pid {self.process.pid}): step {last}/{total}{loss}"
            else:
                self._status.value = f"finished (exit {code}) at step {last}/{total}" + (
                    "" if code == 0 else f"; see {self.workdir / LOG_FILE}")
            running = code is None and self.process is not None
            self._start.disabled = running
            self._resume.disabled = running
            self._stop.disabled = not running

    def _loss_png(self, records: list[dict]) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        import io

        fig = Figure(figsize=(5.5, 2.6), dpi=80)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        if records:
            ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.2, color="#1f77b4")
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("MAE loss", fontsize=8)
        ax.set_xlim(0, max(int(self._steps.value), 1))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.set_title(f"{self.cfg.name}: {self.workdir.name}", fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def to_png(self) -> bytes:
        return bytes(self._plot.value)

    def _build_widgets(self) -> None:
        import ipywidgets as w

        cfg = self.cfg
        wide = w.Layout(width="420px")
        self._data = w.Text(value=cfg.data.dir, description="data", layout=wide)
        variants = VARIANTS if cfg.model.variant in VARIANTS else (cfg.model.variant,) + VARIANTS
        self._variant = w.Dropdown(options=variants, value=cfg.model.variant, description="variant")
        self._steps = w.BoundedIntText(value=cfg.train.steps, min=1, max=10**9, description="steps")
        self._batch = w.BoundedIntText(value=cfg.train.batch_size, min=1, max=1 << 20, description="batch")
        self._ratio = w.FloatSlider(value=cfg.model.mask_ratio, min=0.0, max=0.95, step=0.05,
                                    description="mask ratio")
        self._lr = w.BoundedFloatText(value=cfg.train.lr, min=0.0, max=1.0, step=1e-4, description="lr")
        self._start = w.Button(description="Start", icon="play", button_style="success",
                               tooltip="start afresh (removes this workdir's checkpoints and metrics)")
        self._stop = w.Button(description="Stop", icon="stop", button_style="danger",
                              tooltip="SIGTERM: checkpoint at the next step and exit")
        self._resume = w.Button(description="Resume", icon="forward", tooltip="continue from the latest checkpoint")
        self._start.on_click(lambda _: self._safely(self.start))
        self._stop.on_click(lambda _: self.stop())
        self._resume.on_click(lambda _: self._safely(self.resume))
        self._progress = w.IntProgress(value=0, min=0, max=max(cfg.train.steps, 1), description="progress")
        self._status = w.Label()
        self._plot = w.Image(format="png")
        self._ckpts = w.Dropdown(options=[], description="checkpoint", layout=w.Layout(width="300px"))
        self._open_recon = w.Button(description="Reconstruction", icon="eye")
        self._open_attn = w.Button(description="Attention", icon="eye")
        self._open_recon.on_click(lambda _: self._open("reconstruction"))
        self._open_attn.on_click(lambda _: self._open("attention"))
        self._viewer_out = w.Output()
        self._steps.observe(lambda _: self._update(), names="value")
        self.widget = w.VBox([
            w.HBox([w.VBox([self._data, self._variant, self._steps, self._batch, self._ratio, self._lr]),
                    self._plot]),
            w.HBox([self._start, self._stop, self._resume, self._progress]),
            self._status,
            w.HBox([self._ckpts, self._open_recon, self._open_attn]),
            self._viewer_out,
        ])

    def _safely(self, fn) -> None:
        try:
            fn()
        except Exception as e:  # shown in the widget rather than lost in a callback
            self._status.value = f"error: {e}"

    # -- viewers -------------------------------------------------------------------------------------------------
    def default_volume(self):
        """The volume the viewers open: ``volume`` if given, else the first image of the data folder."""
        if self.volume is not None:
            return self.volume
        from medjax.data.sources import load_records

        data_dir = Path(self._data.value)
        records = load_records(str(data_dir if data_dir.is_absolute() else self.cwd / data_dir), split="training")
        return records[0]["image"]

    def open_viewer(self, kind: str = "reconstruction", step: int | None = None, volume=None):
        """A :class:`~medjax.interactive.recon_viewer.ReconstructionViewer` (``kind="reconstruction"``) or
        :class:`~medjax.interactive.attention_viewer.AttentionViewer` (``"attention"``) on checkpoint ``step``
        (default: latest) and ``volume`` (default: :meth:`default_volume`)."""
        steps = [e.step for e in self.checkpoints()]
        if not steps:
            raise RuntimeError(f"no checkpoint in {self.workdir} yet")
        step = steps[-1] if step is None else int(step)
        target = self.workdir / "checkpoints" / str(step)
        volume = self.default_volume() if volume is None else volume
        if kind == "reconstruction":
            from medjax.interactive.recon_viewer import ReconstructionViewer

            return ReconstructionViewer(target, volume)
        if kind == "attention":
            from medjax.interactive.attention_viewer import AttentionViewer

            return AttentionViewer(target, volume)
        raise ValueError(f"kind={kind!r}: use 'reconstruction' or 'attention'")

    def _open(self, kind: str) -> None:
        from IPython.display import display

        self._viewer_out.clear_output()
        with self._viewer_out:
            try:
                display(self.open_viewer(kind, self._ckpts.value))
            except Exception as e:
                print(f"cannot open the {kind} viewer: {e}")

    def __repr__(self) -> str:
        return f"ExperimentLauncher({self.preset!r}, workdir={str(self.workdir)!r}, status={self._status.value!r})"
