"""Folders of files in and out: image/label pairs read by file stem, output folders refused
before long work starts. No torch: every command can use these and still start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .core import io


@dataclass
class LoadedPairs:
    """Image/label pairs read from two folders (labels may be None when predicting)."""

    names: list
    images: list
    labels: list
    image_metas: list
    label_metas: list


def load_pairs(images_dir, labels_dir) -> LoadedPairs:
    """Read and validate every image/label pair of two folders, paired by file stem.

    Raises
    ------
    napari_noisyseg.core.io.InputError
        Unpaired stems, unreadable files, or any pair failing validation;
        the message names the file.
    """
    pairs = io.pair_files(images_dir, labels_dir)
    loaded = LoadedPairs([], [], [], [], [])
    for stem, image_path, label_path in pairs:
        image, image_meta = io.read_image(image_path)
        labels, label_meta = io.read_labels(label_path)
        image, labels = io.validate_pair(image, labels, str(image_path), str(label_path))
        loaded.names.append(stem)
        loaded.images.append(image)
        loaded.labels.append(labels)
        loaded.image_metas.append(image_meta)
        loaded.label_metas.append(label_meta)
    return loaded


def load_images(images_dir) -> LoadedPairs:
    """Read and validate every image of a folder (no labels)."""
    files = io.list_files(images_dir)
    if not files:
        raise io.InputError(f"{images_dir}: no supported image files ({', '.join(io.SUPPORTED_EXTENSIONS)})")
    loaded = LoadedPairs([], [], [], [], [])
    for path in files:
        image, meta = io.read_image(path)
        loaded.names.append(io.split_stem(path)[0])
        loaded.images.append(image)
        loaded.labels.append(None)
        loaded.image_metas.append(meta)
        loaded.label_metas.append(None)
    return loaded


def check_new_dir(path, overwrite: bool) -> Path:
    """Refuse a non-empty existing folder (unless ``overwrite``) or a file, without creating anything.

    Call it before long work (training) so that a bad ``--out`` fails at once.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is a file, not a folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass --overwrite to write into it")
    return path


def ensure_new_dir(path, overwrite: bool) -> Path:
    """Create ``path``; refuse a non-empty existing folder unless ``overwrite``."""
    path = check_new_dir(path, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    return path
