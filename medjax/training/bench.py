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
    from medjax.config.dims import broadcast_size

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


class _MedjaxRunner:
    """The jitted medjax train step on fixed random input, compiled once (``lower_s``, ``compile_s``)."""

    def __init__(self, cfg, *, batch: int):
        import jax

        from medjax.parallel.mesh import make_mesh
        from medjax.parallel.rules import use_mesh
        from medjax.parallel.sharding import batch_sharding
        from medjax.training.optim import make_optimizer, make_schedule
        from medjax.training.state import input_shape, train_state_spec
        from medjax.training.steps import make_train_step

        self.cfg = cfg
        mesh = make_mesh(cfg.mesh)
        self.schedule = make_schedule(cfg.train)
        tx = make_optimizer(cfg.train, schedule=self.schedule)
        spec = train_state_spec(cfg, mesh, tx=tx)
        t0 = time.perf_counter()
        self.state = spec.init()
        self.init_s = time.perf_counter() - t0
        bsh = batch_sharding(mesh)
        rng = np.random.default_rng(0)
        images = rng.standard_normal((batch, *input_shape(cfg)), dtype=np.float32)
        self.batch = {"image": jax.device_put(images, bsh)}
        t0 = time.perf_counter()
        with use_mesh(mesh, spec.rules):
            step = make_train_step(spec.model_def, tx, self.schedule, state_shardings=spec.shardings,
                                   batch_sharding=bsh, grad_accum=cfg.train.grad_accum)
            lowered = step.lower(self.state, self.batch)
            self.lower_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            self.compiled = lowered.compile()
            self.compile_s = time.perf_counter() - t1

    def first_step(self) -> tuple[float, float]:
        import jax

        t0 = time.perf_counter()
        self.state, m = self.compiled(self.state, self.batch)
        loss = float(jax.device_get(m["loss"]))
        return time.perf_counter() - t0, loss

    def run(self, steps: int) -> tuple[float, float]:
        import jax

        t0 = time.perf_counter()
        m = None
        for _ in range(steps):
            self.state, m = self.compiled(self.state, self.batch)
        jax.block_until_ready((self.state, m))
        return time.perf_counter() - t0, float(jax.device_get(m["loss"]))


