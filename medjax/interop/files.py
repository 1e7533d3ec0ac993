"""Reading and writing weight files: safetensors (read with ``safetensors.numpy``, no torch), and the refusal of
pickle-based files.

A source is a ``.safetensors`` file or a folder in the Hugging Face layout (``config.json`` + ``model.safetensors``,
possibly sharded as ``model-0000N-of-0000M.safetensors`` with an index). Pickle-based files (``.bin``, ``.pt``,
``.pth``, ``.ckpt``) can run arbitrary code when unpickled; they are refused unless ``allow_pickle`` is given, and
then read only through ``torch.load(weights_only=True)`` (which refuses arbitrary objects).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medjax.errors import MedjaxError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CONFIG_NAMES = ("config.json", "monai_args.json")  # read beside the weights: HF/timm config, MONAI constructor args


class WeightsError(MedjaxError, ValueError):
    """A weight file that cannot be read or does not match the requested format (the message names the file or
    tensor and what to do)."""


def _convert_hint(path: Path) -> str:
    return (f"{path}: pickle-based weight files can run code when loaded and are not read by default. Convert it "
            "once in a trusted Python with torch installed: `import torch, safetensors.torch as st; "
            f"sd = torch.load({str(path)!r}, weights_only=True, map_location='cpu'); "
            "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')` "
            "(for a dict holding the weights under 'state_dict' or 'model', save that entry), or pass --allow-pickle "
            "to read it with torch.load(weights_only=True)")


def _load_pickle(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: --allow-pickle needs torch installed (pip install 'medjax[interop]'); or "
                           "convert the file to safetensors elsewhere") from None
    try:
        obj = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as e:  # weights_only refuses arbitrary objects: report, never retry unsafely
        raise WeightsError(f"{path}: torch.load(weights_only=True) refused or failed: {e}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach"):
            out[str(k)] = v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
    return out


def _safetensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if len(found) == 1:
        return found
    pickles = [p for p in sorted(folder.iterdir()) if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        return pickles[:1]
    raise WeightsError(f"{folder}: no model.safetensors (or a single *.safetensors) in this folder; "
                       f"found {sorted(p.name for p in folder.iterdir())[:10]}")


def read_weights(src, *, allow_pickle: bool = False) -> tuple[dict[str, np.ndarray], dict | None, Path]:
    """Read a weight source.

    Args:
      src: a ``.safetensors`` file, a folder (``config.json`` + ``model.safetensors``), or with ``allow_pickle`` a
        ``.bin``/``.pt``/``.pth``/``.ckpt`` file.

    Returns:
      ``(state_dict, config, path)``: tensor name -> numpy array (float tensors as float32), the parsed
      ``config.json`` (or MONAI ``monai_args.json``) beside the weights (None when absent), and the weights path.
    """
    from safetensors.numpy import load_file

    path = Path(src).expanduser()
    if not path.exists():
        raise WeightsError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else path.parent
    config = None
    for name in CONFIG_NAMES:
        if (folder / name).is_file() and (path.is_dir() or path.suffix == ".safetensors"):
            config = json.loads((folder / name).read_text())
            break
    files = _safetensor_files(path) if path.is_dir() else [path]
    sd: dict[str, np.ndarray] = {}
    for f in files:
        if f.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise WeightsError(_convert_hint(f))
            sd.update(_load_pickle(f))
        elif f.suffix == ".safetensors":
            try:
                part = load_file(str(f))
            except Exception as e:
                raise WeightsError(f"{f}: not a readable safetensors file ({e})") from None
            sd.update({k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in part.items()})
        else:
            raise WeightsError(f"{f}: unknown weight file type {f.suffix!r}; expected .safetensors (or, with "
                               f"--allow-pickle, one of {PICKLE_SUFFIXES})")
    return sd, config, files[0]


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (contiguous float32 numpy arrays) to ``path`` with ``safetensors.numpy``."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path
