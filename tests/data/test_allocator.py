"""glibc allocator tuning: never from library use (a notebook kernel keeps its malloc), on in the CLI."""

from __future__ import annotations

import ctypes
import sys

import pytest

from medjax.data import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")


class _FakeLibc:
    def __init__(self, calls):
        self._calls = calls

    def mallopt(self, param, value):
        self._calls.append((param, value))
        return 1


@pytest.fixture
def mallopt_calls(monkeypatch):
    """Every mallopt call made through ctypes in this test, whoever makes it; a fresh, untuned process."""
    calls = []
    real = ctypes.CDLL

    def fake_cdll(name, *a, **kw):
        return _FakeLibc(calls) if "libc" in str(name) else real(name, *a, **kw)

    monkeypatch.setattr(ctypes, "CDLL", fake_cdll)
    monkeypatch.setattr(allocator, "_tuned", False)
    for key in [k for k in list(__import__("os").environ) if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(key)
    monkeypatch.delenv(allocator.ENV, raising=False)
    return calls


def test_library_pipeline_leaves_malloc_alone(tmp_path, mallopt_calls):
    from medjax.config.schema import DataConfig
    from medjax.data.cache import prepare
    from medjax.data.pipeline import make_iterator
    from medjax.data.testing import write_blob_volumes

    src = write_blob_volumes(tmp_path / "vols", n=2, shape=(12, 12, 12))
    cfg = DataConfig(dir=src, crop_size=(8,), spacing=(2.0,), workers=1, intensity="none")
    prepare(src, str(tmp_path / "cache"), cfg, workers=0)
    for c in (cfg, DataConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "cache")})):
        with make_iterator(c, batch_size=2, seed=0, num_epochs=1) as it:
            assert len(list(it)) == 2
    assert mallopt_calls == []


def test_cli_tunes_unless_disabled(tmp_path, monkeypatch, mallopt_calls, capsys):
    from medjax.cli import main
    from medjax.data.testing import write_blob_volumes

    src = write_blob_volumes(tmp_path / "vols", n=1, shape=(12, 12, 12))
    monkeypatch.setenv(allocator.ENV, "0")
    assert main(["data", "check", src]) == 0
    assert mallopt_calls == []
    monkeypatch.delenv(allocator.ENV)
    assert main(["data", "check", src]) == 0
    assert mallopt_calls == [(-3, 32 << 20), (-1, 256 << 20), (-2, 64 << 20)]  # mmap, trim threshold, top pad
    assert main(["data", "check", src]) == 0
    assert len(mallopt_calls) == 3  # once per process


def test_glibc_variables_set_by_the_user_win(monkeypatch, mallopt_calls):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert allocator.tune_allocator() is False and mallopt_calls == []
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert allocator.tune_allocator() is True and len(mallopt_calls) == 3
