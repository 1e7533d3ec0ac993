"""Shared test set-up. Everything runs on the CPU; slow end-to-end tests live in tests/integration.

JAX's persistent compilation cache is shared by every test process and the subprocesses they start (the
environment variables are inherited), so the many tiny models compiled across the suite are compiled once.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