def bench_train(cfg, *, steps: int = 10, batch: int | None = None, peak: float | None = None,
                peer: str | None = None, repeat: int = 1, peer_compile: bool = False,
                threads: int | None = None, peer_dtype: str | None = None) -> dict:
    """Time ``steps`` train steps of ``cfg``'s model on random input of the preset's crop size.

    Returns one flat dict: ``samples_per_s``, ``step_time_s``, ``time_to_first_step_s`` (from building the
    train state to the end of the first step: init + lower + compile + step), ``compile_s`` (lower + compile +
    first step), ``lower_s``/``xla_compile_s``, ``model_tflops_per_s``, ``mfu`` (None without a known or given
    peak), ``peak_memory_bytes`` (device 0's ``memory_stats()["peak_bytes_in_use"]`` or None),
    ``state_bytes_per_device`` (device 0's shards of the train state), ``compiled_bytes_per_device`` (XLA memory
    analysis: arguments + outputs + temporaries - aliased), plus the setup (config, variant, batch, devices,
    device kind, params, FLOPs per sample, scan/remat settings).

    ``peer`` ("hf" or "monai", see :mod:`medjax.training.bench_peers`): the same model and step in PyTorch, timed
    in this process; the keys ``peer_*`` (``peer_samples_per_s``, ``peer_step_time_s``,
    ``peer_time_to_first_step_s``, ``peer_final_loss``, ``peer_params``, ``peer_library``) and ``ratio`` (medjax
    samples/s / peer samples/s) are added, or ``peer_error`` when the peer's library does not import.
    ``repeat`` rounds alternate medjax's and the peer's ``steps`` timed steps so a busy machine slows both
    alike; ``samples_per_s`` is the best round's, ``rounds`` lists every round's samples/s (and ratio).
    ``threads``: the CPU threads medjax was limited to (set before JAX starts, see ``medjax bench train
    --threads``); the peer gets as many torch threads. ``load_avg`` records the machine's 1-minute load average
    before and after, as a busy machine slows the two differently.
    """
    import os

    import dataclasses

    import jax

    from medjax.parallel.sharding import device_bytes, per_device_bytes
    from medjax.training.digest import count_params
    from medjax.training.state import input_shape

    if steps < 1:
        raise ValueError(f"steps={steps}: must be >= 1")
    if repeat < 1:
        raise ValueError(f"repeat={repeat}: must be >= 1")
    if batch is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=int(batch)))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=max(cfg.train.steps, steps + 1)))
    b = cfg.train.batch_size
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    runner = _MedjaxRunner(cfg, batch=b)
    first_s, first_loss = runner.first_step()
    ttfs = time.perf_counter() - t_start
    compiled = runner.compiled
    peer_obj = peer_error = None
    peer_first = None
    if peer:
        from medjax.training.bench_peers import PeerUnavailable, TorchPeer

        try:
            t0 = time.perf_counter()
            peer_cfg = cfg if peer_dtype is None else dataclasses.replace(
                cfg, model=dataclasses.replace(cfg.model, dtype=peer_dtype))
            peer_obj = TorchPeer(peer, peer_cfg, batch=b, compile=peer_compile, threads=threads)
            setup = time.perf_counter() - t0
            first, peer_first_loss = peer_obj.first_step()
            peer_first = (setup - peer_obj.import_s + first, peer_first_loss)
        except PeerUnavailable as e:
            peer_error = str(e)
    rounds = []
    loss = first_loss
    for _ in range(repeat):
        seconds, loss = runner.run(steps)
        r = {"samples_per_s": b * steps / seconds}
        if peer_obj is not None:
            p_seconds, p_loss = peer_obj.run(steps)
            r["peer_samples_per_s"] = b * steps / p_seconds
            r["ratio"] = r["samples_per_s"] / r["peer_samples_per_s"]
            r["peer_final_loss"] = p_loss
        rounds.append(r)
    sps = max(r["samples_per_s"] for r in rounds)
    step_time = b / sps
    flops = mae_flops_per_sample(cfg, runner.state.params)
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
    state_dev = device_bytes(runner.state)
    # cuDNN fused attention calls in the compiled step (GPU only; the CPU program has none by construction)
    fused_attention = compiled.as_text().count("__cudnn$fmha") if dev.platform == "gpu" else None
    result = {
        "benchmark": "train",
        "config": cfg.name,
        "variant": cfg.model.variant,
        "spatial_dims": cfg.data.spatial_dims,
        "input": list(input_shape(cfg)),
        "batch": b,
        "steps": steps,
        "repeat": repeat,
        "devices": jax.device_count(),
        "device_kind": str(dev.device_kind),
        "dtype": cfg.model.dtype,
        "attention": cfg.model.attention,
        "cpu_threads": threads,
        "cpu_cores": len(os.sched_getaffinity(0)),  # the cores this process may run on (pinned by --threads)
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        **_model_options(cfg),
        "params": int(count_params(runner.state.params)),
        "flops_per_sample": flops,
        "samples_per_s": sps,
        "step_time_s": step_time,
        "time_to_first_step_s": ttfs,
        "compile_s": runner.lower_s + runner.compile_s + first_s,
        "lower_s": runner.lower_s,
        "xla_compile_s": runner.compile_s,
        "model_tflops_per_s": tflops,
        "peak_tflops_per_device": peak,
        "mfu": mfu,
        "peak_memory_bytes": peak_mem,
        "state_bytes_per_device": int(max(state_dev.values())) if state_dev else None,
        "compiled_bytes_per_device": compiled_bytes,
        "fused_attention_calls": fused_attention,
        "first_loss": first_loss,
        "final_loss": loss,
    }
    if peer:
        result["peer"] = peer
        if peer_error is not None:
            result["peer_error"] = peer_error
        else:
            p_sps = max(r["peer_samples_per_s"] for r in rounds)
            result.update({
                "peer_library": peer_obj.library,
                "peer_device": peer_obj.device,
                "peer_compiled": bool(peer_compile),
                "peer_dtype": peer_dtype or cfg.model.dtype,
                "peer_params": peer_obj.params,
                "peer_samples_per_s": p_sps,
                "peer_step_time_s": b / p_sps,
                "peer_time_to_first_step_s": peer_first[0],
                "peer_first_loss": peer_first[1],
                "peer_final_loss": rounds[-1]["peer_final_loss"],
                "peer_mfu": (flops * p_sps / 1e12) / (peak * jax.device_count()) if peak else None,
                "ratio": sps / p_sps,
            })
    result["rounds"] = rounds
    return result


def _model_options(cfg) -> dict:
    """Speed-relevant model options that exist in this config (scan over blocks, remat policy)."""
    out = {}
    for key in ("scan_blocks", "remat"):
        if hasattr(cfg.model, key):
            out[key] = getattr(cfg.model, key)
    return out


def format_summary(r: dict) -> str:
    """One human line: medjax samples/s, the peer's, and the ratio (for stderr beside the JSON line)."""
    text = (f"medjax {r['samples_per_s']:.2f} samples/s (first step after {r['time_to_first_step_s']:.1f} s, "
            f"MFU {r['mfu']:.1%})" if r.get("mfu") is not None else
            f"medjax {r['samples_per_s']:.2f} samples/s (first step after {r['time_to_first_step_s']:.1f} s)")
    if "peer_samples_per_s" in r:
        text += (f" | {r['peer']} ({r['peer_library']}) {r['peer_samples_per_s']:.2f} samples/s (first step after "
                 f"{r['peer_time_to_first_step_s']:.1f} s) | ratio {r['ratio']:.2f}x")
    elif "peer_error" in r:
        text += f" | peer not run: {r['peer_error']}"
    return text
