"""Parameters and activations are sharded by one translator: a 3-head model on mesh.tensor=2 (8 CPU devices)."""

from __future__ import annotations

import pytest

from medjax.parallel.testing import run_with_devices

pytestmark = pytest.mark.slow  # one 8-device subprocess lowering a small MAE (~15 s on 2 cores)


def test_three_heads_on_two_tensor_shards_agree():
    out = run_with_devices(
        """
        import re
        import jax, jax.numpy as jnp
        from medjax.config.schema import Config, DataConfig, MeshConfig, ModelConfig
        from medjax.parallel import use_mesh
        from medjax.parallel.sharding import path_str
        from medjax.training.state import train_state_spec

        cfg = Config(model=ModelConfig(variant="Mu/8:heads=3,width=48", in_channels=1, decoder_width=24,
                                       decoder_depth=1, decoder_heads=3),
                     data=DataConfig(crop_size=(16,), spatial_dims=3), mesh=MeshConfig(data=-1, tensor=2))
        spec = train_state_spec(cfg)
        params = {path_str(p): [None if e is None else (list(e) if isinstance(e, tuple) else e) for e in s.spec]
                  for p, s in jax.tree_util.tree_flatten_with_path(spec.shardings.params)[0]}

        def forward(params, x):
            return spec.model_def.merge(params)(x, mask_key=jax.random.key(0))[0]

        with use_mesh(spec.mesh, spec.rules):
            text = jax.jit(forward).lower(spec.abstract_with_shardings().params,
                                          jnp.zeros((4, 16, 16, 16, 1))).as_text()
        constraints = []
        for line in text.splitlines():
            m = re.search(r"sdy.sharding_constraint .*<@mesh, \\[(.*)\\]> : tensor<([0-9x]+)x\\w+>", line)
            if m:
                dims = re.findall(r"\\{([^}]*)\\}", m.group(1))
                constraints.append([[int(n), d] for n, d in zip(m.group(2).split("x"), dims)])
        emit({"params": params, "constraints": constraints, "mesh": dict(spec.mesh.shape)})
        """,
        devices=8,
    )
    assert out["mesh"] == {"data": 4, "fsdp": 1, "tensor": 2}
    p = out["params"]
    # 3 heads do not split over tensor=2: the head dim of every attention parameter stays replicated
    assert p["encoder/blocks/0/attn/q_kernel"] == ["fsdp", None, None]
    assert p["encoder/blocks/0/attn/out_kernel"] == [None, None, "fsdp"]
    assert p["encoder/blocks/0/attn/q_bias"] == [None, None]
    # the MLP hidden width (96) does split: parameters and activations both use tensor there
    assert p["encoder/blocks/0/mlp/fc1/kernel"] == ["fsdp", "tensor"]
    tensor_dims = [(n, d) for c in out["constraints"] for n, d in c if '"tensor"' in d]
    assert out["constraints"], "the forward pass emitted no sharding constraints"
    assert tensor_dims, "no activation was constrained to the tensor axis"
    # ... and no activation is constrained to split its 3-head dim (or any indivisible dim) over tensor=2
    assert all(n % 2 == 0 for n, _ in tensor_dims), tensor_dims
    head_constraints = [c for c in out["constraints"] if len(c) == 4 and c[2][0] == 3]
    assert head_constraints and all('"tensor"' not in c[2][1] for c in head_constraints), head_constraints
