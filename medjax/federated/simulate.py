"""A real Flower deployment on loopback: one ``flower-superlink``, one ``flower-supernode`` per site (each
pointed only at its own data folder), the medjax app submitted with ``flwr run``; every process it started is
stopped when it ends, also on failure or Ctrl-C.

The generated files live in ``WORKDIR/flower``: ``home/config.toml`` (the SuperLink connection ``medjax-local``,
read by ``flwr`` through ``FLWR_HOME``), ``app/pyproject.toml`` (the Flower app: components
``medjax.federated.server_app:app`` / ``medjax.federated.client_app:app``, run config ``config-json`` and
``workdir``) and the logs of each process (``superlink.log``, ``site-K.log``, ``run.log``). Site state (local
train state between rounds) goes to ``WORKDIR/flower/state/site-K``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from medjax.errors import ConfigError

CONNECTION = "medjax-local"
START_TIMEOUT_S = 120.0  # seconds the SuperLink may take to accept connections
STOP_GRACE_S = 10.0  # seconds between SIGTERM and SIGKILL when stopping


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(d))
    return out


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc (empty where there is none)."""
    tree, out, todo = _children(), set(), [pid]
    while todo:
        for c in tree.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, finished but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return not os.path.isdir("/proc")


def _is_app_process(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ")
    except OSError:
        return False
    return b"flwr-serverapp" in cmd or b"flwr-clientapp" in cmd


class LocalDeployment:
    """SuperLink and SuperNodes on 127.0.0.1 as separate process groups (a context manager: :meth:`stop` on exit).

    Args:
      root: folder for the generated Flower files, logs and site state (``WORKDIR/flower``).
      sites: ``{site name: data folder}``; each SuperNode's ``--node-config`` names only its own folder.
      env: extra environment for every process (e.g. ``MEDJAX_FEDERATED_AUDIT``).
    """

    def __init__(self, root, sites: dict[str, str], *, env: dict[str, str] | None = None):
        self.root = Path(root).absolute()
        self.sites = {k: str(Path(v).absolute()) for k, v in sites.items()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.seen: set[int] = set()  # every pid observed below the processes started here
        self.port = 0
        bindir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "FLWR_HOME": str(self.root / "home"), "PYTHONUNBUFFERED": "1",
                    "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
        self.bindir = bindir

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115  (closed by the child's exit)
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                             start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def state_dir(self, site: str) -> Path:
        return self.root / "state" / site

    def start(self) -> None:
        """Start the SuperLink, wait until it accepts connections, then start one SuperNode per site."""
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.root / "home" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self._start("superlink", [f"{self.bindir}/flower-superlink", "--insecure", "--host", "127.0.0.1",
                                  "--port", str(self.port)])
        self._wait_port(self.port, self.procs["superlink"])
        for site, data in sorted(self.sites.items()):
            state = self.state_dir(site)
            state.mkdir(parents=True, exist_ok=True)
            node_config = f'data-dir="{data}" state-dir="{state}" site="{site}"'
            self._start(site, [f"{self.bindir}/flower-supernode", "--insecure", "--superlink",
                               f"127.0.0.1:{self.port}", "--port", str(free_port()), "--node-config", node_config])

    def _wait_port(self, port: int, proc: subprocess.Popen) -> None:
        t0 = time.time()
        while time.time() - t0 < START_TIMEOUT_S:
            if proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see "
                                   f"{self.root / 'superlink.log'}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not accept connections on port {port} within "
                           f"{START_TIMEOUT_S:.0f} s; see {self.root / 'superlink.log'}")

    def kill_site(self, site: str) -> None:
        """Kill one SuperNode and everything below it at once (SIGKILL): a site that dies mid-run."""
        p = self.procs[site]
        for pid in descendants(p.pid) | {p.pid}:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        p.wait()

    def watch(self) -> set[int]:
        """Record (and return) every pid now running below the processes started here."""
        for p in self.procs.values():
            self.seen |= {p.pid} | descendants(p.pid)
        return set(self.seen)

    def run(self, app_dir, *, on_line: Callable[[str], None] | None = None, timeout: float | None = None) -> int:
        """``flwr run APP_DIR medjax-local --stream``; each output line goes to ``on_line``. Returns its exit code."""
        argv = [f"{self.bindir}/flwr", "run", str(app_dir), CONNECTION, "--stream"]
        with open(self.root / "run.log", "a") as log:
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
                                 start_new_session=True, text=True, errors="replace")
            self.procs["flwr-run"] = p
            t0 = time.time()
            assert p.stdout is not None
            for line in p.stdout:
                log.write(line)
                self.watch()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
                if timeout is not None and time.time() - t0 > timeout:
                    raise TimeoutError(f"the federated run took longer than {timeout:.0f} s; see {self.root}")
            return p.wait()

    def wait_idle(self, timeout: float = 600.0) -> None:
        """Wait until no ServerApp or ClientApp process of an earlier run is left below the processes started here
        (before submitting the run again: two runs must not write the same site or server state)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            busy = [p for p in self.watch() if alive(p) and _is_app_process(p)]
            if not busy:
                return
            time.sleep(0.5)
        raise RuntimeError(f"Flower app processes of an earlier run were still running after {timeout:.0f} s")

    def stop(self) -> set[int]:
        """SIGTERM every process started here and all below it (also the ones Flower detaches), SIGKILL what
        remains after :data:`STOP_GRACE_S`; returns the pids that were stopped."""
        pids = self.watch()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        while time.time() < deadline and any(alive(p) for p in pids):
            for p in self.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=0.05)
            time.sleep(0.1)
        pids |= self.watch()
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        return pids

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def write_app(app_dir, *, config_json: str, workdir, wait_sites: int) -> Path:
    """The Flower app folder (``pyproject.toml`` only: the code is the installed medjax)."""
    import tomli_w

    app_dir = Path(app_dir)
    app_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "medjax-federated", "version": "1.0.0", "description": "medjax federated run",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "medjax",
            "components": {"serverapp": "medjax.federated.server_app:app",
                           "clientapp": "medjax.federated.client_app:app"},
            "config": {"config-json": config_json, "workdir": str(Path(workdir).absolute()),
                       "wait-sites": int(wait_sites)},
        }}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return app_dir


def simulate(cfg, workdir, site_dirs: Sequence[str], *, restart: bool = False, env: dict[str, str] | None = None,
             on_line: Callable[[str], None] | None = None, timeout: float | None = None,
             deployment_hook: Callable[[LocalDeployment], None] | None = None, resubmit: int = 2) -> dict:
    """Run ``cfg`` (its ``federated`` section) over a loopback deployment with one site per folder.

    Args:
      site_dirs: the sites' data folders (site ``k`` is ``site-k``, reading only ``site_dirs[k-1]``).
      restart: start afresh (delete WORKDIR's checkpoints, metrics and site state) instead of resuming.
      on_line: receives each line the run streams (the server's ``[medjax]`` progress lines among them).
      deployment_hook: called with the started deployment (tests: kill a site, watch processes).
      resubmit: times the app is submitted again when a run ends before its last round (e.g. Flower gave up on
        the ServerApp's heartbeats on an overloaded machine); the new run resumes at the round after the latest
        checkpoint, once every app process of the old run has exited.
    Returns the server's summary (``WORKDIR/summary.json``) plus ``flower_dir`` and ``pids`` (every process
    started, all stopped).
    """
    import json
    import shutil

    from medjax.config.overrides import to_json
    from medjax.training.setup import clean_workdir

    workdir = Path(workdir).absolute()
    if not site_dirs:
        raise ConfigError("federated simulate needs at least one site data folder")
    root = workdir / "flower"
    if restart:
        clean_workdir(workdir, ("privacy.json",))
        shutil.rmtree(root, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "summary.json").unlink(missing_ok=True)
    sites = {f"site-{i + 1}": str(d) for i, d in enumerate(site_dirs)}
    app = write_app(root / "app", config_json=to_json(cfg), workdir=workdir, wait_sites=len(sites))
    dep = LocalDeployment(root, sites, env=env)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM runs the clean-up below, as Ctrl-C does
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        dep.start()
        if deployment_hook is not None:
            deployment_hook(dep)
        summary_path = workdir / "summary.json"
        for attempt in range(resubmit + 1):
            code = dep.run(app, on_line=on_line, timeout=timeout)
            if summary_path.is_file() or attempt == resubmit:
                break
            if on_line is not None:
                on_line(f"[medjax] the run ended before its last round (flwr run exit code {code}); submitting it "
                        f"again to resume from the latest checkpoint ({attempt + 1}/{resubmit})")
            dep.wait_idle()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        pids = dep.stop()
    summary_path = workdir / "summary.json"
    if not summary_path.is_file():
        raise RuntimeError(f"the federated run ended (flwr run exit code {code}) without finishing its rounds; "
                           f"see {root / 'run.log'} and the logs next to it")
    summary = json.loads(summary_path.read_text())
    summary.update(flower_dir=str(root), pids=sorted(pids))
    return summary
