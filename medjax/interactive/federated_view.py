"""FederatedView: follow a federated run (``medjax federated simulate`` or a real deployment) in a notebook.

``view = FederatedView("runs/fed"); view`` shows the sites that reported, the rounds done, loss curves (the
global model and every site), the privacy budget spent (epsilon per round, when the run uses DP) and a table of
the last round (loss, examples, seconds, bytes sent per site). It reads ``WORKDIR/metrics.jsonl``, one JSON
object per line::

    {"round": 3, "site": "global" | "site-1" | ..., "loss": 0.81, "num_examples": 96,
     "epsilon": 4.2 | null, "seconds": 5.1, "bytes_sent": 1234567}

and refreshes from a background thread while the run goes on: while the process it started (``command=``) or was
given (``process=``) is alive, or, following a run started elsewhere, until the last round (``rounds=``) has its
``global`` record. ``FederatedView(workdir, command=[...])`` starts the command in the background (its own
session, output in ``WORKDIR/federated.log``), like the :class:`~medjax.interactive.launcher.ExperimentLauncher`.
"""

from __future__ import annotations

import html
import io
import os
import signal
import subprocess
import threading
from pathlib import Path

from medjax.interactive.background import start_logged, tail_log, wait_logged
from medjax.interactive.render import WidgetDisplay

GLOBAL = "global"
LOG_FILE = "federated.log"


def _site_key(name: str):
    """Natural order: ``site-2`` before ``site-10``; other names after, alphabetically."""
    head, _, tail = str(name).rpartition("-")
    return (0, head, int(tail), "") if tail.isdigit() else (1, "", 0, str(name))


def summarize_federated(records: list[dict]) -> dict:
    """Per-round series of a federated ``metrics.jsonl`` (records missing ``round`` or ``site`` are skipped).

    Returns a dict: ``sites`` (site names, natural order, without ``global``), ``rounds`` (sorted round numbers
    seen), ``loss`` ({site or ``"global"``: [(round, loss), ...]}), ``epsilon`` ([(round, epsilon), ...] from
    the ``global`` record, or the largest site value when the round has none; rounds without DP are left out),
    ``bytes_sent`` and ``seconds`` ([(round, total over sites), ...] and [(round, longest site), ...]),
    ``last`` ({site: its latest record}). A site that reports a round twice (a resumed run) keeps the later one.
    """
    latest: dict[tuple[int, str], dict] = {}
    for r in records:
        if not isinstance(r, dict) or r.get("round") is None or r.get("site") is None:
            continue
        try:
            latest[(int(r["round"]), str(r["site"]))] = r
        except (TypeError, ValueError):
            continue
    rounds = sorted({k[0] for k in latest})
    names = {k[1] for k in latest}
    sites = sorted(names - {GLOBAL}, key=_site_key)
    loss = {}
    for name in ([GLOBAL] if GLOBAL in names else []) + sites:
        series = [(rd, float(latest[(rd, name)]["loss"])) for rd in rounds
                  if (rd, name) in latest and latest[(rd, name)].get("loss") is not None]
        if series:
            loss[name] = series
    epsilon, sent, seconds = [], [], []
    for rd in rounds:
        g = latest.get((rd, GLOBAL), {})
        eps = g.get("epsilon")
        if eps is None:
            values = [latest[(rd, s)].get("epsilon") for s in sites if (rd, s) in latest]
            values = [float(v) for v in values if v is not None]
            eps = max(values) if values else None
        if eps is not None:
            epsilon.append((rd, float(eps)))
        site_records = [latest[(rd, s)] for s in sites if (rd, s) in latest]
        if site_records:
            sent.append((rd, int(sum(int(r.get("bytes_sent") or 0) for r in site_records))))
            seconds.append((rd, max(float(r.get("seconds") or 0.0) for r in site_records)))
    last = {}
    for (rd, name), r in sorted(latest.items()):
        last[name] = r
    return {"sites": sites, "rounds": rounds, "loss": loss, "epsilon": epsilon, "bytes_sent": sent,
            "seconds": seconds, "last": last}


def _megabytes(n) -> str:
    return "-" if n is None else f"{int(n) / 1e6:.2f} MB"


