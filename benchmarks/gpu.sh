#!/usr/bin/env bash
# One prepared GPU run (H100/H200): medjax vs Hugging Face ViTMAE (2D ViT-B, batch 256, bf16, torch.compile),
# medjax vs MONAI's MAE (3D ViT-B, 96^3, MONAI in fp32/TF32: its bf16 autocast crashes), the cuDNN fused-attention
# check in the compiled HLO, and sliding-window inference vs MONAI; prints one markdown table at the end.
#
#   bash benchmarks/gpu.sh [OUTDIR]        # default OUTDIR: bench-gpu-<date>; about 6-8 minutes on an H100
#
# Needs medjax with jax[cuda]; the peers need torch (CUDA), transformers and MONAI (pip install -e .[interop]).
# Each JSON line is kept in OUTDIR/*.json; a peer that cannot run is reported as such, not skipped silently.
set -u
OUT=${1:-bench-gpu-$(date +%Y%m%d-%H%M)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
MJ="$PY -m medjax"
STEPS=${STEPS:-20}
# medjax and the PyTorch peer share the GPU in one process: JAX takes this fraction, torch the rest
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
run() {  # name, then the command; JSON line -> OUT/name.json, stderr -> OUT/name.log
  local name=$1; shift
  echo "== $name: $*" >&2
  timeout "${BENCH_TIMEOUT:-900}" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log" || echo "   $name failed (see $OUT/$name.log)" >&2
  tail -n 1 "$OUT/$name.log" >&2
}
$PY - <<'PY' >&2
import flax, jax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())
try:
    import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no cuda")
except ImportError as e:
    print("torch not importable:", e)
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >&2 || true
# Most valuable first (a lease can end mid-script): each medjax arm beside its peer, then inference, then the
# plain-XLA attention arms and the 3D step's memory.
# 2D ViT-B/16, 224^2, batch 256, bf16, cuDNN fused attention (padded) vs HF ViTMAE through torch.compile
run train2d_cudnn $MJ bench train --config mae2d_vitb16_224 --batch 256 --steps "$STEPS" --repeat 2 \
    --peer hf --peer-compile --set model.dtype=bfloat16 model.attention=cudnn
# 3D ViT-B/16, 96^3: medjax bf16 vs MONAI fp32 (TF32 matmuls)
run train3d_cudnn $MJ bench train --config mae3d_vitb16_96 --batch 32 --steps "$STEPS" --repeat 2 \
    --peer monai --peer-dtype float32 --set model.dtype=bfloat16 model.attention=cudnn
# sliding-window inference (UNETR ViT-B) vs monai.inferers.sliding_window_inference
run infer $MJ bench infer --volume 192 192 192 --window 96 96 96 --variant B/16 --batch 4 --repeats 3
# one scanned block body instead of 20 unrolled blocks: time to first step and speed against the unrolled arm
run train2d_scan $MJ bench train --config mae2d_vitb16_224 --batch 256 --steps "$STEPS" --repeat 2 \
    --set model.dtype=bfloat16 model.attention=cudnn model.scan_blocks=true
run train2d_xla $MJ bench train --config mae2d_vitb16_224 --batch 256 --steps "$STEPS" --repeat 2 \
    --set model.dtype=bfloat16 model.attention=xla
run train3d_xla $MJ bench train --config mae3d_vitb16_96 --batch 32 --steps "$STEPS" --repeat 2 \
    --set model.dtype=bfloat16 model.attention=xla
# memory and compile time of the 3D step (no run)
run mem3d $MJ bench train --config mae3d_vitb16_96 --batch 32 --compile-only --set model.dtype=bfloat16
$PY - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    p = out / f"{name}.json"
    try:
        return json.loads(p.read_text().strip().splitlines()[-1])
    except Exception:
        return None
rows = ["| run | medjax samples/s | first step (s) | MFU | peer | peer samples/s | ratio | fused attention calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for name in ("train2d_cudnn", "train2d_scan", "train2d_xla", "train3d_cudnn", "train3d_xla"):
    r = load(name)
    if r is None:
        rows.append(f"| {name} | failed | | | | | | |")
        continue
    peer = r.get("peer_library", r.get("peer_error", "-")) if r.get("peer") else "-"
    fmt = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-"
    rows.append(f"| {name} ({r['variant']}, {r['input']}, batch {r['batch']}, {r['dtype']}) | "
                f"{fmt(r['samples_per_s'], '.1f')} | {fmt(r['time_to_first_step_s'], '.1f')} | "
                f"{fmt(r.get('mfu'), '.1%')} | {peer} | {fmt(r.get('peer_samples_per_s'), '.1f')} | "
                f"{fmt(r.get('ratio'), '.2f')} | {r.get('fused_attention_calls')} |")
m = load("mem3d")
if m:
    rows.append(f"| mem3d | compiled {m['compiled_bytes_per_device'] / 2**30:.1f} GiB/device, compile "
                f"{m['compile_s']:.1f} s | | | | | | |")
i = load("infer")
if i:
    rows.append(f"| infer | {json.dumps({k: v for k, v in i.items() if 'ratio' in k or k.endswith('_s')})} | | | | | | |")
print("\n".join(rows))
(out / "table.md").write_text("\n".join(rows) + "\n")
PY
