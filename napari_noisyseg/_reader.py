"""npe2 reader: TIFF, PNG, NIfTI and NumPy files as napari image or labels layers.

Which layer type a file becomes
-------------------------------
A file is *meant* as labels when its folder is named like a label folder
(``labels``, ``label``, ``masks``, ``mask``, ``noisy``, ``clean``,
``corrected``, ..., also nnU-Net's ``labelsTr``/``labelsTs``) or its stem ends
with ``_labels``/``_label``/``_mask``/``_masks``/``_seg``. Otherwise a bool or
integer array with at most 64 distinct values is taken for labels too. Data
meant as labels that is not a valid label map (fractional values, colour
channels that differ, negative values) opens as an image instead, so the file
is always shown.

Axis order and scale
--------------------
Data is given to napari in the file's own axis order; NIfTI is *not*
transposed, so a volume shows nibabel's (x, y, z) order (slider over x). This
keeps the data and its affine consistent and makes read -> write a no-op. NIfTI
zooms become ``scale`` (same axis order), and the full affine is kept in
``metadata["affine"]`` for the writer; ``metadata["source_path"]`` names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .core.io import (
    InputError,
    as_grey,
    is_supported,
    read_array,
    split_stem,
    validate_labels,
)

LayerData = tuple  # (data, kwargs, layer_type), napari's LayerDataTuple

LABEL_FOLDER_NAMES = frozenset(
    {
        "labels", "label", "masks", "mask", "noisy", "clean", "corrected",
        "annotations", "segmentations", "segmentation", "labelstr", "labelsts",
    }
)
LABEL_STEM_SUFFIXES = ("_labels", "_label", "_mask", "_masks", "_seg")
MAX_LABEL_VALUES = 64  # an integer file with more distinct values is an image


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` if every path has a supported extension, else None.

    Parameters
    ----------
    path : str, PathLike or list of them
        What napari asks about; nothing is opened here (npe2 calls this often).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(isinstance(p, (str, os.PathLike)) and is_supported(p) for p in paths):
        return None
    return read_layers


def read_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """Read one file or a list of files, one layer per file.

    Returns
    -------
    list of (data, kwargs, "image" | "labels")
        ``kwargs`` has ``name`` (the stem), ``metadata`` (``source_path``, and
        ``affine`` for NIfTI) and, for NIfTI, ``scale``.

    Raises
    ------
    InputError
        A file that cannot be read (napari shows the message).
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [read_layer(p) for p in paths]


def read_layer(path: str | os.PathLike) -> LayerData:
    """Read one file as a napari LayerData tuple (see :func:`read_layers`)."""
    array, meta = read_array(path)
    layer_type, data = _classify(Path(path), array, meta.extension)
    metadata: dict[str, Any] = {"source_path": str(path)}
    if meta.affine is not None:
        metadata["affine"] = meta.affine
    kwargs: dict[str, Any] = {"name": split_stem(path)[0], "metadata": metadata}
    if meta.spacing is not None:
        kwargs["scale"] = tuple(meta.spacing[: data.ndim])
    if layer_type == "image" and meta.extension in (".nii", ".nii.gz"):
        kwargs["rgb"] = False  # a volume 3 voxels deep is not a colour image
    return data, kwargs, layer_type


def looks_like_labels_path(path: str | os.PathLike) -> bool:
    """True if the folder name or the stem suffix says the file holds labels."""
    path = Path(path)
    stem = split_stem(path)[0].lower()
    return path.parent.name.lower() in LABEL_FOLDER_NAMES or stem.endswith(LABEL_STEM_SUFFIXES)


def _classify(path: Path, array: np.ndarray, extension: str) -> tuple[str, np.ndarray]:
    """Decide the layer type; return it with the data to show."""
    candidate = array
    if extension == ".png":
        candidate = as_grey(array)  # grey saved as RGB(A)
    meant = looks_like_labels_path(path)
    if not meant and not _few_integer_values(candidate):
        return "image", array
    try:
        # allow_full: the viewer shows any map; training checks it later.
        labels = validate_labels(candidate, str(path), allow_full=True)
    except InputError:
        return "image", array
    # Integer files keep their dtype (a uint8 volume stays 4x smaller than int32);
    # bool and whole-number float files get the validated int32.
    return "labels", candidate if candidate.dtype.kind in "iu" else labels


def _few_integer_values(array: np.ndarray) -> bool:
    if array.dtype.kind not in "biu":
        return False
    if array.dtype.kind == "b":
        return True
    # A strided sample rejects most images without a full np.unique.
    step = max(1, array.size // 1_000_000)
    if len(np.unique(array.ravel()[::step])) > MAX_LABEL_VALUES:
        return False
    return len(np.unique(array)) <= MAX_LABEL_VALUES
