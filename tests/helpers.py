"""Small helpers shared by the method tests (imported as ``helpers``; pytest puts
``tests/`` on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_noisyseg.core import io
from napari_noisyseg.engine.events import Progress, StepEvent


def foreground_crops(sample: dict, count: int, size: int, low: float = 0.1, high: float = 0.5):
    """The first ``count`` size×size crops of the nuclei sample whose clean labels
    cover between ``low`` and ``high`` of the crop.

    Parameters
    ----------
    sample : dict
        ``image`` (N, H, W) and ``clean`` (N, H, W) of the nuclei sample.

    Returns
    -------
    (list of ndarray (size, size) images, list of ndarray int64 (size, size) labels)
    """
    images, labels = [], []
    stack, clean = sample["image"], sample["clean"]
    for index in range(stack.shape[0]):
        for top in range(0, stack.shape[1] - size + 1, size):
            for left in range(0, stack.shape[2] - size + 1, size):
                lab = clean[index, top : top + size, left : left + size]
                if low < lab.mean() < high:
                    images.append(stack[index, top : top + size, left : left + size])
                    labels.append(lab.astype(np.int64))
                if len(images) == count:
                    return images, labels
    return images, labels


def stop_at(predicate) -> Progress:
    """A Progress that requests a stop at the first StepEvent matching ``predicate``."""
    progress = Progress()

    def callback(event):
        if isinstance(event, StepEvent) and predicate(event):
            progress.request_stop()

    progress.callback = callback
    return progress


def write_pairs(folder, images, labels) -> tuple:
    """Write crops as ``images/crop<i>.tif`` and ``labels/crop<i>.png`` under ``folder``."""
    for i, (image, label) in enumerate(zip(images, labels)):
        io.write_array(folder / "images" / f"crop{i}.tif", image)
        io.write_labels(folder / "labels" / f"crop{i}.png", label)
    return folder / "images", folder / "labels"


SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def sample_folders(root: Path, count: int, size: int, labels: str = "labels_clean"):
    """``root/images/<stem>.tif`` and ``root/labels/<stem>.png``: size × size crops (from
    (100, 100)) of the nuclei sample images with foreground in ``sample_data/bbbc039/<labels>``.

    Returns
    -------
    (images folder, labels folder, list of stems)
    """
    stems = []
    for image_path in io.list_files(SAMPLE / "bbbc039" / "images"):
        stem = io.split_stem(image_path)[0]
        label_array, _ = io.read_array(SAMPLE / "bbbc039" / labels / f"{stem}.png")
        crop = (slice(100, 100 + size), slice(100, 100 + size))
        if not label_array[crop].any():
            continue
        image, _ = io.read_array(image_path)
        io.write_array(root / "images" / f"{stem}.tif", image[crop])
        io.write_labels(root / "labels" / f"{stem}.png", label_array[crop])
        stems.append(stem)
        if len(stems) == count:
            break
    assert len(stems) == count
    return root / "images", root / "labels", stems
