"""Frozen-feature probes (`medjax probe`) and embeddings (`medjax features`) on tiny real NIfTI volumes."""

import csv
import json

import numpy as np
import pytest

from medjax.config.overrides import to_dict
from medjax.finetune.probe_fit import fit_and_score, knn_scores
from tests.finetune.probe_data import cube_data, mae_run, probe_cfg  # noqa: F401  (module-scoped fixtures)

def test_linear_and_knn_fit_separable_features_perfectly_and_deterministically():
    rng = np.random.default_rng(0)

    def separable(n):  # two classes on either side of a plane, 0.5 apart from it
        v = rng.normal(size=(4 * n, 5))
        s = v[:, 0] + 0.5 * v[:, 1]
        v, s = v[np.abs(s) > 0.5][:n], s[np.abs(s) > 0.5][:n]
        return v, (s > 0).astype(np.int64)

    x, y = separable(60)
    groups = np.arange(60) // 6
    tx, ty = separable(40)
    a = fit_and_score("linear", x, y, groups, tx, 2)
    b = fit_and_score("linear", x, y, groups, tx, 2)
    assert a["scores"].shape == (40, 2)
    np.testing.assert_array_equal(a["scores"], b["scores"])
    np.testing.assert_allclose(a["scores"].sum(1), 1.0, atol=1e-12)
    assert np.mean(a["scores"].argmax(1) == ty) == 1.0 and a["lambda"] in a["cv"]
    # k-NN on two far-apart clusters: every neighbour of a test point is of its own class
    cx = np.concatenate([rng.normal(size=(10, 3)) + 10, rng.normal(size=(10, 3)) - 10])
    cy = np.repeat([0, 1], 10)
    votes = knn_scores(cx, cy, np.asarray([[9.0, 10, 11], [-10.0, -9, -11]]), k=5, num_classes=2)
    np.testing.assert_allclose(votes, [[1.0, 0.0], [0.0, 1.0]])


def test_random_init_probe_is_perfect_on_cube_windows(cube_data):  # noqa: F811
    from medjax.finetune.probe import probe, probe_grid

    res = probe(probe_cfg(cube_data), random_init=True, seeds=(0,))
    assert res["train"]["volumes"] == 8 and res["train"]["windows"] == 64 and res["train"]["window_positives"] == 4
    assert res["held_out"]["ids"] == ["v08", "v09", "v10", "v11"] and res["held_out"]["window_positives"] == 2
    runs = res["random_init"]["runs"]
    assert [r["seed"] for r in runs] == [0] and runs[0]["feature_dim"] == 64  # Mu: width 64
    for r in runs:  # a bright cube fills its window exactly: the windows are linearly separable
        assert r["metrics"]["window"]["auroc"] == 1.0 and r["metrics"]["window"]["accuracy"] == 1.0
        assert r["metrics"]["window"]["n"] == 32 and r["metrics"]["volume"]["n"] == 4
    assert res["verdict"]["status"] == "no-comparison" and "pretrained" not in res
    # several pools and kinds from one embedding pass: pools outer, kinds inner, and the (mean, linear) result
    # is the single probe's
    grid = probe_grid(probe_cfg(cube_data), random_init=True, seeds=(0,), pools=("mean", "max"),
                      kinds=("linear", "knn"))
    assert [(g["pool"], g["kind"]) for g in grid] == [("mean", "linear"), ("mean", "knn"), ("max", "linear"),
                                                      ("max", "knn")]
    assert grid[0]["random_init"]["runs"][0]["metrics"] == runs[0]["metrics"]
    assert all(g["random_init"]["runs"][0]["metrics"]["window"]["auroc"] == 1.0 for g in grid)


