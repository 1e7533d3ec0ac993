"""Shared test fixtures. Everything runs on the CPU; slow end-to-end tests live in tests/integration."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
