"""Training throughput benchmark on synthetic input (no data loading): samples/s, compile time, TFLOP/s, MFU.

Model FLOPs per sample (forward + backward = 3 x forward, matmuls as 2 FLOPs per multiply-add)::

    flops = 6 * (P_enc * N_enc + P_dec * N_dec)                      # parameter matmuls
          + 12 * (depth_enc * N_enc**2 * D_enc + depth_dec * N_dec**2 * D_dec)   # attention QK^T and AV

where ``P_enc`` / ``P_dec`` are the encoder / decoder parameter counts, ``N_enc = round((1 - mask_ratio) * L)
+ prefix`` the visible tokens the encoder sees, ``N_dec = L + prefix`` all tokens in the decoder (``L`` patches,
``prefix`` = 1 with a CLS token), ``D`` the widths and ``depth`` the numbers of blocks. MFU = achieved model
TFLOP/s / (peak TFLOP/s per device x devices).
"""

from __future__ import annotations

import time

import numpy as np

# dense bf16 peak TFLOP/s per device, by a substring of ``device.device_kind``
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v6": 918.0, "TPU v6e": 918.0}


def peak_tflops(device) -> float | None:
    """Dense bf16 peak of ``device`` from :data:`PEAK_TFLOPS` (None when unknown, e.g. CPUs)."""
    kind = str(getattr(device, "device_kind", ""))
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name.lower() in kind.lower():
            return PEAK_TFLOPS[name]
    return None


def mae_flops_per_sample(cfg, params) -> float:
    """Model FLOPs per sample per training step (formula in the module docstring)."""
    import math

    from medjax.models.masking import num_visible
    from medjax.config.variants import decode_variant
    from medjax.training.digest import count_params
    from medjax.training.state import broadcast_size

    size = decode_variant(cfg.model.variant, cfg.data.spatial_dims)
    crop = broadcast_size(cfg.data.crop_size, cfg.data.spatial_dims)
    length = math.prod(c // p for c, p in zip(crop, size.patch))
    prefix = 1 if cfg.model.cls_token else 0
    n_enc = num_visible(length, cfg.model.mask_ratio) + prefix
    n_dec = length + prefix
    p_enc = count_params(params["encoder"])
    p_dec = count_params({k: v for k, v in params.items() if k != "encoder"})
    dense = 6.0 * (p_enc * n_enc + p_dec * n_dec)
    attn = 12.0 * (size.depth * n_enc**2 * size.width + cfg.model.decoder_depth * n_dec**2 * cfg.model.decoder_width)
    return dense + attn


def bench_train(cfg, *, steps: int = 10, batch: int | None = None, peak: float | None = None) -> dict:
    """Time ``steps`` train steps of ``cfg``'s model on random input of the preset's crop size.

    Returns one flat dict: ``samples_per_s``, ``step_time_s``, ``compile_s`` (lower + compile + first step),
    ``model_tflops_per_s``, ``mfu`` (None without a known or given peak), ``peak_memory_bytes`` (device 0's
    ``memory_stats()["peak_bytes_in_use"]`` or None), ``state_bytes_per_device`` (device 0's shards of the
    train state), ``compiled_bytes_per_device`` (XLA memory analysis: arguments + outputs + temporaries -
    aliased), plus the setup (config, variant, batch, devices, device kind, params, FLOPs per sample).
    """
    import dataclasses

    import jax

    from medjax.parallel.sharding import device_bytes, per_device_bytes
    from medjax.training import sharding as _sh
    from medjax.training.digest import count_params
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.state import input_shape, train_state_spec
    from medjax.training.steps import make_train_step

    if steps < 1:
        raise ValueError(f"steps={steps}: must be >= 1")
    if batch is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=int(batch)))
    b = cfg.train.batch_size
    mesh = _sh.default_mesh(cfg)
    schedule = make_schedule(dataclasses.replace(cfg.train, steps=max(cfg.train.steps, steps + 1)))
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, mesh, tx=tx)
    state = spec.init()
    bsh = _sh.batch_sharding(mesh)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((b, *input_shape(cfg)), dtype=np.float32)
    batch_arr = {"image": jax.device_put(images, bsh)}
    t0 = time.perf_counter()
    with _sh.activate(mesh, spec.rules):
        step = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings, batch_sharding=bsh,
                               grad_accum=cfg.train.grad_accum)
        compiled = step.lower(state, batch_arr).compile()
    state, m = compiled(state, batch_arr)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch_arr)
    jax.block_until_ready((state, m))
    elapsed = time.perf_counter() - t1
    step_time = elapsed / steps
    sps = b / step_time
    flops = mae_flops_per_sample(cfg, state.params)
    tflops = flops * sps / 1e12
    dev = jax.devices()[0]
    peak = peak if peak is not None else peak_tflops(dev)
    mfu = tflops / (peak * jax.device_count()) if peak else None
    try:
        stats = dev.memory_stats()
        peak_mem = int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
    except Exception:  # backends without memory statistics
        peak_mem = None
    try:
        compiled_bytes = per_device_bytes(compiled)
    except Exception:
        compiled_bytes = None
    state_dev = device_bytes(state)
    return {
        "benchmark": "train",
        "config": cfg.name,
        "variant": cfg.model.variant,
        "spatial_dims": cfg.data.spatial_dims,
        "input": list(input_shape(cfg)),
        "batch": b,
        "steps": steps,
        "devices": jax.device_count(),
        "device_kind": str(dev.device_kind),
        "dtype": cfg.model.dtype,
        "params": int(count_params(state.params)),
        "flops_per_sample": flops,
        "samples_per_s": sps,
        "step_time_s": step_time,
        "compile_s": compile_s,
        "model_tflops_per_s": tflops,
        "peak_tflops_per_device": peak,
        "mfu": mfu,
        "peak_memory_bytes": peak_mem,
        "state_bytes_per_device": int(max(state_dev.values())) if state_dev else None,
        "compiled_bytes_per_device": compiled_bytes,
        "final_loss": float(m["loss"]),
    }
