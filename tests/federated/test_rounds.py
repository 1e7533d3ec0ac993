"""The federated round loop with sites in this process: one site equals centralised training step for step, a
restarted server ends where an uninterrupted one does, an absent site and local keys behave, DP noise is added
at the site (tiny MAE, CPU; every test runs the same model and schedule, so the site step compiles once)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.federated.conftest import tiny_cfg


def _records(path, key="round"):
    return [json.loads(line) for line in open(path) if line.strip()]


def test_one_site_with_all_data_equals_centralised_training(site_dirs, tmp_path):
    from medjax.config import apply_overrides
    from medjax.data.sources import load_records
    from medjax.federated.inprocess import InProcessSites
    from medjax.federated.server import FederatedServer
    from medjax.training.pretraining import pretrain

    data = site_dirs[1]
    # the site holds its last volume out; the centralised run trains on the same two and scores the third
    cfg = tiny_cfg(data, "federated.rounds=2", "data.holdout_last=1", "train.eval_samples=6")
    held = tmp_path / "held.json"
    held.write_text(json.dumps([{"id": r["id"], "image": r["image"]} for r in load_records(data)[-1:]]))
    central = pretrain(apply_overrides(cfg, ["train.steps=4", f"data.val_dir={held}", "train.eval_every=4"]),
                       tmp_path / "central", progress=False)
    with FederatedServer(cfg, tmp_path / "server", log=lambda s: None) as server:
        summary = server.run(InProcessSites({"only": data}, tmp_path / "states"))
    assert summary["rounds"] == 2
    # step for step: same losses (the site's own log) and the same final parameters, bit for bit
    central_log = _records(tmp_path / "central" / "metrics.jsonl")
    want = [r["loss"] for r in central_log if "loss" in r]
    got = [r["loss"] for r in _records(tmp_path / "states" / "only" / "metrics.jsonl")]
    assert len(want) == len(got) == 4
    assert got == want
    assert summary["params_digest"] == central["params_digest"]
    # the site scored the global model on its held-out volume: the centralised run's held-out MAE loss
    val = [r["val_loss"] for r in central_log if "val_loss" in r]
    ev = json.loads((tmp_path / "server" / "eval.json").read_text())
    assert ev == summary["eval"] and ev["num_val"] == 1 and ev["sites"]["only"]["num_val"] == 1
    assert set(ev["sites"]["only"]) == {"num_val", "val_loss"}  # aggregate numbers only
    assert ev["sites"]["only"]["val_loss"] == pytest.approx(val[-1], rel=1e-6) and ev["mean"]["val_loss"] > 0


def _run(cfg, workdir, states, sites, *, drop=None, crash_after_round=None):
    from medjax.federated.inprocess import InProcessSites
    from medjax.federated.server import FederatedServer

    exchange = InProcessSites(sites, states, drop=drop)

    def crashing(round_, arrays, config_json):
        replies = exchange(round_, arrays, config_json)
        if round_ == crash_after_round:  # the sites trained this round; the server dies before saving it
            raise KeyboardInterrupt
        return replies

    with FederatedServer(cfg, workdir, log=lambda s: None) as server:
        return server.run(crashing)


def test_restarted_server_resumes_and_ends_like_an_uninterrupted_run(site_dirs, tmp_path):
    from medjax.training.checkpoint import Checkpointer

    sites = {"site-a": site_dirs[0], "site-b": site_dirs[1]}
    # the same model and schedule as the test above (one compiled step for the module)
    cfg = tiny_cfg(site_dirs[0], "federated.rounds=2", "federated.local_keys=norm")
    drop = {1: ["site-b"]}  # site-b is away in round 1 and joins in round 2
    whole = _run(cfg, tmp_path / "a", tmp_path / "a-states", sites, drop=drop)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, tmp_path / "b", tmp_path / "b-states", sites, drop=drop, crash_after_round=2)
    assert Checkpointer(tmp_path / "b", read_only=True).latest_step() == 1
    resumed = _run(cfg, tmp_path / "b", tmp_path / "b-states", sites, drop=drop)
    assert resumed["rounds"] == whole["rounds"] == 2
    assert resumed["params_digest"] == whole["params_digest"]

    records = _records(tmp_path / "b" / "metrics.jsonl")
    glob = [r for r in records if r["site"] == "global"]
    assert [r["round"] for r in glob] == [1, 2]  # no round logged twice after the restart
    assert [r["sites"] for r in glob] == [["site-a"], ["site-a", "site-b"]]
    for r in records:
        assert {"round", "site", "loss", "num_examples", "epsilon", "seconds", "bytes_sent"} <= set(r)
        assert r["epsilon"] is None and np.isfinite(r["loss"])
    # weights are the sites' record counts (2 and 3 volumes)
    assert {r["site"]: r["num_examples"] for r in records if r["round"] == 2} == {"site-a": 2, "site-b": 3,
                                                                                "global": 5}
    # parameters matched by local_keys never travel: the global model keeps their initial values, the sites
    # their own trained ones
    state, _, _ = Checkpointer(tmp_path / "b", read_only=True).restore_unsharded(2)
    site_a, _, _ = Checkpointer(tmp_path / "b-states" / "site-a", read_only=True).restore_unsharded()
    site_b, _, _ = Checkpointer(tmp_path / "b-states" / "site-b", read_only=True).restore_unsharded()
    from medjax.federated.arrays import flatten
    from medjax.federated.server import initial_params

    init, g, a, b = (flatten(t) for t in (initial_params(cfg)[0], state["params"], site_a["params"], site_b["params"]))
    norms = [k for k in g if "norm" in k]
    others = [k for k in g if "norm" not in k]
    assert norms and others
    for k in norms:
        np.testing.assert_array_equal(g[k], init[k])
    assert any(not np.array_equal(a[k], b[k]) for k in norms)
    assert not any(np.array_equal(g[k], init[k]) for k in others if g[k].ndim > 1)


def test_dp_noise_is_added_at_the_site_with_the_configured_scale(site_dirs, tmp_path):
    from medjax.federated.arrays import flatten
    from medjax.federated.inprocess import InProcessSites
    from medjax.federated.privacy import PrivacyAccountant
    from medjax.federated.server import FederatedServer, initial_params

    clip = 1e-3  # far below the update's norm: the clipped update is negligible next to the noise
    cfg = tiny_cfg(site_dirs[1], "federated.rounds=2", f"federated.dp_clip={clip}", "federated.dp_noise=1.0",
                   "federated.dp_delta=1e-5")
    with FederatedServer(cfg, tmp_path / "server", log=lambda s: None) as server:
        summary = server.run(InProcessSites({"only": site_dirs[1]}, tmp_path / "states"))
        final = flatten(server.params())
    init = flatten(initial_params(cfg)[0])
    diff = np.concatenate([(final[k] - init[k]).ravel() for k in init]).astype(np.float64)
    # two rounds, each adding N(0, (noise * clip)^2) per coordinate: std sqrt(2) * clip (over ~10^5 coordinates)
    assert diff.size > 50_000
    assert abs(diff.std() / (np.sqrt(2) * clip) - 1) < 0.03
    want = PrivacyAccountant(1.0, 1.0, 1e-5).step(2).epsilon()
    assert summary["epsilon"] == pytest.approx(want)
    privacy = json.loads((tmp_path / "server" / "privacy.json").read_text())
    assert privacy["epsilon"] == pytest.approx(want) and privacy["rounds"] == 2
    eps = [r["epsilon"] for r in _records(tmp_path / "server" / "metrics.jsonl") if r["site"] == "global"]
    assert eps[1] > eps[0] > 0
