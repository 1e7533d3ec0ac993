"""AttentionViewer: where a ViT looks, mapped back to voxels and overlaid on the volume in three planes.

``AttentionViewer("runs/demo", "data/demo/imagesTr/sub-000.nii.gz")`` runs the run's encoder (all patches
visible) on the volume preprocessed as in training and shows, as a heat map on the model input:

- ``mode="attention"``: one layer's attention, for one head or fused over heads (mean / max / min);
- ``mode="rollout"``: attention rollout through layers 1..``layer`` (Abnar & Zuidema; residual-aware).

The attention is read from ``query``: ``"cls"`` (the CLS token's row, when the model has one), ``"centre"``
(the patch at the centre of the selected axial slice, following the slice slider) or ``"received"`` (mean
attention each patch receives). Token weights become voxels by repeating each patch's weight over its voxels
(``upsample="nearest"``) or by linear interpolation between patch centres (``"linear"``). Works for 2D and 3D
models.
"""

from __future__ import annotations

import numpy as np

from medjax.interactive import attention as attn_lib
from medjax.interactive.checkpoints import load_run, model_input
from medjax.interactive.render import WidgetDisplay
from medjax.interactive.volume_viewer import VolumeViewer

MODES = ("attention", "rollout")
QUERIES = ("cls", "centre", "received")
UPSAMPLING = ("nearest", "linear")


