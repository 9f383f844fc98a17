"""The headless pipeline: the same steps the viewer runs, over folders of files.

The CLI (:mod:`napari_noisyseg.cli`) and the benchmarks call these functions;
so can a batch script or a server. No Qt, no napari.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .core import io
from .core.checkpoint import load_checkpoint, save_result, training_patch_size
from .core.dataset import build_dataset
from .core.proposals import find_regions, regions_to_csv
from .engine.device import numeric_path, resolve_device
from .engine.infer import predict_many
from .methods import TrainConfig, fit


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


def _label_shape(image: np.ndarray, in_channels: int) -> tuple:
    """Spatial shape of an image: channels-last colour only when the model takes colour."""
    if in_channels > 1 and image.ndim >= 3 and image.shape[-1] in (3, 4):
        return image.shape[:-1]
    return image.shape


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


# ----------------------------------------------------------------------------- simulate


def simulate_folder(labels_dir, protocol, out_dir, fraction=1.0, severity=1.0, seed=0,
                    per_slice=False, overwrite=False, images_dir=None, **params) -> dict:
    """Corrupt every label file of a folder; write noisy labels, true noise masks and parameters.

    Writes ``out/labels/<stem><ext>`` (same format as the input),
    ``out/noise_mask/<stem>.tif`` (uint8 0/1) and ``out/simulate.json``.

    ``images_dir`` (paired with the labels by file stem) is needed by the
    ``model_noise`` protocol only, whose weak network trains on and predicts
    from the images (:mod:`napari_noisyseg.core.model_noise`); other protocols ignore it.
    """
    from .core.noise import _parse_protocols, simulate_noise

    protocols = _parse_protocols(protocol)
    if "model_noise" in protocols:
        return _simulate_model_noise_folder(labels_dir, protocols, out_dir, fraction, severity, seed,
                                            per_slice, overwrite, images_dir, **params)
    files = io.list_files(labels_dir)
    if not files:
        raise io.InputError(f"{labels_dir}: no supported label files")
    out = ensure_new_dir(out_dir, overwrite)
    clean, metas = [], []
    for path in files:
        labels, meta = io.read_labels(path)
        clean.append(labels)
        metas.append(meta)
    run = simulate_noise(clean, protocol, fraction=fraction, severity=severity, seed=seed,
                         per_slice=per_slice, **params)
    return _write_simulation(out, files, metas, run, labels_dir, overwrite)


def _simulate_model_noise_folder(labels_dir, protocols, out_dir, fraction, severity, seed, per_slice,
                                 overwrite, images_dir, **params) -> dict:
    """The ``model_noise`` branch of :func:`simulate_folder`."""
    from .core.model_noise import resolve_model_noise_params, simulate_model_noise

    if protocols != ["model_noise"]:
        raise ValueError("model_noise cannot be combined with other protocols in one run; "
                         "simulate twice (the second run on the first run's labels)")
    if images_dir is None:
        raise io.InputError("the model_noise protocol needs the images: pass --images DIR "
                            "(image files paired with the label files by name)")
    if per_slice:
        raise ValueError("--per-slice does not apply to model_noise (3D volumes are already "
                         "trained and predicted slice by slice)")
    resolve_model_noise_params(severity, **params)  # refuse unknown parameters before any work
    loaded = load_pairs(images_dir, labels_dir)
    out = ensure_new_dir(out_dir, overwrite)
    run = simulate_model_noise(loaded.images, loaded.labels, fraction=fraction, severity=severity,
                               seed=seed, names=loaded.names, **params)
    files = [Path(meta.path) for meta in loaded.label_metas]
    summary = _write_simulation(out, files, loaded.label_metas, run, labels_dir, overwrite, write_json=False)
    summary["images"] = str(Path(images_dir).resolve())
    io.atomic_write_text(out / "simulate.json", json.dumps(summary, indent=2), overwrite=overwrite)
    return summary


def _write_simulation(out, files, metas, run, labels_dir, overwrite, write_json=True) -> dict:
    """Write a :class:`~napari_noisyseg.core.noise.NoiseRun` in the ``simulate`` layout."""
    stems = []
    for path, meta, noisy, mask in zip(files, metas, run.noisy, run.noise_masks):
        stem, ext = io.split_stem(path)
        stems.append(stem)
        io.write_labels(out / "labels" / f"{stem}{ext}", noisy, meta, overwrite=overwrite)
        io.write_array(out / "noise_mask" / f"{stem}.tif", mask.astype(np.uint8), overwrite=overwrite)
    summary = run.to_json_dict()
    summary["files"] = stems
    summary["source"] = str(Path(labels_dir).resolve())
    summary["package_version"] = __version__
    if write_json:
        io.atomic_write_text(out / "simulate.json", json.dumps(summary, indent=2), overwrite=overwrite)
    return summary


# ----------------------------------------------------------------------------- train


def train_pairs(loaded: LoadedPairs, config: TrainConfig, events=None, mode: str = "auto"):
    """Build the dataset from loaded pairs and run ``config.method``. Returns (dataset, result)."""
    dataset = build_dataset(loaded.images, loaded.labels, loaded.names, modes=mode)
    return dataset, fit(dataset, config, events)


def write_run(out_dir, loaded: LoadedPairs, dataset, result, overwrite=False, mode="auto") -> dict:
    """Write a training run: model, history, per-source noise and corrected labels, proposals.

    Layout: ``model.safetensors``, ``history.json``, ``noise/<stem>.tif`` (float32 in [0, 1],
    the label's shape), ``corrected/<stem>.tif`` (integer labels), ``proposals.csv``.
    """
    out = ensure_new_dir(out_dir, overwrite)
    save_result(out / "model.safetensors", result, overwrite=overwrite,
                extra={"mode": mode, "names": loaded.names, "intensity_floor": dataset.intensity_floor})
    noise_maps = dataset.reassemble(result.noise)
    corrected_maps = dataset.reassemble(result.corrected)
    regions, next_id = [], 1
    for name, given, noise, corrected in zip(loaded.names, loaded.labels, noise_maps, corrected_maps):
        io.write_float_map(out / "noise" / f"{name}.tif", noise, overwrite=overwrite)
        io.write_labels(out / "corrected" / f"{name}.tif", corrected, overwrite=overwrite)
        _, source_regions = find_regions(given, corrected, noise, source=name, start_id=next_id)
        regions += source_regions
        next_id += len(source_regions)
    io.atomic_write_text(out / "proposals.csv", regions_to_csv(regions), overwrite=overwrite)
    reliability = {
        dataset.samples[i].name: float(r) for i, r in enumerate(result.sample_reliability)
    }
    history = {
        "method": result.method,
        "package_version": __version__,
        "config": result.config.to_dict(),
        "stopped": result.stopped,
        "device_note": result.device_note,
        "history": result.history,
        "sample_reliability": reliability,
        "n_proposals": len(regions),
    }
    io.atomic_write_text(out / "history.json", json.dumps(history, indent=2, default=_json_default),
                         overwrite=overwrite)
    return history


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ----------------------------------------------------------------------------- predict


def predict_images(model_path, loaded: LoadedPairs, device="auto", precision="auto") -> list:
    """Segment images with a saved model; one integer label array per image."""
    checkpoint = load_checkpoint(Path(model_path) / "model.safetensors" if Path(model_path).is_dir() else model_path)
    mode = checkpoint.extra.get("mode", "auto")
    placeholders = [np.zeros(_label_shape(image, checkpoint.in_channels), np.int64) for image in loaded.images]
    dataset = build_dataset(loaded.images, placeholders, loaded.names, modes=mode, n_classes=checkpoint.n_classes,
                            intensity_floor=checkpoint.extra.get("intensity_floor"))
    if dataset.in_channels != checkpoint.in_channels:
        raise io.InputError(
            f"the model expects {checkpoint.in_channels}-channel images, these have {dataset.in_channels}"
        )
    torch_device, _ = resolve_device(device)
    path = numeric_path(torch_device, precision)
    model = checkpoint.model.to(torch_device, memory_format=path.memory_format(4))
    multiple = 2 ** model.depth
    probabilities = predict_many(model, [s.image for s in dataset.samples], path, multiple=multiple,
                                 min_size=training_patch_size(checkpoint))
    return dataset.reassemble([p.argmax(0).astype(np.int32) for p in probabilities])


# ----------------------------------------------------------------------------- evaluate


def evaluate_folders(pred_dir, truth_dir, noise_dir=None, noise_truth_dir=None) -> dict:
    """Segmentation metrics of predictions against truth (paired by stem), and
    noise-detection metrics of noise maps against true noise masks when given."""
    from .core import metrics

    pairs = io.pair_files(pred_dir, truth_dir)
    preds, truths, spacing = [], [], None
    for _, pred_path, truth_path in pairs:
        pred, _ = io.read_labels(pred_path)
        truth, meta = io.read_labels(truth_path)
        if pred.shape != truth.shape:
            raise io.InputError(f"{pred_path}: shape {pred.shape} differs from {truth_path} {truth.shape}")
        preds.append(pred)
        truths.append(truth)
        spacing = spacing or meta.spacing
    n_classes = int(max(max(p.max(initial=0) for p in preds), max(t.max(initial=0) for t in truths))) + 1
    report = {"n_images": len(pairs), "segmentation": metrics.evaluate_segmentation(preds, truths, n_classes, spacing)}
    if noise_dir and noise_truth_dir:
        noise_pairs = io.pair_files(noise_dir, noise_truth_dir)
        scores, truth_masks = [], []
        for _, noise_path, mask_path in noise_pairs:
            noise, _ = io.read_array(noise_path)
            mask, _ = io.read_array(mask_path)
            if noise.shape != mask.shape:
                raise io.InputError(f"{noise_path}: shape {noise.shape} differs from {mask_path} {mask.shape}")
            scores.append(np.asarray(noise, np.float32).ravel())
            truth_masks.append(np.asarray(mask).ravel() > 0)
        report["noise_detection"] = metrics.to_json_safe(
            metrics.noise_detection_scores(np.concatenate(scores), np.concatenate(truth_masks))
        )
    return metrics.to_json_safe(report)


def timed(function, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start
