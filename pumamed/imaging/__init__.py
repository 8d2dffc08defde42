"""Imaging data layer: readers for every supported format into one common sample.

Public API::

    from pumamed.imaging import load_dataset, DATASETS, DatasetInfo
    ds = load_dataset("brain_tumor_mri", split="train", size=64)
    image, label = ds[0]           # float32 1xSxS in [0, 1]; int or float32 multi-hot
    ds.metadata, ds.labels, ds.class_names, ds.task

See docs/imaging_data.md for datasets, splits, aspect-ratio handling, DICOM/NIfTI and uploads.
"""

from pumamed.imaging.dataset import ImagingDataset, clear_image_cache
from pumamed.imaging.dicom import DicomImage, read_dicom
from pumamed.imaging.mix import PretrainingMix, balanced_sampler, make_pretraining_mix
from pumamed.imaging.registry import (
    DATASETS,
    SIZES,
    DatasetInfo,
    available_datasets,
    dataset_splits,
    load_dataset,
)
from pumamed.imaging.nifti import NiftiVolume, read_nifti
from pumamed.imaging.sources import NIH_FINDINGS, mias_lesion_boxes, mias_lesion_mask
from pumamed.imaging.uploads import MAX_UPLOAD_BYTES, MAX_UPLOAD_PIXELS, UploadedImage, read_upload

__all__ = [
    "DATASETS", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "NIH_FINDINGS", "SIZES", "DatasetInfo", "DicomImage",
    "ImagingDataset", "NiftiVolume", "PretrainingMix", "UploadedImage", "available_datasets", "balanced_sampler",
    "clear_image_cache", "dataset_splits", "load_dataset", "make_pretraining_mix", "mias_lesion_boxes",
    "mias_lesion_mask", "read_dicom", "read_nifti", "read_upload",
]
