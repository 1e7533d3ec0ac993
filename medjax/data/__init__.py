"""Medical-image data: readers (NIfTI, DICOM), sources, transforms, the grain pipeline, prepared cache, demo set."""

from medjax.data.image import Image, orientation_code, spacing_from_affine

__all__ = ["Image", "orientation_code", "spacing_from_affine"]
