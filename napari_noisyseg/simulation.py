"""``noisyseg simulate`` over folders: corrupt clean label files with a noise protocol and
write the noisy labels, the true noise masks and the parameters. No torch unless the
``model_noise`` protocol trains its weak network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import __version__
from .core import io
from .folders import ensure_new_dir, load_pairs


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
