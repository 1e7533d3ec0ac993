"""Frozen encoder features: a ViT encoder from a checkpoint (or seeded at random) applied window by window.

Used by ``medjax probe`` (linear / k-NN probes, :mod:`medjax.finetune.probe`) and ``medjax features`` (embeddings
written for researchers' own analyses). A volume is preprocessed as in fine-tuning
(:func:`medjax.finetune.predict.preprocess_record`: reorient, resample, crop to foreground, normalise, pad), tiled
into windows of ``data.crop_size`` (starts from :func:`medjax.evaluation.window_starts` with
``finetune.eval_overlap``), and each window goes through the frozen encoder; its tokens are pooled into one
feature vector:

- ``mean``: average of the patch tokens (after the encoder's final LayerNorm);
- ``max``: per-feature maximum over the patch tokens;
- ``cls``: the CLS token (needs ``model.cls_token``).

By default the tokens are the encoder's output. ``layer=k`` (1-based block number) pools block ``k``'s output
instead, put through the encoder's final LayerNorm, so that every layer's features are on the output's scale;
``layer=depth`` is the output itself. Features of several pools and layers come from one forward pass, keyed by
:func:`feature_key`.

A volume's embedding is the mean of its windows' features. 2D encoders (``data.spatial_dims=2``) see the
volume's slices along ``data.slice_axis``; every slice's windows count as the volume's windows.

The encoder's architecture comes from the checkpoint's saved config (``model`` section) when it has one, so a
preset whose model differs from the pretraining run still probes the encoder that was trained; only
``params/encoder`` is read (:mod:`medjax.training.restore` via :func:`medjax.finetune.init.load_encoder`). A
fixed sin-cos position table is rebuilt for the window's patch grid, a learned one is interpolated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from medjax.errors import ConfigError

POOLS = ("mean", "max", "cls")


def feature_key(pool: str, layer: int | None = None) -> str:
    """Name of one feature: ``"mean"`` (the encoder output), or ``"mean@6"`` (block 6's output)."""
    return pool if layer is None else f"{pool}@{int(layer)}"


def encoder_config(cfg, meta: dict | None):
    """``cfg`` with its ``model`` section taken from a checkpoint's saved config (``meta["config"]["model"]``)
    when there is one; dropout and stochastic depth off (features are computed deterministically anyway)."""
    from medjax.config.overrides import from_dict
    from medjax.config.schema import ModelConfig

    saved = ((meta or {}).get("config") or {}).get("model")
    model = from_dict(ModelConfig, saved, "model") if saved else cfg.model
    model = dataclasses.replace(model, dropout=0.0, drop_path=0.0)
    return dataclasses.replace(cfg, model=model)


@dataclass
class Encoder:
    """A frozen ViT encoder ready to embed windows.

    Attributes:
      name: ``"checkpoint"`` or ``"random-init"``.
      source: checkpoint path, or ``None`` for a random initialisation.
      seed: initialisation seed (random init), else None.
      step: checkpoint step, else None.
      loss: the training loss saved with the checkpoint (``meta["loss"]``), else None.
      cfg: the config the encoder was built from (model section from the checkpoint).
      params: the encoder's parameters (pure dict of arrays).
    """

    name: str
    source: str | None
    seed: int | None
    step: int | None
    loss: float | None
    cfg: object
    params: dict

    def embed(self, windows: np.ndarray, pool: str) -> np.ndarray:
        """Pooled features ``(N, D)`` float32 of windows ``(N, *window, C)``."""
        return self.embed_pools(windows, (pool,))[pool]

    def embed_pools(self, windows: np.ndarray, pools: tuple[str, ...],
                    layers: tuple[int | None, ...] = (None,)) -> dict[str, np.ndarray]:
        """``{feature_key(pool, layer): (N, D) float32}`` of windows ``(N, *window, C)`` for every pool and layer
        (``None``: the encoder output; else a block number, see module doc), all from one forward pass."""
        import jax

        windows = np.asarray(windows, np.float32)
        layers = tuple(dict.fromkeys(layers))
        _, fn = _forward(self.cfg, tuple(windows.shape[1:-1]), tuple(sorted(x for x in layers if x is not None)))
        out = jax.device_get(fn(self.params, windows))
        return {feature_key(p, x): np.asarray(out[feature_key(p, x)], np.float32) for p in pools for x in layers}


_FORWARD: dict = {}  # (model config, spatial dims, window, layers) -> (model_def, jitted pooled forward)


def _pools(tokens, num_prefix: int, layer: int | None) -> dict:
    """``{feature_key(pool, layer): (B, D)}`` of tokens ``(B, P + L, D)`` float32."""
    patches = tokens[:, num_prefix:]
    out = {"mean": patches.mean(axis=1), "max": patches.max(axis=1)}
    out["cls"] = tokens[:, 0] if num_prefix else out["mean"]
    return {feature_key(p, layer): v for p, v in out.items()}


def _forward(cfg, window: tuple[int, ...], layers: tuple[int, ...] = ()):
    import jax
    from flax import nnx

    from medjax.models.vit import ViT
    from medjax.training.state import abstract_model

    key = (cfg.model, cfg.data.spatial_dims, tuple(window), tuple(layers))
    if key in _FORWARD:
        return _FORWARD[key]
    model_def, _, _ = abstract_model(lambda: ViT(cfg.model, spatial_dims=cfg.data.spatial_dims,
                                                 input_size=window, rngs=nnx.Rngs(0)))

    def fn(params, x):
        enc = model_def.merge(params)
        p = enc.num_prefix_tokens
        if layers:
            tokens, hidden = enc(x, deterministic=True, return_layers=layers)
        else:
            tokens, hidden = enc(x, deterministic=True), []
        out = _pools(tokens.astype(jax.numpy.float32), p, None)
        for layer, h in zip(layers, hidden):
            out.update(_pools(enc.norm(h).astype(jax.numpy.float32), p, layer))
        return out

    _FORWARD[key] = (model_def, jax.jit(fn))
    return _FORWARD[key]


def window_size(cfg) -> tuple[int, ...]:
    from medjax.finetune.tasks import crop_size

    return crop_size(cfg)


def load_encoder_from(cfg, checkpoint) -> Encoder:
    """The encoder of ``checkpoint`` (an MAE, fine-tuning or imported run, or one step folder), for windows of
    ``data.crop_size`` of ``cfg``; the architecture from the checkpoint's saved config."""
    import jax
    from flax import nnx

    from medjax.finetune.init import load_encoder
    from medjax.models.vit import ViT
    from medjax.training.restore import open_checkpoint
    from medjax.training.state import abstract_model

    saved = open_checkpoint(checkpoint)
    ecfg = encoder_config(cfg, saved.meta)
    window = window_size(ecfg)
    _, abstract, _ = abstract_model(lambda: ViT(ecfg.model, spatial_dims=ecfg.data.spatial_dims,
                                                input_size=window, rngs=nnx.Rngs(0)))
    from medjax.training.restore import abstract_like

    grid = tuple(w // p for w, p in zip(window, _patch(ecfg)))
    params, _ = load_encoder({"encoder": abstract_like(abstract)}, saved.workdir / "checkpoints" / str(saved.step),
                             grid=grid, num_prefix=1 if ecfg.model.cls_token else 0,
                             spatial_dims=ecfg.data.spatial_dims)
    loss = saved.meta.get("loss")
    return Encoder(name="checkpoint", source=str(checkpoint), seed=None, step=int(saved.step),
                   loss=float(loss) if loss is not None else None, cfg=ecfg,
                   params=jax.device_get(params["encoder"]))


def random_encoder(cfg, seed: int) -> Encoder:
    """The same architecture as ``cfg.model`` with fresh parameters from ``seed`` (as fine-tuning from scratch
    initialises its encoder: ``nnx.Rngs(seed)``)."""
    import jax
    from flax import nnx

    from medjax.models.vit import ViT
    from medjax.training.state import split_model

    ecfg = encoder_config(cfg, None)
    window = window_size(ecfg)
    _, params, _ = split_model(ViT(ecfg.model, spatial_dims=ecfg.data.spatial_dims, input_size=window,
                                   rngs=nnx.Rngs(int(seed))))
    return Encoder(name="random-init", source=None, seed=int(seed), step=None, loss=None, cfg=ecfg,
                   params=jax.device_get(params))


def _patch(cfg) -> tuple[int, ...]:
    from medjax.config.variants import decode_variant

    return decode_variant(cfg.model.variant, cfg.data.spatial_dims).patch


def check_pool(pool: str, cfg) -> None:
    if pool not in POOLS:
        raise ConfigError(f"pool={pool!r}: use one of {POOLS}")
    if pool == "cls" and not cfg.model.cls_token:
        raise ConfigError("pool='cls' needs an encoder with a CLS token (model.cls_token=true); use mean or max")


def check_layer(layer: int, cfg) -> int | None:
    """A block number ``layer`` of ``cfg``'s encoder checked against its depth; the last block is the encoder
    output, returned as ``None`` (see :func:`feature_key`)."""
    from medjax.finetune.tasks import num_encoder_layers

    depth = num_encoder_layers(cfg)
    if not 1 <= int(layer) <= depth:
        raise ConfigError(f"layer={layer}: the {cfg.model.variant} encoder has blocks 1..{depth}; give a block "
                          f"number in that range ({depth} is the encoder output)")
    return None if int(layer) == depth else int(layer)


# ------------------------------------------------------------------------------------------------ windows
def model_inputs(volume: np.ndarray, spatial_dims: int, slice_axis: int = 2) -> np.ndarray:
    """Preprocessed volume ``(X, Y, Z, C)`` -> model inputs: ``(1, X, Y, Z, C)`` in 3D, slices ``(N, H, W, C)``
    along ``slice_axis`` in 2D."""
    volume = np.asarray(volume, np.float32)
    return volume[None] if spatial_dims == 3 else np.moveaxis(volume, slice_axis, 0)


def window_features_by_pool(encoders: list[Encoder], inputs: np.ndarray, positions: list, window,
                            pools: tuple[str, ...], batch: int = 8,
                            layers: tuple[int | None, ...] = (None,)) -> list[dict[str, np.ndarray]]:
    """Per encoder, ``{feature_key(pool, layer): (W, D) float32}`` for the windows at ``positions`` of ``inputs``
    (``layers``: ``None`` for the encoder output, else block numbers): every feature comes from the same forward
    pass, so probing several pools and layers costs one embedding of the windows.

    Windows go through the encoders in batches of ``batch`` (the last one zero-padded: one compilation per
    window shape)."""
    window = tuple(int(w) for w in window)
    outs: list[dict[str, list[np.ndarray]]] = [{feature_key(p, x): [] for p in pools for x in layers}
                                               for _ in encoders]
    for i in range(0, len(positions), batch):
        chunk = positions[i:i + batch]
        wins = np.stack([inputs[(n, *(slice(s, s + w) for s, w in zip(st, window)))] for n, st in chunk])
        if len(chunk) < batch:
            wins = np.concatenate([wins, np.zeros((batch - len(chunk), *wins.shape[1:]), wins.dtype)])
        for k, enc in enumerate(encoders):
            for p, f in enc.embed_pools(wins, pools, layers).items():
                outs[k][p].append(f[: len(chunk)])
    return [{p: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for p, v in o.items()} for o in outs]
