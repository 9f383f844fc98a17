"""The ``model_noise`` protocol: labels taken from a weak model's predictions (METHODS.md §8).

Morphological protocols corrupt every object the same way; the errors of a
real, briefly trained network are *pixel-dependent*: they follow low contrast,
faint or unusual objects, touching boundaries and imaging artefacts. CLCS
(METHODS.md §6) evaluates on such noise. This module makes it:

1. ``round(α·N)`` samples are chosen exactly as :func:`~napari_noisyseg.core.noise.simulate_noise`
   chooses them (same seed → same samples).
2. A small U-Net (width 8, depth 3 by default) is trained with the baseline
   method (CE + Dice, :mod:`napari_noisyseg.methods.baseline`) on the *clean*
   labels of ``n_train_images`` images (default 2) for a short budget of
   optimisation steps: ``steps = max(1, round(20 / S))`` at severity S, so a
   higher severity means less training and more noise. An explicit ``steps``
   or ``epochs`` wins over the severity.
3. The chosen samples' labels are replaced by the network's argmax
   predictions (sliding-window inference on whole images; 3D volumes are
   trained and predicted slice by slice).

Choices (ours), documented because the paper leaves them open:

* **Which images train the weak model.** Images *not* chosen for corruption
  and with some foreground come first, so the corrupted labels are the model's
  errors on images it never saw; when there are not enough of them (α = 1),
  chosen images with foreground, then any image, fill up. The pick is seeded
  (``SeedSequence([seed, 1])``) and recorded.
* **Budget in steps, not epochs.** An epoch's length depends on the image
  sizes; a step count means the same amount of learning on any data set. 20
  steps of batch 4 × 128² on BBBC039 nuclei gives a Dice of about 0.85–0.95
  against the clean labels (errors along boundaries, missed faint nuclei and
  false positives on empty, noisy images); about 12 steps or fewer usually
  predicts no foreground at all (the batch-norm statistics have not settled).
  Harder data (MRI) is much noisier at the same budget.
* **Reproducibility over speed.** Default ``device="cpu"`` and
  ``precision="fp32"``: the same seed on the same machine gives identical
  noisy labels, and machines differ by at most a few pixels. Pass
  ``device="auto"`` / ``precision="auto"`` for speed on large data.

The noise registry of :mod:`napari_noisyseg.core.noise` holds protocols that
see labels only; ``model_noise`` also needs the images, so the registry keeps a
*stub* under that name (so that ``noisyseg simulate --help`` and
:func:`~napari_noisyseg.core.noise.describe_protocols` list it): calling it
through :func:`~napari_noisyseg.core.noise.simulate_noise` raises a
``ValueError`` that points here. Use :func:`simulate_model_noise` or
``noisyseg simulate --noise model_noise --images DIR --labels DIR --out DIR``.

Importing this module is cheap: torch and the engine are imported on first use.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .noise import NoiseRun, _check_severity, _jsonable, _n_chosen, register_protocol

NAME = "model_noise"

#: Training steps at severity 1 (the strong end); ``steps = max(1, round(STEPS_AT_S1 / S))``.
STEPS_AT_S1 = 20

#: Parameters of :func:`simulate_model_noise` besides the shared knobs (``--param KEY=VALUE``).
DEFAULTS: dict[str, Any] = {
    "n_train_images": 2,
    "steps": None,
    "epochs": None,
    "width": 8,
    "depth": 3,
    "patch_size": 128,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "device": "cpu",
    "precision": "fp32",
    "mode": "auto",
}

DESCRIPTION = (
    "labels replaced by a weak U-Net's predictions (pixel-dependent noise): trained "
    "round(20/S) steps on n_train_images=2 images; needs the images: --images DIR"
)

_NEEDS_IMAGES = (
    "the model_noise protocol trains a network on the images, so it needs them: on the "
    "command line pass --images DIR (noisyseg simulate --noise model_noise --images DIR "
    "--labels DIR --out DIR); in Python call "
    "napari_noisyseg.core.model_noise.simulate_model_noise(images, labels, ...). "
    "It cannot be combined with other protocols in one run."
)


def _needs_images(labels, rng, severity, **params):
    """Labels replaced by a weak model's predictions; needs the images (see simulate_model_noise)."""
    raise ValueError(_NEEDS_IMAGES)


def _refuse_without_images(severity: float, **params) -> dict:
    raise ValueError(_NEEDS_IMAGES)


# A stub, so the protocol is listed with the others; replace=True keeps a module
# reload harmless.
register_protocol(
    NAME, _needs_images, resolve_params=_refuse_without_images, description=DESCRIPTION, replace=True
)


