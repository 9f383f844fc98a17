"""npe2 single-layer writers for labels and image layers.

Overwriting
-----------
npe2 writers run after napari's save dialog has asked the person whether to
replace an existing file, so they write with ``overwrite=True`` (atomically:
a failed write leaves the old file intact). One exception keeps the design's
promise that originals are never modified: a layer is never written over the
file it was read from (``metadata["source_path"]``); save it under a new name.

NIfTI
-----
If ``metadata["affine"]`` holds a 4x4 affine (our reader puts it there) it is
reused; otherwise the layer's ``scale`` becomes a diagonal affine. Data is
written in the layer's axis order, the same order the reader produced.

A path without an extension gets ``.tif``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .core.io import ImageMeta, InputError, split_stem, write_array, write_labels


def write_labels_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a labels layer; return ``[written_path]``.

    Parameters
    ----------
    path : str
        Target file; ``.tif``/``.tiff``, ``.png`` (2D only), ``.nii``/``.nii.gz``, ``.npy``.
    data : array-like or list of array-like
        Label map (Y, X) or (Z, Y, X); for multiscale data the full-resolution
        level is written. Stored as uint8/uint16/int16/int32 as the values allow.
    attributes : dict
        napari layer attributes (``metadata``, ``scale``, ...).
    """
    array = _full_resolution(data)
    target, meta = _prepare(path, array, attributes)
    return [str(write_labels(target, array, meta, overwrite=True))]


def write_image_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """Write an image layer with its own dtype (e.g. a float32 noise map); return ``[path]``.

    See :func:`write_labels_layer` for the parameters. PNG takes only 2D or
    colour (H, W, 3|4) integer data; float maps need ``.tif``, ``.nii.gz`` or ``.npy``.
    """
    array = _full_resolution(data)
    target, meta = _prepare(path, array, attributes)
    return [str(write_array(target, array, meta, overwrite=True))]


def _full_resolution(data: Any) -> np.ndarray:
    if isinstance(data, (list, tuple)):  # multiscale: level 0 is full resolution
        data = data[0]
    return np.asarray(data)


def _prepare(path: str, array: np.ndarray, attributes: dict | None) -> tuple[Path, ImageMeta]:
    target = Path(path)
    if not split_stem(target)[1]:
        target = target.with_name(target.name + ".tif")
    attributes = attributes or {}
    metadata = attributes.get("metadata") or {}
    source = metadata.get("source_path")
    if source and _same_file(Path(source), target):
        raise InputError(
            f"{str(target)!r} is the file this layer was read from; originals are never "
            "overwritten, so save it under a new name"
        )
    affine = metadata.get("affine")
    scale = attributes.get("scale")
    spacing = tuple(float(s) for s in scale) if scale is not None else None
    meta = ImageMeta(
        path=None,
        affine=None if affine is None else np.asarray(affine, dtype=np.float64),
        spacing=spacing,
        source_dtype=str(array.dtype),
        extension=split_stem(target)[1],
    )
    return target, meta


def _same_file(a: Path, b: Path) -> bool:
    if not (a.exists() and b.exists()):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
