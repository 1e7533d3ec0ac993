"""Medical-image data: readers (NIfTI, DICOM), sources, transforms, the grain pipeline, prepared cache, demo set.

The names below are the ones users call; the submodules hold the rest.
"""

from medjax.data.demo import build_demo, summarize_demo
from medjax.data.image import Image, orientation_code, spacing_from_affine
from medjax.data.io import read_geometry, read_image, write_dicom_series, write_nifti
from medjax.data.sources import load_records
from medjax.data.validate import CheckResult, check_dataset, check_image, check_pair

__all__ = [
    "CheckResult", "Image", "build_demo", "summarize_demo", "check_dataset", "check_image", "check_pair", "load_records", "orientation_code",
    "read_geometry", "read_image", "spacing_from_affine", "write_dicom_series", "write_nifti",
]