class AttentionViewer(WidgetDisplay):
    """ViT attention maps on a volume.

    Args:
      workdir_or_checkpoint_or_model: a run workdir, a checkpoint directory, a
        :class:`~medjax.interactive.checkpoints.LoadedRun`, or an NNX :class:`~medjax.models.MAE` /
        :class:`~medjax.models.ViT` (then the volume is percentile-scaled and centre-cropped to its input size).
      volume: path / nibabel image / :class:`~medjax.data.image.Image` / array ``(X, Y, Z[, C])``.
      layer: block (0-based; negative counts from the end) whose attention is shown; for rollout, the last
        block included.
      head: a head index or ``"mean"`` / ``"max"`` / ``"min"`` over heads.
      mode: ``"attention"`` or ``"rollout"``.
      query: ``"cls"``, ``"centre"`` or ``"received"`` (default: ``"cls"`` with a CLS token, else ``"centre"``).
      upsample: ``"nearest"`` or ``"linear"``.
      affine, step: as for :class:`~medjax.interactive.recon_viewer.ReconstructionViewer`.

    Attributes: ``run``, ``x`` (model input ``(*S, C)``), ``x_affine``, ``attentions`` (list per block of
    ``(H, T, T)`` float32), ``num_prefix``, ``grid``, ``patch``, ``viewer`` (the embedded
    :class:`~medjax.interactive.volume_viewer.VolumeViewer` showing ``x`` with the heat map), ``widget``.
    """

    def __init__(self, workdir_or_checkpoint_or_model, volume, *, layer: int = -1, head="mean",
                 mode: str = "attention", query: str | None = None, upsample: str = "nearest", affine=None,
                 step: int | None = None, interactive: bool = True):
        self.run = load_run(workdir_or_checkpoint_or_model, step)
        enc = self.run.encoder
        self.x, self.x_affine = model_input(self.run, volume, affine)
        self.num_prefix = int(enc.num_prefix_tokens)
        self.grid, self.patch = tuple(enc.grid), tuple(enc.patch)
        self.num_heads = int(enc.size.heads)
        self.attentions = _encoder_attention(enc, self.x)
        self.depth = len(self.attentions)
        if self.depth == 0:
            raise ValueError("the encoder has no attention blocks")
        self.layer = self._check_layer(layer)
        self.head = self._check_head(head)
        self.mode = _check(mode, MODES, "mode")
        self.query = _check(query or ("cls" if self.num_prefix else "centre"), QUERIES, "query")
        if self.query == "cls" and not self.num_prefix:
            raise ValueError("query='cls' needs a model with a CLS token; use 'centre' or 'received'")
        self.upsample = _check(upsample, UPSAMPLING, "upsample")
        name = getattr(self.run, "workdir", None)
        self.viewer = VolumeViewer(self.x[..., 0], affine=self.x_affine, window="auto", interactive=interactive,
                                   title=f"{type(self.run.model).__name__}" + (f" {name.name}" if name else ""))
        self.viewer.slice_callbacks.append(self._on_viewer_slice)
        self.widget = None
        self._update(redraw=False)
        if interactive:
            self._build_widgets()
            self.viewer.refresh()

    # -- settings ------------------------------------------------------------------------------------------------
    def _check_layer(self, layer: int) -> int:
        layer = int(layer)
        if not -self.depth <= layer < self.depth:
            raise ValueError(f"layer {layer} out of range: the encoder has {self.depth} blocks (0..{self.depth - 1})")
        return layer % self.depth

    def _check_head(self, head):
        if isinstance(head, str):
            return _check(head, attn_lib.HEAD_FUSIONS, "head")
        head = int(head)
        if not -self.num_heads <= head < self.num_heads:
            raise ValueError(f"head {head} out of range: the encoder has {self.num_heads} heads")
        return head % self.num_heads

    def set(self, *, layer=None, head=None, mode=None, query=None, upsample=None) -> None:
        """Change any of the settings and redraw."""
        if layer is not None:
            self.layer = self._check_layer(layer)
        if head is not None:
            self.head = self._check_head(head)
        if mode is not None:
            self.mode = _check(mode, MODES, "mode")
        if query is not None:
            q = _check(query, QUERIES, "query")
            if q == "cls" and not self.num_prefix:
                raise ValueError("query='cls' needs a model with a CLS token; use 'centre' or 'received'")
            self.query = q
        if upsample is not None:
            self.upsample = _check(upsample, UPSAMPLING, "upsample")
        if self.widget is not None:
            self._sync_controls()
        self._update()

    # -- maps ----------------------------------------------------------------------------------------------------
    def query_patch(self) -> int:
        """Patch token (0-based among the ``L`` patches) at the centre of the viewer's selected axial slice."""
        v = self.viewer
        shown = np.array([(v.shape[0] - 1) / 2, (v.shape[1] - 1) / 2, v.index["axial"], 1.0])
        world = v.affine @ shown
        voxel = np.linalg.solve(self._affine3d(), world)[: len(self.grid)]
        return attn_lib.patch_index(np.rint(voxel).astype(int), self.patch, self.grid)

    def _affine3d(self) -> np.ndarray:
        return np.asarray(self.x_affine, dtype=np.float64)

    def token_map(self) -> np.ndarray:
        """``(L,)`` weights on the patch tokens for the current settings."""
        p = self.num_prefix
        if self.mode == "rollout":
            matrix = attn_lib.rollout(self.attentions[: self.layer + 1], head_fusion=self.head)
            if self.query == "cls":
                return matrix[0, p:]
            if self.query == "centre":
                return matrix[p + self.query_patch(), p:]
            return matrix[p:, p:].mean(axis=0)
        a = self.attentions[self.layer]
        if self.query == "cls":
            return attn_lib.cls_attention(a, self.head, num_prefix=p)
        if self.query == "centre":
            return attn_lib.query_attention(a, self.query_patch(), self.head, num_prefix=p)
        return attn_lib.received_attention(a, self.head, num_prefix=p)

    def attention_map(self) -> np.ndarray:
        """``(*S)`` float32 voxel map on the model input grid (model voxel order) for the current settings."""
        return attn_lib.attention_to_volume(self.token_map(), self.grid, self.patch, 0, mode=self.upsample)

    def _update(self, redraw: bool = True) -> None:
        self.viewer.set_layer("overlay", self.attention_map(), affine=self.x_affine, redraw=False)
        self.viewer.title = self.describe()
        if redraw:
            self.viewer.refresh()

    def describe(self) -> str:
        """One line naming what is shown."""
        head = f"head {self.head}" if isinstance(self.head, int) else f"{self.head} of {self.num_heads} heads"
        what = (f"rollout of blocks 0-{self.layer}" if self.mode == "rollout" else f"block {self.layer}")
        src = {"cls": "CLS token", "centre": f"patch {self.query_patch()} (slice centre)",
               "received": "mean received"}[self.query]
        return f"attention: {what}, {head}, from {src}"

    def _on_viewer_slice(self, plane: str, index: int) -> None:
        if self.query == "centre" and plane == "axial":
            self.viewer.set_layer("overlay", self.attention_map(), affine=self.x_affine, redraw=False)
            self.viewer.title = self.describe()

    def to_png(self) -> bytes:
        return self.viewer.to_png()

    # -- widgets -------------------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        import ipywidgets as w

        heads = list(attn_lib.HEAD_FUSIONS) + list(range(self.num_heads))
        queries = [q for q in QUERIES if q != "cls" or self.num_prefix]
        self._layer = w.IntSlider(value=self.layer, min=0, max=self.depth - 1, description="block",
                                  continuous_update=False)
        self._head = w.Dropdown(options=heads, value=self.head, description="head", layout=w.Layout(width="180px"))
        self._mode = w.ToggleButtons(options=MODES, value=self.mode, description="mode")
        self._query = w.Dropdown(options=queries, value=self.query, description="query",
                                 layout=w.Layout(width="200px"))
        self._upsample = w.Dropdown(options=UPSAMPLING, value=self.upsample, description="upsample",
                                    layout=w.Layout(width="200px"))
        for control, key in ((self._layer, "layer"), (self._head, "head"), (self._mode, "mode"),
                             (self._query, "query"), (self._upsample, "upsample")):
            control.observe(lambda ch, k=key: self._on_control(k, ch["new"]), names="value")
        self._syncing = False
        self.widget = w.VBox([
            w.HBox([self._mode, self._layer]),
            w.HBox([self._head, self._query, self._upsample]),
            self.viewer.widget,
        ])

    def _sync_controls(self) -> None:
        self._syncing = True
        try:
            self._layer.value, self._head.value, self._mode.value = self.layer, self.head, self.mode
            self._query.value, self._upsample.value = self.query, self.upsample
        finally:
            self._syncing = False

    def _on_control(self, key: str, value) -> None:
        if not self._syncing:
            self.set(**{key: value})

    def __repr__(self) -> str:
        return f"AttentionViewer({self.run!r}, {self.describe()})"


def _check(value: str, options: tuple, what: str) -> str:
    if value not in options:
        raise ValueError(f"{what}={value!r}: use one of {options}")
    return value


def _encoder_attention(encoder, x: np.ndarray) -> list[np.ndarray]:
    """Run the ViT on one unmasked input ``(*S, C)``; per block ``(H, T, T)`` float32 attention weights."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(encoder)

    @jax.jit
    def forward(state, images):
        _, attentions = nnx.merge(graphdef, state)(images, deterministic=True, return_attention=True)
        return attentions

    return [np.asarray(a[0], dtype=np.float32) for a in forward(state, np.asarray(x, np.float32)[None])]