class FederatedView(WidgetDisplay):
    """Sites, rounds, per-site and global loss, and epsilon spent, of a federated run in ``workdir``.

    Args:
      workdir: the run directory holding ``metrics.jsonl``.
      rounds: total rounds planned (for the progress bar and to know when the run is over); default: the
        ``federated.rounds`` of ``WORKDIR/config.json`` when present.
      command: a command to start in the background with :meth:`start` (e.g. ``medjax federated simulate ...``).
      process: a running ``subprocess.Popen`` to follow instead.
      follow: poll ``metrics.jsonl`` in a background thread (False: call :meth:`refresh` yourself).
      cwd: working directory of ``command`` (default: the current one).
      poll_s: seconds between reads.

    Programmatic use: :meth:`refresh`, :meth:`summary`, :meth:`start`, :meth:`stop`, :meth:`wait`,
    :attr:`running`, :attr:`returncode`, :meth:`log`.
    """

    def __init__(self, workdir, *, rounds: int | None = None, command=None, process: subprocess.Popen | None = None,
                 follow: bool = True, cwd=None, poll_s: float = 1.0):
        self.workdir = Path(workdir).absolute()
        self.rounds = int(rounds) if rounds is not None else self._configured_rounds()
        self.command = [str(c) for c in command] if command is not None else None
        self.process = process
        self.cwd = Path(cwd or os.getcwd()).absolute()
        self.poll_s = float(poll_s)
        self.follow = bool(follow)
        self._lock = threading.Lock()
        self._stop_polling = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen = None
        self._summary = summarize_federated([])
        self._log = None
        self._build_widgets()
        self.refresh()
        if self.follow and (process is not None or not self.finished):
            self._follow()

    # -- the run -------------------------------------------------------------------------------------------------
    def _configured_rounds(self) -> int | None:
        import json

        path = self.workdir / "config.json"
        try:
            value = json.loads(path.read_text()).get("federated", {}).get("rounds")
            return int(value) if value is not None else None
        except (OSError, ValueError, AttributeError, TypeError):
            return None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def finished(self) -> bool:
        """The last planned round has its ``global`` record (False while the number of rounds is unknown)."""
        s = self._summary
        done = [rd for rd, _ in s["loss"].get(GLOBAL, [])]
        return self.rounds is not None and bool(done) and max(done) >= self.rounds

    def start(self) -> None:
        """Start ``command`` in the background (own session; output appended to ``WORKDIR/federated.log``)."""
        if self.command is None:
            raise RuntimeError("no command to start: pass command=[...] (e.g. medjax federated simulate ...)")
        if self.running:
            raise RuntimeError(f"a run is already going (pid {self.process.pid}); stop it first")
        self.process, self._log = start_logged(self.command, self.workdir / LOG_FILE, cwd=self.cwd,
                                               previous_log=self._log)
        self._seen = None
        self._follow()

    def stop(self, *, kill: bool = False) -> None:
        """Ask the run to stop, or stop following when there is no process.

        SIGINT, as Ctrl-C in a terminal: ``medjax federated simulate`` then stops every process it started
        (SuperLink, SuperNodes, ``flwr run``) before it exits. ``kill=True`` sends SIGKILL to the run's whole
        process group (the command was started in its own session) for a run that no longer answers.
        """
        if self.running:
            if kill:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except OSError:
                    self.process.kill()
            else:
                self.process.send_signal(signal.SIGINT)
        elif self.process is None:
            self._stop_polling.set()

    def wait(self, timeout: float | None = None) -> int:
        """Block until the run's process ends; returns its exit status (``TimeoutError`` after ``timeout`` s)."""
        if self.process is None:
            raise RuntimeError("no process to wait for: start() a command or pass process=")
        code = wait_logged(self.process, self.workdir / LOG_FILE, timeout)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.refresh()
        return code

    def log(self, lines: int = 40) -> str:
        """The last ``lines`` lines the started command printed."""
        return tail_log(self.workdir / LOG_FILE, lines)

    def _follow(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop_polling.clear()
        self._thread = threading.Thread(target=self._poll, name="medjax-federated-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop_polling.is_set():
            self.refresh()
            proc = self.process
            if proc is not None and proc.poll() is not None:
                break
            if proc is None and self.finished:
                break
            self._stop_polling.wait(self.poll_s)
        self.refresh()

    # -- data ----------------------------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """The records of ``WORKDIR/metrics.jsonl`` (a torn last line, from a run still writing, is skipped)."""
        from medjax.training.logging import METRICS_FILE, read_metrics

        return read_metrics(self.workdir / METRICS_FILE)

    def summary(self) -> dict:
        """:func:`summarize_federated` of the records read at the last refresh."""
        return self._summary

    # -- display -------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read ``metrics.jsonl`` again and update every part of the view (thread-safe)."""
        with self._lock:
            records = self.records()
            s = summarize_federated(records)
            self._summary = s
            done = max(s["rounds"]) if s["rounds"] else 0
            self._progress.max = max(self.rounds or done or 1, 1)
            self._progress.value = min(done, self._progress.max)
            state = (len(records), self.rounds)
            if state != self._seen:
                self._seen = state
                self._plot.value = self._png(s)
                self._table.value = self._table_html(s)
            self._status.value = self._status_text(s)
            self._sites.value = (f"{len(s['sites'])} sites: " + ", ".join(s["sites"])) if s["sites"] else "no site yet"

    def _status_text(self, s: dict) -> str:
        done = max(s["rounds"]) if s["rounds"] else 0
        total = f"/{self.rounds}" if self.rounds else ""
        parts = [f"round {done}{total}"]
        if s["loss"].get(GLOBAL):
            parts.append(f"global loss {s['loss'][GLOBAL][-1][1]:.4f}")
        if s["epsilon"]:
            parts.append(f"epsilon spent {s['epsilon'][-1][1]:.3g}")
        elif s["rounds"]:
            parts.append("no DP (epsilon not recorded)")
        code = self.returncode
        if self.process is not None:
            state = f"running (pid {self.process.pid})" if code is None else f"finished (exit {code})"
        else:
            state = "complete" if self.finished else f"reading {self.workdir}"
        text = f"{state}: " + ", ".join(parts)
        if code not in (None, 0) and self.command is not None:
            text += f"; see {self.workdir / LOG_FILE}"
        return text

    def _table_html(self, s: dict) -> str:
        if not s["last"]:
            return "<i>no metrics yet</i>"
        head = "".join(f"<th style='padding:0 8px'>{h}</th>" for h in
                       ("site", "round", "loss", "examples", "seconds", "sent", "epsilon"))
        rows = []
        for name in ([GLOBAL] if GLOBAL in s["last"] else []) + s["sites"]:
            r = s["last"][name]
            loss, eps, sec = r.get("loss"), r.get("epsilon"), r.get("seconds")
            cells = (name, r.get("round"), "-" if loss is None else f"{float(loss):.4f}",
                     r.get("num_examples", "-"), "-" if sec is None else f"{float(sec):.1f}",
                     _megabytes(r.get("bytes_sent")), "-" if eps is None else f"{float(eps):.3g}")
            rows.append("<tr>" + "".join(f"<td style='padding:0 8px'>{html.escape(str(c))}</td>" for c in cells)
                        + "</tr>")
        return f"<table><tr>{head}</tr>{''.join(rows)}</table>"

    def _png(self, s: dict) -> bytes:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        fig = Figure(figsize=(8.0, 2.8), dpi=80)
        FigureCanvasAgg(fig)
        ax, ax_eps = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for name, series in s["loss"].items():
            x, y = zip(*series)
            if name == GLOBAL:
                ax.plot(x, y, color="black", lw=2.2, marker="o", ms=3, label="global", zorder=3)
            else:
                ax.plot(x, y, lw=1.2, marker=".", ms=4, label=name, alpha=0.85)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.set_title("loss per round: global model and each site", fontsize=9)
        if s["loss"]:
            ax.legend(fontsize=7, loc="upper right")
        if s["epsilon"]:
            x, y = zip(*s["epsilon"])
            ax_eps.plot(x, y, color="#d62728", lw=1.6, marker="o", ms=3)
            ax_eps.set_title(f"privacy spent: epsilon {y[-1]:.3g}", fontsize=9)
        else:
            ax_eps.text(0.5, 0.5, "no DP in this run\n(epsilon not recorded)", ha="center", va="center",
                        fontsize=9, transform=ax_eps.transAxes, color="#555555")
            ax_eps.set_title("privacy spent", fontsize=9)
        ax_eps.set_xlabel("round", fontsize=8)
        ax_eps.set_ylabel("epsilon", fontsize=8)
        for a in (ax, ax_eps):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a.tick_params(labelsize=7)
            a.grid(alpha=0.3)
            if self.rounds:
                a.set_xlim(0.5, max(self.rounds, 1) + 0.5)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()

    def to_png(self) -> bytes:
        return bytes(self._plot.value)

    def _build_widgets(self) -> None:
        import ipywidgets as w

        self._sites = w.Label()
        self._status = w.Label()
        self._progress = w.IntProgress(value=0, min=0, max=max(self.rounds or 1, 1), description="rounds")
        self._plot = w.Image(format="png")
        self._table = w.HTML()
        self._stop_button = w.Button(description="Stop", icon="stop", button_style="danger",
                                     tooltip="Ctrl-C to the run: it stops every process it started, then exits")
        self._stop_button.on_click(lambda _: self.stop())
        controls = [self._progress] + ([self._stop_button] if self.command is not None or self.process else [])
        self.widget = w.VBox([self._sites, w.HBox(controls), self._status, self._plot, self._table])

    def __repr__(self) -> str:
        return f"FederatedView({str(self.workdir)!r}, status={self._status.value!r})"
