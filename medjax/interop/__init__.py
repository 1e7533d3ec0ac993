"""medjax.interop: weights in from Hugging Face, timm and MONAI, and medjax encoders out to them.

- :func:`load` (``medjax import-weights``): a ``.safetensors`` file or Hugging Face folder -> ``(config, model)``
  computing the same function; optional 2D -> 3D inflation, position interpolation, in-channel adaptation.
- :func:`import_weights`: the same, written as an ordinary medjax run directory (orbax checkpoint + config).
- :func:`export_weights` (``medjax export-weights``): a medjax run -> Hugging Face folder or MONAI state dict.

Formats: ``hf-vitmae``, ``hf-vit``, ``timm-vit``, ``monai-vit``, ``monai-mae``, ``monai-unetr`` (its encoder;
:func:`load_unetr` gives the whole UNETR with MONAI's decoder, same logits).
Nothing here imports torch; pickle-based files are refused unless explicitly allowed.
"""

from medjax.interop.files import WeightsError, read_weights
from medjax.interop.load import FORMATS, load, read

__all__ = ["FORMATS", "WeightsError", "export_weights", "import_weights", "load", "load_unetr", "read", "read_weights"]


def load_unetr(*args, **kwargs):
    """See :func:`medjax.interop.unetr.load_unetr` (a whole MONAI UNETR, same logits)."""
    from medjax.interop.unetr import load_unetr as f

    return f(*args, **kwargs)


def import_weights(*args, **kwargs):
    """See :func:`medjax.interop.rundir.import_weights`."""
    from medjax.interop.rundir import import_weights as f

    return f(*args, **kwargs)


def export_weights(*args, **kwargs):
    """See :func:`medjax.interop.export.export_weights`."""
    from medjax.interop.export import export_weights as f

    return f(*args, **kwargs)
