"""What every method takes and returns (METHODS.md §0)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..core import metrics


@dataclass
class TrainConfig:
    """Settings shared by every method; ``params`` holds the method's own.

    Attributes
    ----------
    method : str
        Registry name (``noisyseg methods`` lists them).
    epochs : int or None
        Epoch budget. Ignored when ``minutes`` is set.
    minutes : float or None
        Wall-time budget; the number of epochs is planned from the speed of the
        last epochs, re-estimated at the end of each, and training also stops
        when the time is up. At least 15 % of it is kept for the final
        predictions; more (up to half) once a timed prediction shows that the
        method's closing passes need it (Distill's Monte-Carlo maps).
    device : str
        ``auto`` (cuda → mps → cpu), ``cuda``, ``mps`` or ``cpu``.
    precision : str
        ``auto`` (the fastest correct path for the device), ``fp32``, ``bf16``, ``fp16``.
    seed : int
        Same seed, same device → same result.
    patch_size, batch_size : int
        Square training patches; samples smaller than a patch are padded.
    learning_rate, weight_decay : float
        AdamW's.
    lr_schedule : {"constant", "cosine"}
        ``"constant"`` (default): ``learning_rate`` throughout. ``"cosine"``: each
        optimiser's rate falls from ``learning_rate`` to 0 along a half cosine over
        its own training phase (the whole run, or a method's stage), step by step.
    width, depth, dropout : U-Net size (see :class:`napari_noisyseg.engine.unet.UNet`).
    preview_every : int
        Emit a :class:`PreviewEvent` every this many steps (0 = never).
    preview_samples : tuple of int
        Sample indices the previews cover.
    params : dict
        Method-specific settings, merged over the method's ``DEFAULTS``.
    """

    method: str = "baseline"
    epochs: int | None = 30
    minutes: float | None = None
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    patch_size: int = 256
    batch_size: int = 8
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 1e-4
    width: int = 16
    depth: int = 4
    dropout: float = 0.0
    augment: bool = True
    preview_every: int = 0
    preview_samples: tuple = (0,)
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["preview_samples"] = list(self.preview_samples)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown training settings: {sorted(unknown)}")
        data = dict(data)
        if "preview_samples" in data:
            data["preview_samples"] = tuple(data["preview_samples"])
        return cls(**data)

    def with_params(self, defaults: dict) -> dict:
        """The method's parameters: ``defaults`` overridden by ``self.params`` (unknown keys refused)."""
        unknown = set(self.params) - set(defaults)
        if unknown:
            raise ValueError(
                f"Unknown parameters for method {self.method!r}: {sorted(unknown)}; "
                f"known: {sorted(defaults)}"
            )
        return {**defaults, **self.params}


@dataclass
class CurationResult:
    """The output of every method, per sample of the dataset.

    Attributes
    ----------
    method : str
    probabilities : list of ndarray, float32 (K, H, W)
        Class probabilities of the final model(s).
    noise : list of ndarray, float32 (H, W)
        Likelihood in [0, 1] that the given label is wrong (0 on trusted pixels).
    corrected : list of ndarray, int64 (H, W)
        Proposed labels; equal to the given labels where no change is proposed
        and on every trusted pixel.
    sample_reliability : ndarray, float64 (N,)
        One score per sample in [0, 1]; low = review first.
    history : dict
        Per-epoch curves (``epoch``, ``loss``, ``iou`` per class, method extras).
    models : dict of str -> torch.nn.Module
        Trained networks; ``final_model`` names the one that predicts.
    config : TrainConfig
    stopped : bool
        True when training was stopped early; the result is still usable.
    """

    method: str
    probabilities: list
    noise: list
    corrected: list
    sample_reliability: np.ndarray
    history: dict
    models: dict
    config: TrainConfig
    final_model: str = "model"
    stopped: bool = False
    n_classes: int = 2
    in_channels: int = 1
    device_note: str | None = None


def enforce_trust(dataset, noise: list, corrected: list) -> tuple[list, list]:
    """Trusted pixels are clean by definition: zero noise, original label kept.

    Also clips noise to [0, 1] and keeps ignored pixels' labels unchanged.
    """
    out_noise, out_corrected = [], []
    for sample, sample_noise, sample_corrected in zip(dataset.samples, noise, corrected):
        sample_noise = np.clip(np.nan_to_num(np.asarray(sample_noise, np.float32)), 0.0, 1.0)
        sample_corrected = np.array(sample_corrected, dtype=np.int64, copy=True)
        frozen = sample.trust | sample.ignore
        sample_noise[frozen] = 0.0
        sample_corrected[frozen] = sample.labels[frozen]
        out_noise.append(sample_noise)
        out_corrected.append(sample_corrected)
    return out_noise, out_corrected


def noise_from_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 − p(given label): float32 (H, W) from probabilities (K, H, W) and labels (H, W)."""
    given = np.take_along_axis(probabilities, labels[np.newaxis].clip(0, probabilities.shape[0] - 1), axis=0)[0]
    return (1.0 - given).astype(np.float32)


def reliability_from_noise(noise: np.ndarray, labels: np.ndarray, corrected: np.ndarray) -> float:
    """1 − mean noise over the pixels that matter (given or proposed foreground).

    Background far from any object is easy and would make every image look
    reliable, so it is left out; an image with no foreground at all uses every pixel.
    """
    region = (labels > 0) | (corrected > 0)
    values = noise[region] if region.any() else noise
    return float(1.0 - values.mean()) if values.size else 1.0


def pooled_valid(maps: list, dataset, subset=None) -> np.ndarray:
    """The non-ignored pixels of every map in ``subset`` (bool (N,), default all), as one (1, P) map."""
    chosen = range(len(maps)) if subset is None else np.flatnonzero(subset)
    pixels = [maps[i][~dataset.samples[i].ignore] for i in chosen]
    return (np.concatenate(pixels) if pixels else np.zeros(0, np.int64))[None]


def class_iou(predicted: list, dataset, subset=None) -> list:
    """Per-class IoU between predicted label maps and the given labels.

    Parameters
    ----------
    predicted : list of ndarray, int (H, W)
        One label map per sample of ``dataset``.
    dataset : NoisyDataset
    subset : array-like of bool (N,), optional
        Samples to pool over (default all); ignored pixels are left out.

    Returns
    -------
    list of K floats
        NaN where a class is neither given nor predicted.
    """
    labels = [sample.labels for sample in dataset.samples]
    return metrics.iou_per_class(pooled_valid(predicted, dataset, subset), pooled_valid(labels, dataset, subset),
                                 dataset.n_classes).tolist()


def class_recall(predicted: list, dataset) -> list:
    """Per class, the fraction of its given pixels that ``predicted`` gives it, pooled over the samples.

    Unlike IoU it does not fall when the network finds objects the labels miss.
    Ignored pixels are left out. Returns K floats (NaN where a class is never given).
    """
    labels = [sample.labels for sample in dataset.samples]
    return metrics.recall_per_class(pooled_valid(predicted, dataset), pooled_valid(labels, dataset),
                                    dataset.n_classes).tolist()


def learnt_classes(scores: list, threshold: float) -> np.ndarray:
    """bool (K,): background always, a foreground class when its score (IoU or recall
    against the given labels) is ≥ ``threshold``.

    A network that has learnt a class reproduces most of its (mostly right) given
    labels; one that has not would call most of them noisy.
    """
    return np.array([True] + [bool(v >= threshold) for v in scores[1:]])


def learnt_class_ids(learnt: np.ndarray) -> list:
    """The learnt foreground classes of a bool (K,) ``learnt`` array, as ints (for histories)."""
    return [int(c) for c in np.flatnonzero(learnt[1:]) + 1]


def unlearnt_pixels(learnt: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels whose given or predicted class is not learnt (``learnt``: bool (K,)).

    Works on NumPy arrays and, unchanged, on torch tensors of any shape (a batch).
    """
    return ~learnt[labels] | ~learnt[predicted]


def given_class_areas(dataset) -> tuple[np.ndarray, list]:
    """Each class's area in the given labels, over every sample's labelled pixels.

    Returns
    -------
    areas : ndarray int64 (K,)
        Pixels of each class (ignored pixels left out).
    counted : list of ndarray bool, per sample
        The pixels counted (``~ignore``), for :func:`match_class_areas`'s ``masks``.
    """
    counted = [~s.ignore for s in dataset.samples]
    areas = sum(np.bincount(s.labels[m].ravel(), minlength=dataset.n_classes)[:dataset.n_classes]
                for s, m in zip(dataset.samples, counted))
    return np.asarray(areas, np.int64), counted


def match_class_areas(probabilities: list, targets: np.ndarray, masks: list | None = None,
                      iterations: int = 200, tolerance: float = 1e-3, area: str = "soft") -> tuple[list, np.ndarray]:
    """Reweight class probabilities so that each class's area matches ``targets``.

    ``area="soft"``: the expected area Σ p', the fixed point of ``w_k ← w_k · target_k /
    Σ p'_k`` with ``p' ∝ w · p`` (the prior adjustment of Saerens et al., 2002).
    ``area="argmax"``: the number of pixels whose argmax is ``k``, by the same update
    damped to ``(target_k / count_k)^½`` (the count is a step function of ``w``; the
    tolerance is then reached only up to the pixels one weight step moves). Summed
    over every sample.

    Parameters
    ----------
    probabilities : list of ndarray, float (K, ...)
        Per sample, class probabilities (summing to 1 over axis 0).
    targets : ndarray, float (K,)
        The wanted area (pixels) of each class over all samples.
    masks : list of ndarray of bool (...), optional
        Per sample, the pixels that count (default all).
    iterations : int
    tolerance : float
        Stop once every class's area is within this relative distance of its target.

    Returns
    -------
    reweighted : list of ndarray, float32 (K, ...)
    weights : ndarray, float64 (K,)
        The class weights applied (1 for a class whose predicted area is 0).
    """
    if area not in ("soft", "argmax"):
        raise ValueError(f"area must be 'soft' or 'argmax', got {area!r}")
    n_classes = probabilities[0].shape[0]
    targets = np.asarray(targets, np.float64)
    weights = np.ones(n_classes)

    def reweighted(p):
        q = p * weights.reshape((n_classes,) + (1,) * (p.ndim - 1))
        return q / np.maximum(q.sum(axis=0, keepdims=True), 1e-12)

    for _ in range(iterations):
        measured = np.zeros(n_classes)
        for i, p in enumerate(probabilities):
            q = reweighted(p)
            q = q[:, masks[i]] if masks is not None else q.reshape(n_classes, -1)
            measured += (q.sum(axis=1) if area == "soft"
                         else np.bincount(q.argmax(axis=0), minlength=n_classes)[:n_classes])
        ratio = np.where(measured > 0, targets / np.maximum(measured, 1e-12), 1.0)
        if np.all(np.abs(ratio - 1.0) < tolerance):
            break
        weights = weights * (ratio if area == "soft" else np.sqrt(ratio))
        weights = weights / weights.max()
    return [reweighted(p).astype(np.float32) for p in probabilities], weights


def result_from_run(run, probabilities, noise, corrected, models, final_model="model", reliability=None,
                    history_extra=None) -> CurationResult:
    """Package a finished :class:`~napari_noisyseg.engine.train.TrainingRun` as a :class:`CurationResult`.

    Enforces trust on ``noise``/``corrected`` and fills reliability from the noise
    when the method gives none.
    """
    dataset = run.dataset
    noise, corrected = enforce_trust(dataset, noise, corrected)
    if reliability is None:
        reliability = [reliability_from_noise(n, s.labels, c) for n, s, c in zip(noise, dataset.samples, corrected)]
    history = run.finish_history()
    history.update(history_extra or {})
    return CurationResult(
        method=run.config.method,
        probabilities=[np.asarray(p, np.float32) for p in probabilities],
        noise=noise,
        corrected=corrected,
        sample_reliability=np.clip(np.asarray(reliability, np.float64), 0.0, 1.0),
        history=history,
        models=models,
        config=run.config,
        final_model=final_model,
        stopped=run.stopped,
        n_classes=dataset.n_classes,
        in_channels=dataset.in_channels,
        device_note=run.device_note,
    )
