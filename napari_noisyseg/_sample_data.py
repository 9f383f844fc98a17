"""npe2 sample data: real images with simulated annotation noise.

Each function returns napari ``LayerDataTuple``s, in this order:

1. the image (``"<name> image"``);
2. the clean labels (``"<name> clean (reference)"``, hidden) — the truth the
   noise was made from, for comparison only;
3. the noisy labels (``"<name> labels"``) — the annotation a person curates.
   Added last, so it is on top and is the selected layer after loading.

The files live in ``sample_data/`` at the repository root (see its
``ATTRIBUTION.md`` for sources and licences; the hippocampus files are
CC-BY-SA 4.0) and are made by ``sample_data/make_sample_data.py``. They ship with
the source checkout, not with the wheel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .core.io import read_image, read_labels

__all__ = ["sample_data_dir", "load_bbbc", "load_hippocampus", "nuclei_2d", "hippocampus_3d"]

LayerData = tuple  # (data, kwargs, layer_type)


def sample_data_dir() -> Path:
    """The repository's ``sample_data/`` folder.

    Raises
    ------
    FileNotFoundError
        When the package is not run from a source checkout (e.g. a wheel install).
    """
    folder = Path(__file__).resolve().parents[1] / "sample_data"
    if not (folder / "bbbc039").is_dir() or not (folder / "hippocampus").is_dir():
        raise FileNotFoundError(
            f"napari-noisyseg sample data not found at {folder}. The sample data ships "
            "with the source checkout (sample_data/ at the repository root), not with the "
            "installed wheel: clone the repository and install it with `pip install -e .` "
            "(or `make install`) to use the samples."
        )
    return folder


def _sample_names(folder: Path, extension: str) -> list[str]:
    """Sample names in the order they were simulated (simulate.json), else sorted."""
    record = folder / "simulate.json"
    if record.is_file():
        names = json.loads(record.read_text(encoding="utf-8")).get("samples")
        if names:
            return list(names)
    return sorted(p.name[: -len(extension)] for p in (folder / "images").glob(f"*{extension}"))


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"sample file {path} is missing; regenerate the sample data with "
            "`python sample_data/make_sample_data.py`"
        )
    return path


def load_bbbc() -> dict:
    """The BBBC039 samples as numpy arrays, stacked along a first sample axis.

    Returns
    -------
    dict
        ``image`` float32 (N, H, W); ``clean``, ``noisy`` int32 (N, H, W) in {0, 1};
        ``noise_mask`` bool (N, H, W); ``names`` list of N file stems.
    """
    folder = sample_data_dir() / "bbbc039"
    names = _sample_names(folder, ".tif")
    images, clean, noisy = [], [], []
    for name in names:
        images.append(read_image(_require(folder / "images" / f"{name}.tif"))[0])
        clean.append(read_labels(_require(folder / "labels_clean" / f"{name}.png"))[0])
        noisy.append(read_labels(_require(folder / "labels_noisy" / f"{name}.png"))[0])
    shapes = {a.shape for a in images + clean + noisy}
    if len(shapes) != 1:
        raise ValueError(
            f"BBBC039 sample files in {folder} do not all have the same shape: {sorted(shapes)}"
        )
    clean_stack, noisy_stack = np.stack(clean), np.stack(noisy)
    return {
        "image": np.stack(images),
        "clean": clean_stack,
        "noisy": noisy_stack,
        "noise_mask": noisy_stack != clean_stack,
        "names": names,
        "folder": folder,
    }


def load_hippocampus(index: int = 0) -> dict:
    """One hippocampus volume as numpy arrays, in the file's axis order.

    Parameters
    ----------
    index : int
        Which of the sample volumes (in ``simulate.json`` order).

    Returns
    -------
    dict
        ``image`` float32 (X, Y, Z); ``clean``, ``noisy`` int32 in {0, 1, 2};
        ``noise_mask`` bool; ``spacing`` tuple of 3 floats; ``affine`` (4, 4);
        ``name``; ``paths`` dict of the files read.
    """
    folder = sample_data_dir() / "hippocampus"
    name = _sample_names(folder, ".nii.gz")[index]
    paths = {
        kind: _require(folder / kind / f"{name}.nii.gz")
        for kind in ("images", "labels_clean", "labels_noisy")
    }
    image, meta = read_image(paths["images"])
    clean, _ = read_labels(paths["labels_clean"])
    noisy, _ = read_labels(paths["labels_noisy"])
    if not image.shape == clean.shape == noisy.shape:
        raise ValueError(
            f"hippocampus sample {name!r}: image {image.shape}, clean {clean.shape} and "
            f"noisy {noisy.shape} labels differ in shape"
        )
    return {
        "image": image,
        "clean": clean,
        "noisy": noisy,
        "noise_mask": noisy != clean,
        "spacing": tuple(meta.spacing) if meta.spacing else (1.0,) * image.ndim,
        "affine": meta.affine,
        "name": name,
        "paths": paths,
    }


def nuclei_2d() -> list[LayerData]:
    """BBBC039 nuclei: a (N, H, W) stack of 2D images (one sample per slice),
    with noisy labels to curate and the clean labels as a hidden reference."""
    s = load_bbbc()
    meta = {"sample_names": s["names"], "sample_axis": 0, "source": "BBBC039v1 (CC0 1.0)"}
    return [
        (s["image"], {"name": "nuclei image", "metadata": dict(meta)}, "image"),
        (
            s["clean"],
            {"name": "nuclei clean (reference)", "visible": False, "metadata": dict(meta)},
            "labels",
        ),
        (s["noisy"], {"name": "nuclei labels", "metadata": dict(meta)}, "labels"),
    ]


def hippocampus_3d() -> list[LayerData]:
    """One hippocampus MRI volume (0 background, 1 anterior, 2 posterior), with
    per-slice noisy labels to curate and the clean labels as a hidden reference.

    The volume is in the NIfTI file's own axis order (as the plugin's reader
    gives it); ``scale`` is the voxel spacing and ``metadata["affine"]`` the
    file's affine, so the writer saves NIfTI that lines up with the original.
    """
    s = load_hippocampus()
    source = "Medical Segmentation Decathlon Task04_Hippocampus (CC-BY-SA 4.0)"

    def meta(kind: str) -> dict:
        return {
            "affine": s["affine"],
            "source_path": str(s["paths"][kind]),
            "sample_names": [s["name"]],
            "source": source,
        }

    common = {"scale": s["spacing"]}
    return [
        (
            s["image"],
            # rgb=False: a volume whose last axis has 3 or 4 voxels is not colour.
            {"name": "hippocampus image", "metadata": meta("images"), "rgb": False, **common},
            "image",
        ),
        (
            s["clean"],
            {
                "name": "hippocampus clean (reference)",
                "visible": False,
                "metadata": meta("labels_clean"),
                **common,
            },
            "labels",
        ),
        (
            s["noisy"],
            {"name": "hippocampus labels", "metadata": meta("labels_noisy"), **common},
            "labels",
        ),
    ]
