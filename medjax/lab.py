"""Start JupyterLab on the notebooks folder, safely: loopback only, a fresh random token, no outbound fetches.

``start_lab`` runs ``python -m jupyterlab`` (the interpreter medjax runs in, so notebooks get its kernel) in a
subprocess and returns a :class:`LabServer` once the server answers ``GET /api/status`` with its token. The
token travels in the child's environment (``JUPYTER_TOKEN``), never on its command line, so other users cannot
read it from the process list. With ``port=0`` the operating system picks a free port; the server writes the
port it bound into its runtime info file (``jpserver-PID.json``), which is read back from a private runtime
folder.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from medjax.errors import ConfigError, MedjaxError

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def check_ip(ip: str, allow_remote: bool = False) -> str:
    """Return ``ip`` if it is a loopback address (or ``allow_remote``); raise :class:`ConfigError` otherwise.

    Binding JupyterLab to ``0.0.0.0`` or a network interface lets anyone who can reach the machine and learn
    the token run code as this user, so it must be asked for explicitly.
    """
    ip = ip.strip()
    if not ip:
        raise ConfigError("--ip is empty: give a loopback address such as 127.0.0.1")
    if allow_remote:
        return ip
    if ip.lower() in _LOOPBACK_NAMES:
        return ip
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        raise ConfigError(
            f"--ip {ip}: not a loopback address; JupyterLab runs code as you, so it listens only on 127.0.0.1 "
            f"by default. Pass --allow-remote to listen on {ip} (anyone who can reach it and has the token can "
            "run code), or tunnel instead: ssh -L 8888:127.0.0.1:PORT host"
        ) from None
    if not addr.is_loopback:
        what = "every network interface" if addr.is_unspecified else "a network interface"
        raise ConfigError(
            f"--ip {ip}: refusing to listen on {what}; JupyterLab runs code as you and only the token would "
            "protect it. Pass --allow-remote to do it anyway, or keep 127.0.0.1 and tunnel: "
            "ssh -L 8888:127.0.0.1:PORT host"
        )
    return ip


def lab_command(
    notebooks: str | os.PathLike,
    *,
    port: int = 0,
    ip: str = "127.0.0.1",
    open_browser: bool = False,
    allow_root: bool | None = None,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """The argv that starts JupyterLab rooted at ``notebooks`` (no token in it: see :func:`start_lab`)."""
    if allow_root is None:
        allow_root = hasattr(os, "geteuid") and os.geteuid() == 0
    argv = [
        sys.executable, "-m", "jupyterlab",
        f"--ServerApp.root_dir={Path(notebooks).resolve()}",
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={int(port)}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.open_browser={bool(open_browser)}",
        # Offline by design: no news feed, no update check, no PyPI extension listing.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if allow_root:
        argv.append("--allow-root")
    argv.extend(extra_args)
    return argv


@dataclass
class LabServer:
    """A running JupyterLab. ``url`` includes the token; ``base_url`` does not. Use as a context manager."""

    process: subprocess.Popen
    port: int
    ip: str
    token: str
    runtime_dir: str
    log_path: str
    _owns_runtime: bool = field(default=True, repr=False)

    @property
    def base_url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base_url}/lab?token={self.token}"

    def log(self) -> str:
        """The server's combined stdout/stderr so far."""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """Shut the server down (SIGTERM, then SIGKILL after ``timeout`` s); return its exit code."""
        p = self.process
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self._owns_runtime:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return p.returncode

    def __enter__(self) -> "LabServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_port(runtime_dir: str, pid: int) -> int | None:
    info = Path(runtime_dir) / f"jpserver-{pid}.json"
    try:
        return int(json.loads(info.read_text())["port"])
    except (OSError, ValueError, KeyError):
        return None


def _status(base_url: str, token: str, timeout: float = 2.0) -> int:
    req = urllib.request.Request(f"{base_url}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def start_lab(
    notebooks: str | os.PathLike = "notebooks",
    *,
    port: int = 0,
    ip: str = "127.0.0.1",
    allow_remote: bool = False,
    open_browser: bool = False,
    token: str | None = None,
    allow_root: bool | None = None,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    log_path: str | os.PathLike | None = None,
    timeout: float = 120.0,
) -> LabServer:
    """Start JupyterLab in ``notebooks`` and wait until it serves ``/api/status``; return the :class:`LabServer`.

    ``port=0`` picks a free port. ``token`` defaults to ``secrets.token_urlsafe(32)``. ``extra_args`` are
    appended to the JupyterLab command line (e.g. ``--LabApp.expose_app_in_browser=True`` for browser tests);
    ``env`` adds environment variables for the server and its kernels. Raises :class:`MedjaxError` with the
    server's log tail if it exits or does not answer within ``timeout`` seconds.
    """
    check_ip(ip, allow_remote)
    folder = Path(notebooks)
    if not folder.is_dir():
        raise ConfigError(f"--notebooks {folder}: no such folder; give the folder that holds the .ipynb files")
    token = token or secrets.token_urlsafe(32)
    runtime_dir = tempfile.mkdtemp(prefix="medjax-lab-")
    log_file = Path(log_path) if log_path else Path(runtime_dir) / "server.log"
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env.update(JUPYTER_TOKEN=token, JUPYTER_RUNTIME_DIR=runtime_dir)
    child_env.pop("JUPYTER_TOKEN_FILE", None)
    argv = lab_command(folder, port=port, ip=ip, open_browser=open_browser, allow_root=allow_root,
                       extra_args=extra_args)
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env, cwd=str(folder.resolve()), start_new_session=True)
    server = LabServer(proc, int(port), ip, token, runtime_dir, str(log_file))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = server.log()[-2000:]
            server.stop()
            raise MedjaxError(f"JupyterLab exited with code {proc.returncode} before it was ready:\n{tail}")
        bound = _read_port(runtime_dir, proc.pid)
        if bound:
            server.port = bound
            try:
                if _status(server.base_url, token) == 200:
                    return server
            except OSError:
                pass
        time.sleep(0.25)
    tail = server.log()[-2000:]
    server.stop()
    raise MedjaxError(f"JupyterLab did not answer on {server.base_url} within {timeout:.0f} s:\n{tail}")