def resolve_model_noise_params(severity: float = 1.0, **params: Any) -> dict:
    """Every parameter :func:`simulate_model_noise` will use, made explicit.

    Parameters
    ----------
    severity : float
        S > 0; sets ``steps = max(1, round(STEPS_AT_S1 / S))`` unless ``steps``
        or ``epochs`` is given.
    **params
        Overrides of :data:`DEFAULTS`; unknown names are refused.

    Returns
    -------
    dict
        JSON-friendly parameters (``steps`` is None when ``epochs`` is given).
    """
    _check_severity(severity)
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"protocol 'model_noise' has no parameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(DEFAULTS))}"
        )
    resolved = {**DEFAULTS, **params}
    for key in ("n_train_images", "width", "depth", "patch_size", "batch_size"):
        value = resolved[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"model_noise: {key} must be a positive integer, got {value!r}")
        resolved[key] = int(value)
    for key in ("steps", "epochs"):
        value = resolved[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"model_noise: {key} must be a positive integer or None, got {value!r}")
    if resolved["epochs"] is not None and resolved["steps"] is not None:
        raise ValueError("model_noise: give steps or epochs, not both")
    if resolved["epochs"] is None and resolved["steps"] is None:
        resolved["steps"] = max(1, int(round(STEPS_AT_S1 / float(severity))))
    if not float(resolved["learning_rate"]) > 0:
        raise ValueError(f"model_noise: learning_rate must be > 0, got {resolved['learning_rate']!r}")
    resolved["learning_rate"] = float(resolved["learning_rate"])
    return _jsonable(resolved)


