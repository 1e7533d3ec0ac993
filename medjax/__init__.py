"""medjax: a JAX research platform for medical-imaging foundation models.

Subpackages (data flows one way):

- ``medjax.config``: typed, frozen configs and presets.
- ``medjax.data``: NIfTI/DICOM readers, sources, transforms, grain pipeline, prepared cache, demo data.
- ``medjax.models``: Flax NNX ViT, MAE and task heads (2D and 3D).
- ``medjax.parallel``: device mesh and logical-axis sharding rules.
- ``medjax.training``: train state, pure steps, losses, optimizers, checkpoints, the loop.
- ``medjax.evaluation``: metrics and sliding-window inference.
- ``medjax.interactive``: ipywidgets viewers and the experiment launcher (imported by nothing else).
"""

__version__ = "0.1.0"
