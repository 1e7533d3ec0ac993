"""Federated fine-tuning (``federated.task=finetune``) with sites in this process: one site with all the data is
``medjax finetune`` step for step; with LoRA only the trainable parameters travel, the frozen base never
changes, the server's checkpoint is a PEFT checkpoint that ``medjax predict`` loads, and every site scores the
global model on its own held-out records (aggregate numbers only). Tiny Mu/4 models on 8-voxel crops."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from medjax.data.testing import write_tiny_dataset
from tests.finetune.conftest import tiny


def _cfg(data, method="full", rounds=2, val_records=0, **ft):
    from medjax.config.federated_schema import FederatedConfig

    cfg = tiny("segmentation", method=method, **ft)
    return dataclasses.replace(
        cfg, finetune=dataclasses.replace(cfg.finetune, val_records=val_records), data=dataclasses.replace(cfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0)),
        train=dataclasses.replace(cfg.train, steps=2 * rounds, log_every=1),
        checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=100, keep=2),
        federated=FederatedConfig(task="finetune", rounds=rounds, local_steps=2))


def _losses(path):
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def test_one_site_fine_tuning_equals_centralised_fine_tuning(tmp_path):
    from medjax.federated.inprocess import InProcessSites
    from medjax.federated.server import FederatedServer
    from medjax.finetune.loop import finetune
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.digest import params_digest

    data = write_tiny_dataset(tmp_path / "data", n=3, layout="folder", with_labels=True)
    cfg = _cfg(data)
    central = finetune(cfg, tmp_path / "central", progress=False, evaluate=False)
    with FederatedServer(cfg, tmp_path / "server", log=lambda s: None) as server:
        summary = server.run(InProcessSites({"only": data}, tmp_path / "states"))
    assert summary["rounds"] == 2 and central["step"] == 4
    want = _losses(tmp_path / "central" / "metrics.jsonl")
    got = _losses(tmp_path / "states" / "only" / "metrics.jsonl")
    assert len(want) == 4 and got == want  # step for step, across the round boundary (a resumed site run)
    state, _, _ = Checkpointer(tmp_path / "central", read_only=True).restore_unsharded()
    assert summary["params_digest"] == params_digest(state["params"])
    rounds = [json.loads(line) for line in (tmp_path / "server" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds if r["site"] == "global"] == [1, 2]

    # FedProx: a round's first step starts at the global model (no proximal term yet, the same loss as above);
    # its second step pays mu/2 ||w - w_global||^2 and moves less
    prox = dataclasses.replace(cfg, federated=dataclasses.replace(cfg.federated, strategy="fedprox", proximal_mu=100.0))
    with FederatedServer(prox, tmp_path / "prox_server", log=lambda s: None) as server:
        p = server.run(InProcessSites({"only": data}, tmp_path / "prox_states"))
    got = _losses(tmp_path / "prox_states" / "only" / "metrics.jsonl")
    assert len(got) == 4 and got[0] == want[0] and got[1] != want[1]
    assert p["params_digest"] != summary["params_digest"]

    def norms(server_dir):
        rows = [json.loads(line) for line in (server_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["update_norm"] for r in rows if r["site"] == "only"]

    prox_norms, avg_norms = norms(tmp_path / "prox_server"), norms(tmp_path / "server")
    assert len(prox_norms) == len(avg_norms) == 2 and all(a < b for a, b in zip(prox_norms, avg_norms))


@pytest.mark.slow
def test_lora_sites_send_only_the_trainable_parameters_and_score_the_global_model(tmp_path):
    import jax

    from medjax.federated.arrays import flatten, nbytes
    from medjax.federated.inprocess import InProcessSites
    from medjax.federated.server import FederatedServer
    from medjax.finetune.predict_io import load_finetuned
    from medjax.peft.methods import is_trainable
    from medjax.training.checkpoint import Checkpointer
    from tests.peft.test_checkpoint_merge import _mae

    sites = {"site-a": write_tiny_dataset(tmp_path / "a", n=3, layout="folder", with_labels=True),
             "site-b": write_tiny_dataset(tmp_path / "b", n=4, layout="folder", with_labels=True)}
    # one round: the round boundary is the test above's; here what travels, the checkpoint and the evaluation
    cfg = _cfg(sites["site-a"], "lora", rounds=1, val_records=1, init_from=str(tmp_path / "mae"), lora_rank=2)
    base = flatten(_mae(tmp_path / "mae", cfg, seed=7))
    with FederatedServer(cfg, tmp_path / "server", log=lambda s: None) as server:
        sent = {k: v.copy() for k, v in server.shared().items()}
        summary = server.run(InProcessSites(sites, tmp_path / "states"))
        final = flatten(server.params())

    # what travels: the LoRA factors and the task head, nothing of the frozen encoder
    assert any("lora_" in k for k in sent) and any(not k.startswith("encoder/") for k in sent)
    assert all("lora_" in k for k in sent if k.startswith("encoder/"))
    assert not set(sent) & {k for k in base if "lora_" not in k}
    records = [json.loads(line) for line in (tmp_path / "server" / "metrics.jsonl").read_text().splitlines()]
    site_records = [r for r in records if r["site"] != "global"]
    assert len(site_records) == 2 and all(r["bytes_sent"] == nbytes(sent) for r in site_records)
    assert [r["num_examples"] for r in site_records if r["round"] == 1] == [2, 3]  # one record held out per site

    # the server's checkpoint stores the trainable parameters over the referenced base; predict loads it
    state, _, meta = Checkpointer(tmp_path / "server", read_only=True).restore_unsharded()
    saved = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    assert saved and all(is_trainable("lora", p) for p, _ in saved)
    assert meta["peft"]["method"] == "lora" and meta["task"] == "segmentation"
    assert meta["peft"]["trainable_params"] == sum(v.size for v in sent.values())
    _, _, params, _, step = load_finetuned(tmp_path / "server")
    assert step == 1
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(v, final[k])

    # each site scored the global model on its held-out record; only aggregate numbers came back
    ev = json.loads((tmp_path / "server" / "eval.json").read_text())
    assert ev == summary["eval"] and ev["round"] == 1 and ev["num_val"] == 2
    assert set(ev["sites"]) == {"site-a", "site-b"}
    for m in ev["sites"].values():
        assert m["num_val"] == 1 and 0.0 <= m["mean_dice"] <= 1.0
        assert all(isinstance(v, (int, float)) for v in m.values())
    assert ev["mean"]["mean_dice"] == pytest.approx(np.mean([m["mean_dice"] for m in ev["sites"].values()]))


def test_fedprox_with_a_teacher_and_mae_tasks_are_refused_for_fine_tuning(tmp_path):
    from medjax.errors import ConfigError
    from medjax.federated.local import site_config

    cfg = _cfg(tmp_path)
    prox = dataclasses.replace(cfg, federated=dataclasses.replace(cfg.federated, strategy="fedprox"))
    site_config(prox, "d")  # FedProx fine-tunes
    with pytest.raises(ConfigError, match="fedprox"):
        site_config(dataclasses.replace(prox, finetune=dataclasses.replace(cfg.finetune, teacher="t")), "d")
    with pytest.raises(ConfigError, match="fine-tuning task"):
        site_config(dataclasses.replace(cfg, task="mae"), "d")