def _choose_training_sources(labels: list, corrupted: np.ndarray, count: int, seed: int) -> list[int]:
    """Indices of the sources the weak model trains on (see the module docstring)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    has_foreground = np.array([bool(np.any(lab)) for lab in labels])
    order = rng.permutation(len(labels))
    tiers = [
        [i for i in order if not corrupted[i] and has_foreground[i]],
        [i for i in order if corrupted[i] and has_foreground[i]],
        [i for i in order if not has_foreground[i]],
    ]
    ranked = [int(i) for tier in tiers for i in tier]
    return sorted(ranked[: min(count, len(labels))])


def _epochs_for_steps(dataset, resolved: dict) -> int:
    """Epochs that hold at least ``resolved['steps']`` optimisation steps."""
    from .patches import effective_patch_size, patches_per_sample

    shapes = [sample.shape for sample in dataset.samples]
    size = effective_patch_size(shapes, resolved["patch_size"], 2 ** resolved["depth"])
    per_epoch = math.ceil(sum(patches_per_sample(shape, size) for shape in shapes) / resolved["batch_size"])
    return max(1, math.ceil(resolved["steps"] / per_epoch))


def _train_weak_model(dataset, resolved: dict, seed: int):
    """Train the weak U-Net with the baseline method; returns (model, CurationResult)."""
    from ..engine.events import Progress, StepEvent
    from ..methods import TrainConfig, baseline

    steps = resolved["steps"]
    epochs = resolved["epochs"] if steps is None else _epochs_for_steps(dataset, resolved)
    config = TrainConfig(
        method="baseline", epochs=epochs, device=resolved["device"], precision=resolved["precision"],
        seed=seed, patch_size=resolved["patch_size"], batch_size=resolved["batch_size"],
        learning_rate=resolved["learning_rate"], width=resolved["width"], depth=resolved["depth"],
    )
    progress = Progress()

    def stop_after_budget(event) -> None:
        if steps is not None and isinstance(event, StepEvent) and event.step >= steps:
            progress.request_stop()

    progress.callback = stop_after_budget
    result = baseline.fit(dataset, config, progress)
    return result.models[result.final_model], result


def _predict_sources(model, dataset, sources: list[int], resolved: dict) -> dict[int, np.ndarray]:
    """Argmax labels of the given sources (their original shape), int64."""
    from ..engine.device import numeric_path, resolve_device
    from ..engine.infer import predict_many

    device, _ = resolve_device(resolved["device"])
    path = numeric_path(device, resolved["precision"])
    model = model.to(device, memory_format=path.memory_format(4))
    indices = [i for s in sources for i in dataset.sources[s].sample_indices]
    probabilities = predict_many(
        model, [dataset.samples[i].image for i in indices], path,
        tile=max(512, resolved["patch_size"]), multiple=2 ** resolved["depth"], min_size=resolved["patch_size"],
    )
    by_sample = {i: p.argmax(0).astype(np.int64) for i, p in zip(indices, probabilities)}
    out = {}
    for s in sources:
        parts = [by_sample[i] for i in dataset.sources[s].sample_indices]
        out[s] = parts[0] if dataset.sources[s].mode == "2d" else np.stack(parts, axis=0)
    return out


def simulate_model_noise(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    fraction: float = 1.0,
    severity: float = 1.0,
    seed: int = 0,
    *,
    names: Sequence[str] | None = None,
    **params: Any,
) -> NoiseRun:
    """Replace the labels of a fraction of samples by a weak model's predictions.

    Parameters
    ----------
    images : list of ndarray
        One per label array: (H, W), (D, H, W) or channels-last colour
        (..., 3|4), any real dtype (normalised like training data).
    labels : list of ndarray of int
        Clean labels (H, W) or (D, H, W), 0 = background; not modified.
    fraction : float
        α in [0, 1]: exactly ``round(α·N)`` samples (half up) are corrupted, the
        same ones :func:`~napari_noisyseg.core.noise.simulate_noise` would pick
        with this seed.
    severity : float
        S > 0: the weak model trains ``max(1, round(20 / S))`` steps.
    seed : int
        Non-negative; seeds the choice of samples, of training images and the training.
    names : list of str, optional
        Names used in messages and recorded in the parameters.
    **params
        See :data:`DEFAULTS`: ``n_train_images`` (2), ``steps`` (from S) or
        ``epochs``, ``width`` (8), ``depth`` (3), ``patch_size`` (128),
        ``batch_size`` (4), ``learning_rate`` (1e-3), ``device`` ("cpu"),
        ``precision`` ("fp32"), ``mode`` ("auto": 3D labels are volumes trained
        slice-wise; "stack" normalises each slice on its own).

    Returns
    -------
    NoiseRun
        ``noisy`` (same shapes and dtypes as ``labels``; copies where not
        corrupted), ``noise_masks`` (noisy != clean), ``corrupted`` and
        ``params`` (everything needed to reproduce the run, including the
        training images and the weak model's final training loss).
    """
    from .. import __version__
    from .dataset import build_dataset
    from .io import validate_pair

    if isinstance(labels, np.ndarray) or isinstance(images, np.ndarray):
        raise TypeError("simulate_model_noise takes lists of arrays; wrap single arrays as [array]")
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label arrays")
    if not labels:
        raise ValueError("model_noise: no image/label pairs given")
    names = [f"sample_{i}" for i in range(len(labels))] if names is None else [str(n) for n in names]
    if len(names) != len(labels):
        raise ValueError(f"{len(names)} names for {len(labels)} label arrays")
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    resolved = resolve_model_noise_params(severity, **params)
    checked = [
        validate_pair(image, label, f"image {name}", f"labels {name}", allow_full=True)
        for image, label, name in zip(images, labels, names)
    ]

    n = len(labels)
    chosen = np.sort(
        np.random.default_rng(np.random.SeedSequence(seed)).choice(n, _n_chosen(fraction, n), replace=False)
    )
    corrupted = np.zeros(n, bool)
    corrupted[chosen] = True

    clean = [np.asarray(label) for label in labels]
    train_sources: list[int] = []
    training: dict = {}
    predicted: dict[int, np.ndarray] = {}
    if chosen.size:
        dataset = build_dataset(
            [image for image, _ in checked], [label for _, label in checked], names, modes=resolved["mode"]
        )
        train_sources = _choose_training_sources(clean, corrupted, resolved["n_train_images"], seed)
        train_samples = [i for s in train_sources for i in dataset.sources[s].sample_indices]
        model, result = _train_weak_model(dataset.subset(train_samples), resolved, seed)
        predicted = _predict_sources(model, dataset, [int(i) for i in chosen], resolved)
        losses = result.history.get("loss", [])
        training = {
            "steps_done": int(result.history.get("steps", 0)),
            "epochs_done": len(result.history.get("epoch", [])),
            "final_loss": float(losses[-1]) if losses else None,
            "numeric_path": result.history.get("device"),
            "n_classes": int(dataset.n_classes),
        }

    noisy = []
    for i, label in enumerate(clean):
        noisy.append(predicted[i].astype(label.dtype) if corrupted[i] else label.copy())

    run_params = {
        "protocols": [NAME],
        "steps": [{"protocol": NAME, "params": resolved}],
        "fraction": fraction,
        "severity": float(severity),
        "seed": seed,
        "per_slice": False,
        "n_samples": n,
        "corrupted_indices": chosen.tolist(),
        "train_indices": train_sources,
        "train_names": [names[i] for i in train_sources],
        "training": training,
        "version": __version__,
    }
    return NoiseRun(
        noisy=noisy,
        noise_masks=[a != b for a, b in zip(noisy, clean)],
        corrupted=corrupted.tolist(),
        params=_jsonable(run_params),
    )
