"""AdapterSwitcher and its AdapterBank, headless: two task adapters trained over one tiny MAE base; the base is read
once and shared (same arrays, bits unchanged), each adapter's model equals what `medjax predict` loads, switching
changes the prediction and the image, and a different base is refused naming both digests."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from medjax.data.testing import write_tiny_dataset
from medjax.errors import CheckpointError
from medjax.finetune.loop import finetune
from tests.peft.test_checkpoint_merge import _cfg, _mae


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    data = root / "data"
    write_tiny_dataset(data, n=2, layout="folder", with_labels=True)
    tissue = _cfg(data, "lora", root / "mae", steps=1, lora_rank=2)
    mae_params = _mae(root / "mae", tissue, seed=7)
    _mae(root / "other", tissue, seed=8)
    # a second task over the same base: two classes, another method, another head
    second = _cfg(data, "adapter", root / "mae", steps=1, adapter_dim=4)
    second = dataclasses.replace(second, finetune=dataclasses.replace(second.finetune, num_classes=2))
    finetune(tissue, root / "tissue", progress=False, evaluate=False)
    finetune(second, root / "second", progress=False, evaluate=False)
    image = data / "case_000.nii.gz"
    return {"root": root, "mae_params": mae_params, "image": image}


def test_switching_adapters_on_one_base(runs):
    from medjax.finetune.predict_io import load_finetuned
    from medjax.interactive import AdapterSwitcher

    root = runs["root"]
    view = AdapterSwitcher(root / "mae", {"tissue": root / "tissue", "second": root / "second"}, runs["image"])
    bank = view.bank
    assert view.names == ("tissue", "second") and view.adapter == "tissue"
    assert bank.base_loads == 1
    # the base encoder is the MAE's, bit for bit
    mae_enc = runs["mae_params"]["encoder"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(bank.encoder):
        want = mae_enc
        for k in path:
            want = want[k.key]
        assert np.asarray(leaf).tobytes() == np.asarray(want).tobytes(), jax.tree_util.keystr(path)
    before = [np.asarray(x).copy() for x in jax.tree.leaves(bank.encoder)]

    png_tissue = view.to_png()
    first = view.predictions["tissue"]
    assert first["labels"].shape == first["probs"].shape[:3] and first["probs"].shape[-1] == 3
    view.select("second")
    assert view.adapter == "second" and view.widget is not None and view._task.value == "second"
    second = view.predictions["second"]
    assert second["probs"].shape[:3] == first["probs"].shape[:3] and second["probs"].shape[-1] == 2
    assert view.to_png() != png_tissue
    assert "adapter:" not in view.describe() and view.describe().startswith("second: adapter,")
    view._task.value = "tissue"  # the toggle switches back; the cached prediction is shown again
    assert view.adapter == "tissue" and view.predictions["tissue"] is first

    # both models share the base arrays (the same objects)
    shared = []
    for name in view.names:
        _, _, params, _ = bank.model(name)
        ids = {id(x) for x in jax.tree.leaves(params["encoder"])}
        shared.append(ids & {id(x) for x in jax.tree.leaves(bank.encoder)})
    assert shared[0] and shared[0] == {id(x) for x in jax.tree.leaves(bank.encoder)} == shared[1]
    # and a model equals what `medjax predict` loads from the adapter's checkpoint, bit for bit
    _, _, ref, _, _ = load_finetuned(root / "second")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert bank.base_loads == 1
    for a, b in zip(before, jax.tree.leaves(bank.encoder)):
        assert a.tobytes() == np.asarray(b).tobytes()  # predicting changed no base parameter


def test_a_different_base_is_refused_naming_both_digests(runs):
    from medjax.peft.bank import AdapterBank

    root = runs["root"]
    bank = AdapterBank(root / "other")
    with pytest.raises(CheckpointError, match="params digest .* but the base loaded now .* has params digest"):
        bank.add("tissue", root / "tissue")
    with pytest.raises(KeyError, match="no adapter 'tissue'"):
        bank.model("tissue")
