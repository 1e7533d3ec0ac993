"""``medjax lab``: loopback-only JupyterLab with a random token (server start, auth, address refusal)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from medjax.errors import ConfigError
from medjax.lab import check_ip, lab_command, start_lab


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_accepted(ip):
    assert check_ip(ip) == ip


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "example.org"])
def test_non_loopback_addresses_are_refused_unless_allowed(ip):
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_ip(ip)
    assert check_ip(ip, allow_remote=True) == ip


def test_cli_refuses_all_interfaces_without_starting_anything(tmp_path):
    r = subprocess.run([sys.executable, "-m", "medjax", "lab", "--ip", "0.0.0.0", "--notebooks", str(tmp_path),
                        "--no-browser"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "0.0.0.0" in r.stderr and "--allow-remote" in r.stderr
    assert "Traceback" not in r.stderr


def test_command_has_no_token_and_is_offline(tmp_path):
    argv = lab_command(tmp_path, port=0, allow_root=True)
    assert not any(a.split("=")[0].lower().endswith("token") for a in argv)
    assert "--ServerApp.ip=127.0.0.1" in argv and "--allow-root" in argv
    assert "--LabApp.news_url=None" in argv
    assert "--allow-root" not in lab_command(tmp_path, allow_root=False)


def test_server_answers_with_token_and_refuses_without(tmp_path):
    (tmp_path / "hello.txt").write_text("hi")
    with start_lab(tmp_path, port=0, timeout=90) as server:
        assert server.port > 0
        assert len(server.token) >= 32
        assert server.url == f"http://127.0.0.1:{server.port}/lab?token={server.token}"
        assert _get(f"{server.base_url}/api/status", server.token) == 200
        assert _get(f"{server.base_url}/api/status") == 403
        assert _get(f"{server.base_url}/api/status", "not-the-token") == 403
        # rooted at the folder given
        assert _get(f"{server.base_url}/api/contents/hello.txt", server.token) == 200
        # the token is not on the process's command line
        with open(f"/proc/{server.process.pid}/cmdline", "rb") as f:
            assert server.token.encode() not in f.read()
    assert server.process.poll() is not None
    assert not os.path.exists(server.runtime_dir)


def test_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        start_lab(tmp_path / "nope")
