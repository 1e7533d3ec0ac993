"""PEFT checkpoints: only the trainable parameters plus a base reference; resume checks the base's digest;
`checkpoint info` reports both; `medjax merge` folds LoRA into a plain checkpoint with the same predictions;
`medjax predict` reads both."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from medjax.cli import main as cli_main
from medjax.cli.checkpoint_info import info
from medjax.config.overrides import to_dict
from medjax.data.testing import write_tiny_dataset
from medjax.errors import CheckpointError, ConfigError
from medjax.finetune.loop import finetune
from medjax.finetune.predict_io import load_finetuned
from medjax.models import MAE
from medjax.peft import is_trainable
from medjax.peft.merge import merge_lora
from medjax.training.checkpoint import Checkpointer
from medjax.training.digest import count_params
from medjax.training.state import split_model
from tests.peft.conftest import tiny_method


def _mae(path, cfg, seed):
    """A pretraining-style checkpoint whose encoder matches the tiny task models."""
    mae = MAE(dataclasses.replace(cfg.model, decoder_width=16, decoder_depth=1, decoder_heads=2), spatial_dims=3,
              input_size=(8, 8, 8), rngs=nnx.Rngs(seed))
    _, params, _ = split_model(mae)
    saved = to_dict(cfg) | {"task": "mae"}
    with Checkpointer(path, keep=1) as ck:
        ck.save(5, {"params": params}, meta={"config": saved}, force=True)
        ck.wait()
    return params


def _cfg(data, method, mae, steps=2, **ft):
    cfg = tiny_method("segmentation", method, init_from=str(mae), **ft)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0)),
                               train=dataclasses.replace(cfg.train, steps=steps, log_every=1),
                               checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=1, keep=3))


@pytest.mark.slow
def test_lora_checkpoint_resume_base_check_merge_and_predict(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True)
    base = _cfg(data, "lora", tmp_path / "mae", lora_targets=("q", "v", "out", "mlp"), lora_alpha=4.0, lora_rank=2)
    mae_params = _mae(tmp_path / "mae", base, seed=7)
    _mae(tmp_path / "other", base, seed=8)
    work = tmp_path / "lora"
    finetune(base, work, progress=False, evaluate=False)

    # the checkpoint holds the trainable parameters only, and the base's reference
    state, _, meta = Checkpointer(work, read_only=True).restore_unsharded()
    saved = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    assert saved and all(is_trainable("lora", p) for p, _ in saved)
    assert "encoder" in state["params"] and "q_kernel" not in json.dumps(jax.tree.map(lambda x: 0, state["params"]))
    ref = meta["peft"]
    assert ref["method"] == "lora" and ref["base"] == str(tmp_path / "mae") and len(ref["base_digest"]) == 64
    assert ref["trainable_params"] == count_params(state["params"]) < ref["total_params"]
    summary = info(work)
    assert summary["trainable_params"] == ref["trainable_params"] and summary["base_digest"] == ref["base_digest"]

    # resuming onto another base is refused, naming both digests
    other = dataclasses.replace(base, train=dataclasses.replace(base.train, steps=3),
                                finetune=dataclasses.replace(base.finetune, init_from=str(tmp_path / "other")))
    with pytest.raises(CheckpointError) as e:
        finetune(other, work, progress=False, evaluate=False)
    assert ref["base_digest"] in str(e.value) and "params digest" in str(e.value)
    again = finetune(dataclasses.replace(other, finetune=base.finetune), work, progress=False, evaluate=False)
    assert again["resumed_from"] == 2 and again["step"] == 3

    # prediction path: base encoder (from the MAE) + trained LoRA/decoder
    cfg, model_def, params, model_state, step = load_finetuned(work)
    assert step == 3
    np.testing.assert_array_equal(params["encoder"]["blocks"][0]["attn"]["q_kernel"],
                                  mae_params["encoder"]["blocks"][0]["attn"]["q_kernel"])
    assert np.abs(np.asarray(params["encoder"]["blocks"][0]["attn"]["lora_q_b"])).max() > 0

    # merge: a plain checkpoint predicting the same outputs without adapters
    assert cli_main(["merge", str(work), str(tmp_path / "merged"), "--json"]) == 0
    cfg_m, def_m, params_m, ms_m, _ = load_finetuned(tmp_path / "merged")
    assert cfg_m.finetune.method == "full" and not cfg_m.finetune.init_from
    assert not any("lora_" in jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params_m)[0])
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
    y_peft = model_def.merge(params, model_state)(x)
    y_plain = def_m.merge(params_m, ms_m)(x)
    np.testing.assert_allclose(np.asarray(y_plain), np.asarray(y_peft), atol=1e-5, rtol=0)

    # medjax predict reads both checkpoints and writes the same label maps
    images = tmp_path / "in"
    write_tiny_dataset(images, n=1, layout="folder", with_labels=False)
    assert cli_main(["predict", "--checkpoint", str(work), str(images), str(tmp_path / "out_peft")]) == 0
    plain_out = str(tmp_path / "out_plain")
    assert cli_main(["predict", "--checkpoint", str(tmp_path / "merged"), str(images), plain_out]) == 0
    import nibabel as nib

    a = np.asarray(nib.load(tmp_path / "out_peft" / "case_000.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "out_plain" / "case_000.nii.gz").dataobj)
    np.testing.assert_array_equal(a, b)


def test_merge_folds_every_target_exactly():
    cfg = tiny_method("segmentation", "lora", lora_targets=("q", "k", "v", "out", "mlp"), lora_alpha=3.0, lora_rank=2)
    from medjax.finetune.tasks import build_task_model

    model = build_task_model(cfg)
    model_def, params, model_state = split_model(model)
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(  # non-zero B so the updates matter
        lambda p, v: rng.normal(size=v.shape).astype(np.float32) * 0.1 if "lora_" in jax.tree_util.keystr(p)
        else np.asarray(v), params)
    merged = merge_lora(params, cfg.finetune)
    plain_cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, method="full"))
    plain_def, plain_params, _ = split_model(build_task_model(plain_cfg))
    assert jax.tree.structure(merged) == jax.tree.structure(plain_params)
    x = rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
    y0 = model_def.merge(params, model_state)(x)
    y1 = plain_def.merge(merged, model_state)(x)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="adapters change the network"):
        merge_lora(params, dataclasses.replace(cfg.finetune, method="adapter"))


def test_mode_linear_still_means_linear_and_conflicts_name_the_keys():
    from medjax.peft import resolve_method

    assert resolve_method(tiny_method("classification", "full", mode="linear").finetune) == "linear"
    with pytest.raises(ConfigError, match="finetune.mode=linear and finetune.method=lora"):
        resolve_method(tiny_method("classification", "lora", mode="linear").finetune)
    with pytest.raises(ConfigError, match="finetune.lora_targets"):
        from medjax.peft import check_method

        check_method(tiny_method("classification", "lora", lora_targets=("qkv",)).finetune)


@pytest.mark.slow
def test_finetune_compare_methods_reports_costs(tmp_path, capsys):
    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True)
    cfg = _cfg(data, "full", tmp_path / "mae", steps=2)
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, val_records=1))
    _mae(tmp_path / "mae", cfg, seed=7)
    from medjax.peft.compare import compare_methods, format_methods

    result = compare_methods(cfg, tmp_path / "cmp", init_from=str(tmp_path / "mae"), methods=["full", "lora"])
    full, lora = result["methods"]["full"], result["methods"]["lora"]
    assert full["trainable_params"] == full["total_params"] and full["trainable_percent"] == 100.0
    assert 0 < lora["trainable_params"] < lora["total_params"] and len(lora["per_seed"]) == 1
    assert lora["optimizer_bytes"] == 2 * 4 * lora["trainable_params"] < full["optimizer_bytes"]
    assert lora["checkpoint_bytes"] < full["checkpoint_bytes"]
    # the compiled step's memory (same model, same batch): Adam moments and gradients for far fewer parameters
    assert 0 < lora["step_memory_bytes"] < full["step_memory_bytes"]
    assert full["step_memory"]["total"] == full["step_memory_bytes"] and full["step_memory"]["argument"] > 0
    assert "| lora |" in format_methods(result)
    for name in ("compare_methods.json", "compare_methods.md", "compare_methods.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "cmp" / "compare_methods.json").read_text())["methods"]["lora"]["per_seed"] \
        == lora["per_seed"]


def test_merged_config_is_self_contained_and_keeps_a_linear_probe():
    from medjax.peft import resolve_method
    from medjax.peft.merge import merged_config

    lora = merged_config(tiny_method("segmentation", "lora", init_from="/somewhere/mae"))
    assert resolve_method(lora.finetune) == "full" and lora.finetune.init_from == ""
    probe = merged_config(tiny_method("classification", "full", mode="linear", init_from="/somewhere/mae"))
    assert resolve_method(probe.finetune) == "linear" and probe.finetune.init_from == ""
