"""`medjax federated simulate` argument checks (no deployment started)."""

from __future__ import annotations

import pytest

from medjax.cli import main
from medjax.errors import ConfigError


def test_site_count_must_match_the_site_folders(tmp_path, capsys):
    code = main(["federated", "simulate", "--config", "demo", "--sites", "3", "--site-dirs", str(tmp_path),
                 "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert "--sites 3 but 1 --site-dirs" in capsys.readouterr().err


def test_bad_federated_key_is_named(tmp_path, capsys):
    code = main(["federated", "simulate", "--config", "demo", "--site-dirs", str(tmp_path), "--workdir",
                 str(tmp_path / "w"), "--set", "federated.stratgy=fedavg"])
    assert code == 2
    assert "federated.stratgy" in capsys.readouterr().err


def test_unknown_strategy_is_refused_before_anything_starts(tmp_path, capsys):
    from medjax.config import load_config
    from medjax.federated.server import FederatedServer

    cfg = load_config("demo", ["federated.strategy=fedsgd"])
    with pytest.raises(ConfigError, match="federated.strategy='fedsgd'"):
        FederatedServer(cfg, tmp_path / "w")
