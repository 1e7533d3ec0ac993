"""``medjax bench infer``: sliding-window segmentation inference time of medjax vs MONAI on the same volume.

Both run the same-sized UNETR-style model on one random volume with the same window, overlap, window batch and
Gaussian blending. MONAI (with torch) is timed only when importable (a separate venv, see the README); the
ratio printed is MONAI seconds / medjax seconds (> 1: medjax faster). Prints one JSON line.
"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "infer",
        help="sliding-window inference time (medjax UNETR) and the ratio against MONAI when importable",
        description="Times sliding-window segmentation of one random volume (after a warm-up call) and prints "
                    "one JSON line; with MONAI importable also times monai.inferers.sliding_window_inference with "
                    "monai.networks.nets.UNETR of the same size and prints monai_s / medjax_s.",
    )
    p.add_argument("--volume", type=int, nargs="+", default=[96, 96, 96], help="volume size in voxels")
    p.add_argument("--window", type=int, nargs="+", default=[64, 64, 64], help="window size in voxels")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap fraction")
    p.add_argument("--batch", type=int, default=2, help="windows per model call")
    p.add_argument("--variant", default="Ti/16", help="ViT variant of both models (width/depth/heads/patch)")
    p.add_argument("--features", type=int, default=16, help="UNETR decoder features")
    p.add_argument("--classes", type=int, default=4, help="output classes")
    p.add_argument("--repeats", type=int, default=2, help="timed calls (the best is reported)")
    p.set_defaults(func=run)


def _time(fn, repeats):
    import time

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(args) -> int:
    import json
    import os
    import time

    import jax
    import numpy as np
    from flax import nnx

    from medjax.config.schema import ModelConfig
    from medjax.evaluation.sliding_window import sliding_window_inference
    from medjax.finetune.tasks import param_count
    from medjax.models.heads import UNETR
    from medjax.config.variants import decode_variant
    from medjax.training.state import split_model

    nd = len(args.window)
    vol = np.random.default_rng(0).normal(size=(*args.volume, 1)).astype(np.float32)
    model = UNETR(ModelConfig(variant=args.variant), spatial_dims=nd, input_size=tuple(args.window),
                  num_classes=args.classes, features=args.features, rngs=nnx.Rngs(0))
    model_def, params, ms = split_model(model)

    def fn(x, p):
        return model_def.merge(p, ms)(x)

    call = lambda: jax.block_until_ready(sliding_window_inference(  # noqa: E731
        vol, args.window, fn, overlap=args.overlap, batch_size=args.batch, fn_args=(params,)))
    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    ours = _time(call, args.repeats)
    result = {"volume": args.volume, "window": args.window, "overlap": args.overlap, "batch": args.batch,
              "variant": args.variant, "device": jax.devices()[0].device_kind, "medjax_s": round(ours, 4),
              "medjax_first_call_s": round(compile_s, 2), "medjax_params": param_count(params),
              "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    try:
        import monai  # noqa: F401
        import torch
        from monai.inferers import sliding_window_inference as monai_swi
        from monai.networks.nets import UNETR as MonaiUNETR
    except ImportError:
        result["monai"] = "not importable (install torch and monai in a separate venv to compare)"
        print(json.dumps(result), flush=True)
        return 0
    size = decode_variant(args.variant, nd)
    try:
        net = MonaiUNETR(in_channels=1, out_channels=args.classes, img_size=tuple(args.window),
                         feature_size=args.features, hidden_size=size.width, mlp_dim=size.mlp_dim,
                         num_heads=size.heads, proj_type="perceptron", norm_name="instance", res_block=True,
                         spatial_dims=nd).eval()
    except ImportError as e:  # MONAI's UNETR needs einops
        result["monai"] = f"MONAI UNETR unavailable ({e}); install its optional dependencies"
        print(json.dumps(result), flush=True)
        return 0
    except ValueError as e:  # e.g. a window smaller than MONAI's 16-voxel patch
        result["monai"] = f"MONAI UNETR cannot take --window {' '.join(map(str, args.window))}: {e}"
        print(json.dumps(result), flush=True)
        return 0
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    net = net.to(dev)
    x = torch.from_numpy(np.moveaxis(vol, -1, 0)[None]).to(dev)

    def monai_call():
        with torch.no_grad():
            monai_swi(x, tuple(args.window), args.batch, net, overlap=args.overlap, mode="gaussian")
        if dev == "cuda":
            torch.cuda.synchronize()

    monai_call()
    theirs = _time(monai_call, args.repeats)
    result.update({"monai_s": round(theirs, 4), "ratio_monai_over_medjax": round(theirs / ours, 3),
                   "monai_params": int(sum(p.numel() for p in net.parameters())), "monai_patch": 16,
                   "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                   "monai_version": monai.__version__})
    if hasattr(os, "getloadavg"):
        result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    if tuple(size.patch) != (16,) * nd:
        result["note"] = "MONAI's UNETR uses 16-voxel patches; the medjax model uses the variant's patch"
    print(json.dumps(result), flush=True)
    return 0
