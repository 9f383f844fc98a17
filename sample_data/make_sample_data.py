"""Regenerate napari-noisyseg's sample data from the real data sets.

Usage (from the repository root)::

    .venv/bin/python sample_data/make_sample_data.py [--data DIR] [--out DIR]

``--data`` is the folder holding ``bbbc039/`` and ``hippocampus/`` (default:
``../shared/data`` next to the repository). ``--out`` defaults to this script's
folder. Existing outputs are replaced; everything is deterministic (seed 0).

What it writes (see ATTRIBUTION.md for sources and licences)::

    bbbc039/images/<stem>.tif          uint16 image, losslessly re-compressed (zlib)
    bbbc039/labels_clean/<stem>.png    uint8 {0, 1}, from the data set's labels/
    bbbc039/labels_noisy/<stem>.png    uint8 {0, 1}, made by simulate_noise
    bbbc039/noise_mask/<stem>.tif      uint8 {0, 1}: 1 where noisy != clean
    bbbc039/simulate.json              the simulator's record (protocols, params, seed)
    hippocampus/images/<name>.nii.gz       byte-for-byte copy of the source volume
    hippocampus/labels_clean/<name>.nii.gz uint8 {0, 1, 2}, same affine
    hippocampus/labels_noisy/<name>.nii.gz uint8 {0, 1, 2}, made by simulate_noise
    hippocampus/noise_mask/<name>.nii.gz   uint8 {0, 1}, same affine
    hippocampus/simulate.json

``simulate.json`` lists the samples in the order they were simulated (``samples``);
:mod:`napari_noisyseg._sample_data` stacks them in that order.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # run from a source checkout without installing

from napari_noisyseg.core.io import (  # noqa: E402
    atomic_write_text,
    read_array,
    read_labels,
    write_array,
    write_labels,
)
from napari_noisyseg.core.noise import simulate_noise  # noqa: E402

# In stack order. Three images with nuclei (dense, medium, sparse and dim) and
# one of the data set's two images without any nucleus, last, as the real edge case.
BBBC_STEMS = [
    "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB",
    "IXMtest_H07_s2_w1D8F30687-16A2-4A0D-BDD5-377257089055",
    "IXMtest_C02_s4_w1661FF37C-AB9B-4038-BDF3-D21DFD2811BE",
    "IXMtest_F13_s7_w13C1B1D8C-293E-454F-B0FD-6C2C3F9F5173",  # no nuclei at all
]
# Two of the smallest volumes, both classes present.
HIPPO_NAMES = ["hippocampus_165", "hippocampus_148"]

SEED = 0
BBBC_NOISE = dict(
    protocol=["erode_dilate", "missing", "spurious"],
    fraction=1.0,
    seed=SEED,
    radius=(2, 5),  # erode_dilate
    p=0.2,  # missing and spurious
)
HIPPO_NOISE = dict(protocol="erode_dilate", fraction=1.0, seed=SEED, per_slice=True)


def _json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n", overwrite=True)


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def make_bbbc(data: Path, out: Path) -> dict:
    src = data / "bbbc039"
    out = out / "bbbc039"
    dirs = {k: _fresh(out / k) for k in ("images", "labels_clean", "labels_noisy", "noise_mask")}
    stems, clean = [], []
    for stem in BBBC_STEMS:
        image, _ = read_array(src / "images" / f"{stem}.tif")  # as stored: uint16
        labels, _ = read_labels(src / "labels" / f"{stem}.png")  # {0, 1}, empty allowed
        if image.shape != labels.shape:
            raise SystemExit(f"{stem}: image {image.shape} and labels {labels.shape} differ")
        write_array(dirs["images"] / f"{stem}.tif", image, overwrite=True)
        write_labels(dirs["labels_clean"] / f"{stem}.png", labels, overwrite=True)
        stems.append(stem)
        clean.append(labels)

    params = dict(BBBC_NOISE)
    run = simulate_noise(clean, params.pop("protocol"), **params)
    for stem, noisy, mask in zip(stems, run.noisy, run.noise_masks):
        write_labels(dirs["labels_noisy"] / f"{stem}.png", noisy, overwrite=True)
        write_array(dirs["noise_mask"] / f"{stem}.tif", mask.astype(np.uint8), overwrite=True)
    record = run.to_json_dict()
    record["samples"] = stems
    record["source"] = "BBBC039v1 (CC0 1.0); see ATTRIBUTION.md"
    _json(out / "simulate.json", record)
    return record


def make_hippocampus(data: Path, out: Path) -> dict:
    src = data / "hippocampus"
    out = out / "hippocampus"
    dirs = {k: _fresh(out / k) for k in ("images", "labels_clean", "labels_noisy", "noise_mask")}
    clean, metas = [], []
    for name in HIPPO_NAMES:
        image_path = src / "images" / f"{name}.nii.gz"
        image, image_meta = read_array(image_path)
        labels, meta = read_labels(src / "masks" / f"{name}.nii.gz")
        if image.shape != labels.shape:
            raise SystemExit(f"{name}: image {image.shape} and labels {labels.shape} differ")
        if not np.allclose(image_meta.affine, meta.affine, atol=1e-4):
            raise SystemExit(f"{name}: image and labels affines differ")
        # The image is copied unchanged (keeps its full header); labels are cast
        # to integers and written with the image's affine.
        shutil.copyfile(image_path, dirs["images"] / f"{name}.nii.gz")
        write_labels(dirs["labels_clean"] / f"{name}.nii.gz", labels, image_meta, overwrite=True)
        clean.append(labels)
        metas.append(image_meta)

    params = dict(HIPPO_NOISE)
    run = simulate_noise(clean, params.pop("protocol"), **params)
    for name, meta, noisy, mask in zip(HIPPO_NAMES, metas, run.noisy, run.noise_masks):
        write_labels(dirs["labels_noisy"] / f"{name}.nii.gz", noisy, meta, overwrite=True)
        write_array(dirs["noise_mask"] / f"{name}.nii.gz", mask.astype(np.uint8), meta,
                    overwrite=True)
    record = run.to_json_dict()
    record["samples"] = list(HIPPO_NAMES)
    record["source"] = (
        "Medical Segmentation Decathlon Task04_Hippocampus (CC-BY-SA 4.0); "
        "noisy labels and noise masks are derived works under CC-BY-SA 4.0; see ATTRIBUTION.md"
    )
    _json(out / "simulate.json", record)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder with bbbc039/ and hippocampus/ (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    for sub in ("bbbc039", "hippocampus"):
        if not (args.data / sub).is_dir():
            parser.error(f"{args.data / sub} does not exist; pass --data DIR")
    for make in (make_bbbc, make_hippocampus):
        record = make(args.data, args.out)
        fractions = ", ".join(f"{f:.3f}" for f in record["noise_fraction"])
        print(f"{make.__name__[5:]}: {len(record['samples'])} samples, "
              f"changed pixel fraction per sample: {fractions}")
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"sample data in {args.out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