def test_block_features_are_that_block_through_the_final_norm(cube_data, mae_run):  # noqa: F811
    import jax.numpy as jnp

    from medjax.errors import ConfigError
    from medjax.finetune.features import _forward, check_layer, load_encoder_from
    from medjax.finetune.probe import probe_grid

    run, _ = mae_run
    cfg = probe_cfg(cube_data)
    enc = load_encoder_from(cfg, run)
    wins = np.random.default_rng(3).normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
    feats = enc.embed_pools(wins, ("mean", "max"), layers=(None, 1))
    assert set(feats) == {"mean", "max", "mean@1", "max@1"} and feats["mean@1"].shape == (2, 64)
    # the output features are the default ones, and block 1's are its tokens through the final LayerNorm
    np.testing.assert_allclose(feats["mean"], enc.embed(wins, "mean"), rtol=1e-6, atol=1e-6)
    model = _forward(enc.cfg, (8, 8, 8))[0].merge(enc.params)
    _, (h1,) = model(jnp.asarray(wins), deterministic=True, return_layers=(1,))
    manual = np.asarray(model.norm(h1))[:, model.num_prefix_tokens:]
    np.testing.assert_allclose(feats["mean@1"], manual.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["max@1"], manual.max(1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats["mean@1"], feats["mean"], atol=1e-3)
    # Mu has 2 blocks: 2 is the output, 0 and 3 are refused with the range
    assert check_layer(2, cfg) is None and check_layer(1, cfg) == 1
    for bad in (0, 3):
        with pytest.raises(ConfigError, match=r"blocks 1\.\.2"):
            check_layer(bad, cfg)
    grid = probe_grid(cfg, random_init=True, seeds=(0,), layers=(1, 2, None))
    assert [(g["layer"], g["depth"]) for g in grid] == [(1, 2), (2, 2)]  # 2 and None are the same features
    base = probe_grid(cfg, random_init=True, seeds=(0,))[0]
    assert base["layer"] == 2 and grid[1]["random_init"]["runs"] == base["random_init"]["runs"]
    assert grid[0]["random_init"]["runs"][0]["metrics"]["window"]["n"] == 32


def test_probe_cli_json_schema_and_checkpoint_encoder(cube_data, mae_run, capsys):  # noqa: F811
    from medjax.cli import main
    from medjax.finetune.features import load_encoder_from

    run, params = mae_run
    enc = load_encoder_from(probe_cfg(cube_data), run)
    np.testing.assert_array_equal(enc.params["blocks"][0]["mlp"]["fc1"]["kernel"],
                                  params["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"])
    assert enc.step == 3 and enc.loss == 0.5
    rc = main(["probe", "--checkpoint", str(run), "--config", str(cube_data / "cfg.json"), "--seeds", "0",
               "--kind", "knn", "--k", "3", "--json"]) if (cube_data / "cfg.json").write_text(json.dumps(to_dict(probe_cfg(cube_data)))) else 1
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= {"config", "kind", "pool", "variant", "train", "held_out", "pretrained", "random_init",
                        "verdict", "seconds"}
    assert out["kind"] == "knn" and out["pool"] == "mean"
    assert [r["step"] for r in out["pretrained"]["runs"]] == [3]
    assert set(out["pretrained"]["summary"]["window"]["auroc"]) == {"values", "mean", "std"}
    assert len(out["random_init"]["summary"]["window"]["auroc"]["values"]) == 1
    v = out["verdict"]
    assert v["status"] in ("beats", "does-not-beat", "unclear") and v["level"] == "window"
    assert "window AUROC pretrained" in v["text"]


def test_verdict_names_the_numbers_when_pretraining_does_not_help():
    from medjax.finetune.probe import verdict

    def arm(values, **run):
        m = sum(values) / len(values)
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return {"runs": [run], "summary": {"window": {"auroc": {"values": values, "mean": m, "std": sd}}}}

    v = verdict({"pretrained": arm([0.60], step=500, loss=0.9), "random_init": arm([0.62, 0.64, 0.60])})
    assert v["status"] == "does-not-beat" and "0.600 vs random init 0.620 ± 0.020 (3 seeds)" in v["text"]
    assert "step 500 (loss 0.900)" in v["text"]
    v = verdict({"pretrained": arm([0.80], step=1), "random_init": arm([0.62, 0.64, 0.60])})
    assert v["status"] == "beats" and v["margin_std"] == pytest.approx(9.0)
    assert verdict({"pretrained": arm([0.63], step=1), "random_init": arm([0.62, 0.64, 0.60])})["status"] == "unclear"
    assert "seed-to-seed spread is not measured" in v["text"] and v["std_used"] == "std of the 3 random-init seeds"
    # several pretrained encoders: the margin is in the std pooled over both arms, so the MAE's own spread counts.
    # (0.76, 0.64) vs (0.62, 0.64, 0.60): +0.08 is 4.0 random-init std but sqrt((0.0072 + 0.0004) / 2) = 0.0616
    # pooled, 1.3 std
    v = verdict({"pretrained": arm([0.76, 0.64], step=1), "random_init": arm([0.62, 0.64, 0.60])})
    assert v["status"] == "unclear" and v["margin_std"] == pytest.approx(0.08 / np.sqrt(0.0038))
    assert v["std_used"] == "pooled std (2 pretrained, 3 random-init seeds)" and "+1.3 pooled std" in v["text"]


def test_features_command_writes_embeddings_and_index(cube_data, mae_run, tmp_path):  # noqa: F811
    from medjax.cli import main

    run, _ = mae_run
    vols = tmp_path / "in"
    vols.mkdir()
    for i in (0, 1):
        (vols / f"v{i:02d}.nii.gz").write_bytes((cube_data / f"v{i:02d}.nii.gz").read_bytes())
    out = tmp_path / "out"
    assert main(["features", str(vols), str(out), "--checkpoint", str(run), "--per-window",
                 "--overlap", "0"]) == 0
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert [r["id"] for r in rows] == ["v00", "v01"]
    assert rows[0]["file"] == "v00.nii.gz" and rows[0]["shape"] == "16x16x16" and rows[0]["windows"] == "8"
    emb = np.load(out / "v00.npy")
    win = np.load(out / rows[0]["window_embeddings"])
    pos = np.load(out / rows[0]["window_positions"])
    assert emb.shape == (64,) and emb.dtype == np.float32 and win.shape == (8, 64) and pos.shape == (8, 4)
    np.testing.assert_allclose(emb, win.mean(0), rtol=1e-6)
    assert pos[:, 1:].max() == 8 and (pos[:, 0] == 0).all()
    info = json.loads((out / "features.json").read_text())
    assert info["feature_dim"] == 64 and info["step"] == 3 and info["volumes"] == 2
    # the embedding of the cube volume differs from the empty one's; the same input gives the same features
    assert not np.allclose(emb, np.load(out / "v01.npy"))
    assert main(["features", str(vols), str(tmp_path / "again"), "--checkpoint", str(run), "--overlap", "0"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "v00.npy"), emb)
    assert info["layer"] == 2  # Mu: the output is block 2
    # --layer 1: block 1's features, recorded as such, and not the output's
    assert main(["features", str(vols), str(tmp_path / "b1"), "--checkpoint", str(run), "--overlap", "0",
                 "--layer", "1"]) == 0
    assert json.loads((tmp_path / "b1" / "features.json").read_text())["layer"] == 1
    assert np.load(tmp_path / "b1" / "v00.npy").shape == (64,)
    assert not np.allclose(np.load(tmp_path / "b1" / "v00.npy"), emb, atol=1e-3)
