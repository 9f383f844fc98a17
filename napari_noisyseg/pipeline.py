"""The headless pipeline: the same steps the viewer runs, over folders of files.

The CLI (:mod:`napari_noisyseg.cli`) and the benchmarks call these functions;
so can a batch script or a server. No Qt, no napari. The steps that train nothing
live apart, without torch: reading folders (:mod:`napari_noisyseg.folders`),
simulating noise (:mod:`napari_noisyseg.simulation`) and scoring
(:mod:`napari_noisyseg.evaluation`).
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
from .engine.events import StateEvent, as_progress
from .engine.infer import predict_many
from .folders import LoadedPairs, ensure_new_dir
from .methods import CurationResult, TrainConfig, fit, refit_or_fit
from .methods.base import enforce_trust, noise_from_probabilities, reliability_from_noise


# ----------------------------------------------------------------------------- train


def train_pairs(loaded: LoadedPairs, config: TrainConfig, events=None, mode: str = "auto", trust=None,
                previous=None):
    """Build the dataset from loaded pairs and run ``config.method``. Returns (dataset, result).

    ``trust``: per pair a bool mask of pixels whose label is known right (decided
    regions, see :func:`napari_noisyseg.decisions.load_trust`), or None.
    ``previous``: a result to warm-start from (:func:`load_run_result`), used where the
    method has ``refit`` (:func:`napari_noisyseg.methods.refit_or_fit`).
    """
    dataset = build_dataset(loaded.images, loaded.labels, loaded.names, modes=mode, trust=trust)
    return dataset, refit_or_fit(dataset, config, previous, events)


def load_run_result(run_dir, method: str) -> CurationResult:
    """The models and history of a ``noisyseg train`` run of ``method``, to warm-start a retrain.

    Only ``models``, ``history`` and the network's metadata are filled (no per-sample maps).

    Raises
    ------
    InputError
        ``run_dir`` holds no run (``model.safetensors``, ``history.json``) or a run of
        another method.
    CheckpointError
        Its model file cannot be read.
    """
    run = Path(run_dir)
    missing = [part for part in ("model.safetensors", "history.json") if not (run / part).is_file()]
    if missing:
        raise io.InputError(f"{run}: not a run folder of `noisyseg train` (no {' or '.join(missing)})")
    checkpoint = load_checkpoint(run / "model.safetensors")
    if checkpoint.method != method:
        raise io.InputError(f"{run}: trained with method {checkpoint.method!r}, not {method!r}; "
                            f"a warm start needs the same method")
    try:
        history = json.loads((run / "history.json").read_text()).get("history") or {}
    except (OSError, ValueError, AttributeError) as error:
        raise io.InputError(f"{run / 'history.json'}: not a readable run history ({error})") from error
    try:
        config = TrainConfig.from_dict(checkpoint.config)
    except (TypeError, ValueError):
        config = TrainConfig(method=method)
    return CurationResult(method=method, probabilities=[], noise=[], corrected=[],
                          sample_reliability=np.zeros(0), history=history, models=checkpoint.models,
                          config=config, final_model=checkpoint.final_model, n_classes=checkpoint.n_classes,
                          in_channels=checkpoint.in_channels)


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
        # lets `noisyseg apply` refuse labels other than the ones trained on
        "labels_sha256": {name: io.labels_digest(labels) for name, labels in zip(loaded.names, loaded.labels)},
        "trusted_pixels": int(sum(int(np.count_nonzero(s.trust)) for s in dataset.samples)),
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


# ----------------------------------------------------------------------------- compare


@dataclass
class MethodRun:
    """One method of a comparison: its result and its wall time (training + prediction)."""

    method: str
    result: object
    seconds: float

    @property
    def stopped(self) -> bool:
        return bool(getattr(self.result, "stopped", False))


@dataclass
class Comparison:
    """Several methods trained with one budget on the same data (:func:`compare_methods`).

    Attributes
    ----------
    requested : list of str
        The methods asked for, in order; the first is the **reference**, whose
        proposals are reviewed (``proposals.csv``, the review table).
    runs : dict of str -> MethodRun
        The methods that ran, in training order (a stop leaves out the rest).
    noise, corrected : dict of str -> list of ndarray
        Per method that ran, its noise map / proposed labels per source (the labels' shapes).
    given : list of ndarray
        The labels the methods were trained on, per source.
    agreement : MethodAgreement or None
        Per-source agreement maps of the methods that ran (None when none ran).
    pairwise : dict
        :func:`~napari_noisyseg.core.agreement.pairwise_agreement` of the methods that ran.
    threshold : float
        Noise at or above it counts as flagged.
    config : dict
        The shared settings (budget, seed, network), the same for every method.
    stopped : bool
        A stop was requested: the last run may be partial, later methods did not run.
    """

    requested: list
    runs: dict
    noise: dict
    corrected: dict
    given: list
    agreement: object
    pairwise: dict
    threshold: float
    config: dict
    stopped: bool = False

    @property
    def methods(self) -> list:
        """The methods that ran, in order."""
        return list(self.runs)

    @property
    def not_run(self) -> list:
        return [m for m in self.requested if m not in self.runs]

    @property
    def reference(self) -> str | None:
        """The method whose proposals are reviewed: the first one that ran."""
        return next(iter(self.runs), None)

    @property
    def reference_result(self):
        return self.runs[self.reference].result if self.runs else None

    def summary(self) -> dict:
        """Per method: ``wall_s``, ``mean_noise``, ``flagged_fraction`` (noise ≥ threshold, over all
        pixels of all sources), ``dice_with_others`` (mean Dice of its flagged mask with each
        other method's; None alone) and ``stopped``."""
        from .core.agreement import mean_agreement_with_others

        with_others = mean_agreement_with_others(self.pairwise, self.methods, "dice")
        out = {}
        for method, run in self.runs.items():
            maps = self.noise[method]
            n = sum(m.size for m in maps)
            out[method] = {
                "wall_s": round(float(run.seconds), 3),
                "mean_noise": float(sum(float(np.nansum(m, dtype=np.float64)) for m in maps) / max(n, 1)),
                "flagged_fraction": float(sum(int(np.count_nonzero(m >= self.threshold)) for m in maps) / max(n, 1)),
                "dice_with_others": with_others[method],
                "stopped": run.stopped,
            }
        return out

    def pairwise_rows(self) -> list:
        """The pairwise table as rows ``{"a", "b", "dice", "iou", "spearman", "n_ranked"}``."""
        return [{"a": a, "b": b, **values} for (a, b), values in self.pairwise.items()]


def resolve_methods(methods) -> list:
    """Method names from a list or a comma-separated string, checked.

    Raises
    ------
    ValueError
        Fewer than two methods, a repeated one, or an unknown one (the message
        lists the known methods).
    """
    from .methods import REGISTRY

    if isinstance(methods, str):
        methods = methods.split(",")
    names = [str(m).strip() for m in methods if str(m).strip()]
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(sorted(REGISTRY))}")
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise ValueError(f"method{'s' if len(repeated) > 1 else ''} {', '.join(repeated)} given twice")
    if len(names) < 2:
        raise ValueError(f"a comparison needs at least two methods, got {names or 'none'}")
    return names


def split_method_params(params: dict, methods) -> dict:
    """Per-method parameters from ``{"KEY": v, "METHOD.KEY": v}``.

    ``METHOD.KEY`` goes to that method only; a plain ``KEY`` goes to every
    compared method that has such a parameter.

    Raises
    ------
    ValueError
        A prefix that is not a compared method, or a key no compared method knows.
    """
    from .methods import get_method

    defaults = {m: dict(getattr(get_method(m), "DEFAULTS", {}) or {}) for m in methods}
    out = {m: {} for m in methods}
    for key, value in (params or {}).items():
        if "." in key:
            method, name = key.split(".", 1)
            if method not in out:
                raise ValueError(f"parameter {key!r}: {method!r} is not one of the compared methods "
                                 f"({', '.join(methods)})")
            out[method][name] = value
            continue
        takers = [m for m in methods if key in defaults[m]]
        if not takers:
            raise ValueError(f"no compared method has a parameter {key!r}; use METHOD.KEY, or see the "
                             "methods' parameters: " + "; ".join(f"{m}: {', '.join(sorted(d)) or '-'}"
                                                                for m, d in defaults.items()))
        for m in takers:
            out[m][key] = value
    return out


def compare_methods(dataset, methods, config_kwargs: dict | None = None, events=None, params: dict | None = None,
                    threshold: float = 0.5) -> Comparison:
    """Train several methods, one after the other, with one budget on the same data.

    Every method gets the same :class:`~napari_noisyseg.methods.TrainConfig`
    settings (``config_kwargs``: the same epochs *or* minutes each, the same
    seed, network and device); only ``method`` and its own ``params`` differ.
    The noise maps are then compared (:mod:`napari_noisyseg.core.agreement`).

    Parameters
    ----------
    dataset : NoisyDataset
    methods : list of str or str
        At least two registered methods (comma-separated in a string); the
        first is the reference whose proposals are reviewed.
    config_kwargs : dict, optional
        TrainConfig fields except ``method`` and ``params``.
    events : Progress, callable or None
        Gets a ``StateEvent("comparing", ...)`` before each method, then that
        method's own events. A stop request ends the running method within a
        step (its result is kept) and skips the methods after it.
    params : dict of str -> dict, optional
        Per method, its own parameters (see :func:`split_method_params`).
    threshold : float
        Noise at or above it counts as flagged.

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        Bad method list, settings or parameters: checked for every method
        before any training starts.
    """
    from .core.agreement import MethodAgreement, _check_threshold, pairwise_agreement
    from .methods import get_method

    methods = resolve_methods(methods)
    threshold = _check_threshold(threshold)
    config_kwargs = dict(config_kwargs or {})
    for key in ("method", "params"):
        if key in config_kwargs:
            raise ValueError(f"config_kwargs may not set {key!r}: it differs per method")
    params = dict(params or {})
    stray = set(params) - set(methods)
    if stray:
        raise ValueError(f"parameters for methods that are not compared: {sorted(stray)}")
    configs = {}
    for method in methods:
        config = TrainConfig(method=method, params=dict(params.get(method, {})), **config_kwargs)
        config.with_params(getattr(get_method(method), "DEFAULTS", {}) or {})  # unknown parameters: refuse now
        configs[method] = config
    progress = as_progress(events)
    epochs = configs[methods[0]].epochs
    budget = (f"{config_kwargs['minutes']:g} min" if config_kwargs.get("minutes") is not None
              else f"{epochs} epoch{'s' if epochs != 1 else ''}")
    _warm_up_torch()  # the first method should not pay torch's one-off imports in its wall time
    runs: dict = {}
    for index, method in enumerate(methods, start=1):
        if progress.stop_requested:
            break
        progress.emit(StateEvent("comparing", f"Method {index}/{len(methods)}: {method} ({budget})."))
        start = time.perf_counter()
        result = fit(dataset, configs[method], progress)
        seconds = time.perf_counter() - start
        if result is None:  # pragma: no cover - methods return a result even when stopped
            break
        runs[method] = MethodRun(method, result, seconds)
        if result.stopped:
            break
    noise = {m: dataset.reassemble(run.result.noise) for m, run in runs.items()}
    corrected = {m: dataset.reassemble(run.result.corrected) for m, run in runs.items()}
    given = dataset.reassemble([s.labels for s in dataset.samples])
    agreement = MethodAgreement.from_noise(noise, threshold) if runs else None
    seed = int(config_kwargs.get("seed", 0) or 0)
    pairwise = pairwise_agreement(noise, threshold, seed=seed) if len(runs) > 1 else {}
    shared = configs[methods[0]].to_dict()
    shared.pop("method")
    shared.pop("params")
    return Comparison(
        requested=methods, runs=runs, noise=noise, corrected=corrected, given=given, agreement=agreement,
        pairwise=pairwise, threshold=threshold, config=shared,
        stopped=progress.stop_requested or any(r.stopped for r in runs.values()),
    )


def _warm_up_torch() -> None:
    """Build one optimiser: the first one a process builds imports ``torch._dynamo`` (seconds)."""
    try:
        import torch

        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    except Exception:  # noqa: BLE001 - only a warm-up
        pass


def write_comparison(out_dir, loaded: LoadedPairs, dataset, comparison: Comparison, overwrite: bool = False,
                     mode: str = "auto") -> dict:
    """Write a method comparison; return what ``comparison.json`` holds.

    Layout
    ------
    ``<method>/noise/<stem>.tif``
        float32 noise likelihood in [0, 1], the label's shape, per method that ran.
    ``<method>/corrected/<stem>.tif``
        Its proposed labels.
    ``<method>/history.json``
        Its training history and config.
    ``agreement/<stem>.tif``
        float32: per pixel, the fraction of methods whose noise is ≥ the threshold.
    ``proposals.csv``
        The proposals of the **reference** method (the first of ``methods``),
        the columns of ``noisyseg train`` plus ``agreement`` (mean of the
        agreement map over the region) and ``flagged_by`` (the methods whose
        mean noise over the region is ≥ the threshold, space-separated). A
        union of every method's proposals would list overlapping regions once
        per method; the reference's regions are one decision each, and the
        agreement says how far the other methods back them.
    ``comparison.json``
        Per method: wall seconds, mean noise, flagged fraction, number of
        proposals, mean Dice with the others (``dice_with_others``); the pairwise table (Dice, IoU of
        the flagged masks, Spearman of the maps); the shared settings.

    Raises
    ------
    ValueError
        No method ran (stopped before the first one started), or ``loaded`` is not
        what the comparison ran on.
    FileExistsError
        ``out_dir`` is not empty and ``overwrite`` is False.
    """
    from .core.agreement import region_agreement, region_flagged_by
    from .core.metrics import to_json_safe

    if not comparison.runs:
        raise ValueError("nothing to write: the comparison was stopped before any method ran")
    if len(dataset.sources) != len(loaded.names) or len(comparison.given) != len(loaded.names):
        raise ValueError(f"the comparison ran on {len(comparison.given)} sources, but {len(loaded.names)} "
                         "files were loaded")
    out = ensure_new_dir(out_dir, overwrite)
    n_proposals = {}
    for method, run in comparison.runs.items():
        folder = out / method
        count = 0
        for name, given, noise, corrected in zip(loaded.names, loaded.labels, comparison.noise[method],
                                                 comparison.corrected[method]):
            io.write_float_map(folder / "noise" / f"{name}.tif", noise, overwrite=overwrite)
            io.write_labels(folder / "corrected" / f"{name}.tif", corrected, overwrite=overwrite)
            count += len(find_regions(given, corrected, noise, source=name)[1])
        n_proposals[method] = count
        history = {
            "method": method, "package_version": __version__, "config": run.result.config.to_dict(),
            "stopped": run.stopped, "device_note": run.result.device_note, "wall_s": run.seconds,
            "history": run.result.history, "n_proposals": count,
        }
        io.atomic_write_text(folder / "history.json", json.dumps(history, indent=2, default=_json_default),
                             overwrite=overwrite)
    reference = comparison.reference
    regions, next_id = [], 1
    agreement_column, flagged_column = {}, {}
    for s, (name, given) in enumerate(zip(loaded.names, loaded.labels)):
        agreement = comparison.agreement.maps[s]
        io.write_float_map(out / "agreement" / f"{name}.tif", agreement, overwrite=overwrite)
        region_map, source_regions = find_regions(given, comparison.corrected[reference][s],
                                                  comparison.noise[reference][s], source=name, start_id=next_id)
        agreement_column.update(region_agreement(region_map, agreement))
        flags = region_flagged_by(region_map, {m: comparison.noise[m][s] for m in comparison.runs},
                                  comparison.threshold)
        flagged_column.update({rid: " ".join(methods) for rid, methods in flags.items()})
        regions += source_regions
        next_id += len(source_regions)
    io.atomic_write_text(out / "proposals.csv",
                         regions_to_csv(regions, {"agreement": agreement_column, "flagged_by": flagged_column}),
                         overwrite=overwrite)
    summary = comparison.summary()
    for method in summary:
        summary[method]["n_proposals"] = n_proposals[method]
    document = to_json_safe({
        "format": "napari-noisyseg-comparison",
        "version": 1,
        "package_version": __version__,
        "requested": comparison.requested,
        "methods": comparison.methods,
        "not_run": comparison.not_run,
        "reference": reference,
        "threshold": comparison.threshold,
        "stopped": comparison.stopped,
        "mode": mode,
        "config": comparison.config,
        "files": list(loaded.names),
        "per_method": summary,
        "pairwise": comparison.pairwise_rows(),
        "n_proposals": len(regions),
    })
    io.atomic_write_text(out / "comparison.json", json.dumps(document, indent=2), overwrite=overwrite)
    return document


# ----------------------------------------------------------------------------- predict


def _label_shape(image: np.ndarray, in_channels: int) -> tuple:
    """Spatial shape of an image: channels-last colour only when the model takes colour."""
    if in_channels > 1 and image.ndim >= 3 and image.shape[-1] in (3, 4):
        return image.shape[:-1]
    return image.shape


def _checkpoint_probabilities(checkpoint, dataset, torch_device, precision="auto") -> list:
    """The checkpoint's final model's class probabilities for every sample of ``dataset``
    (each ``(n_classes, *sample shape)``, float32) on ``torch_device``."""
    path = numeric_path(torch_device, precision)
    model = checkpoint.model.to(torch_device, memory_format=path.memory_format(4))
    return predict_many(model, [s.image for s in dataset.samples], path, multiple=2**model.depth,
                        min_size=training_patch_size(checkpoint))


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
    probabilities = _checkpoint_probabilities(checkpoint, dataset, resolve_device(device)[0], precision)
    return dataset.reassemble([p.argmax(0).astype(np.int32) for p in probabilities])


def _loaded_history(checkpoint) -> dict:
    """A loaded model's history: marked loaded, with what its method's retrain needs from the
    run that trained it (``refit_state``, where the checkpoint recorded one)."""
    state = checkpoint.extra.get("refit_state")
    return {"loaded": True, **({"refit_state": state} if isinstance(state, dict) else {})}


def predict_result(checkpoint, dataset, device: str = "auto", precision: str = "auto", events=None):
    """A :class:`~napari_noisyseg.methods.base.CurationResult` from a loaded checkpoint.

    The checkpoint's final model predicts every sample; noise = 1 − p(given
    label), corrected = argmax, as the baseline does. Trusted pixels are kept.

    Parameters
    ----------
    checkpoint : :class:`~napari_noisyseg.core.checkpoint.Checkpoint`
    dataset : NoisyDataset
    events : Progress, callable or None
        Gets a ``StateEvent("predicting")``; a stop request before prediction
        returns nothing (None).

    Raises
    ------
    ValueError
        The model does not fit the data (channels or classes).
    """
    progress = as_progress(events)
    if dataset.in_channels != checkpoint.in_channels:
        raise ValueError(
            f"the model expects {checkpoint.in_channels}-channel images, the image has {dataset.in_channels}"
        )
    if dataset.n_classes > checkpoint.n_classes:
        raise ValueError(
            f"the labels have classes up to {dataset.n_classes - 1} but the model predicts "
            f"{checkpoint.n_classes} classes (0..{checkpoint.n_classes - 1})"
        )
    torch_device, note = resolve_device(device)
    progress.emit(StateEvent("predicting", note or f"Predicting with the loaded {checkpoint.method} model."))
    if progress.stop_requested:
        return None
    probabilities = _checkpoint_probabilities(checkpoint, dataset, torch_device, precision)
    noise = [noise_from_probabilities(p, s.labels) for p, s in zip(probabilities, dataset.samples)]
    corrected = [p.argmax(0).astype(np.int64) for p in probabilities]
    noise, corrected = enforce_trust(dataset, noise, corrected)
    reliability = [reliability_from_noise(n, s.labels, c) for n, s, c in zip(noise, dataset.samples, corrected)]
    try:
        config = TrainConfig.from_dict(checkpoint.config)
    except (TypeError, ValueError):
        config = TrainConfig(method=checkpoint.method)
    progress.emit(StateEvent("done", "Prediction finished."))
    return CurationResult(
        method=checkpoint.method, probabilities=probabilities, noise=noise, corrected=corrected,
        sample_reliability=np.asarray(reliability, np.float64), history=_loaded_history(checkpoint),
        models=checkpoint.models, config=config, final_model=checkpoint.final_model,
        n_classes=checkpoint.n_classes, in_channels=checkpoint.in_channels, device_note=note,
    )
