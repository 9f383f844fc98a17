"""The dataset model every method trains on (METHODS.md §0).

A *source* is what the user gave: one 2D image, a 2D stack (each slice its own
sample) or a 3D volume (trained slice-wise by default). A *sample* is what a
network sees: an image (C, H, W) float32 normalised to 0..1 and its labels
(H, W) int64. ``trust`` marks pixels a person confirmed; ``ignore`` marks
pixels without a label. The given labels are copied, never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SOURCE_MODES = ("auto", "2d", "stack", "volume")


@dataclass
class Sample:
    """One training sample.

    Attributes
    ----------
    image : ndarray, float32, (C, H, W)
    labels : ndarray, int64, (H, W)
        The given (noisy) annotation; read-only.
    trust : ndarray of bool, (H, W)
    ignore : ndarray of bool, (H, W)
    source : int
        Index of the source this sample came from.
    position : tuple of int
        Slice index within the source (empty for 2D sources).
    name : str
    """

    image: np.ndarray
    labels: np.ndarray
    trust: np.ndarray
    ignore: np.ndarray
    source: int
    position: tuple
    name: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape


@dataclass
class Source:
    """What one input pair looked like, enough to put per-sample results back."""

    name: str
    mode: str
    labels_shape: tuple
    sample_indices: list[int] = field(default_factory=list)


@dataclass
class NoisyDataset:
    """Samples plus how to map results back to the user's arrays."""

    samples: list[Sample]
    sources: list[Source]
    n_classes: int
    in_channels: int
    intensity_floor: float = 0.0

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[np.ndarray]:
        return [sample.labels for sample in self.samples]

    def reassemble(self, per_sample: list[np.ndarray]) -> list[np.ndarray]:
        """Stack per-sample arrays (H, W[, ...]) back into one array per source."""
        out = []
        for source in self.sources:
            parts = [per_sample[i] for i in source.sample_indices]
            out.append(parts[0] if source.mode == "2d" else np.stack(parts, axis=0))
        return out

    def subset(self, indices) -> "NoisyDataset":
        """A dataset of some samples (sources keep only those samples)."""
        indices = list(indices)
        position = {old: new for new, old in enumerate(indices)}
        sources = []
        for source in self.sources:
            kept = [position[i] for i in source.sample_indices if i in position]
            if kept:
                sources.append(Source(source.name, source.mode, source.labels_shape, kept))
        samples = [self.samples[i] for i in indices]
        return NoisyDataset(samples, sources, self.n_classes, self.in_channels, self.intensity_floor)

    def with_trust(self, trust: list[np.ndarray]) -> "NoisyDataset":
        """A copy whose samples carry new per-sample trust masks (H, W) bool."""
        samples = [
            Sample(s.image, s.labels, np.asarray(t, bool), s.ignore, s.source, s.position, s.name)
            for s, t in zip(self.samples, trust)
        ]
        return NoisyDataset(samples, self.sources, self.n_classes, self.in_channels, self.intensity_floor)


def percentile_range(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """The (low, high) percentiles of ``image`` as floats."""
    lo, hi = np.percentile(np.asarray(image, dtype=np.float32), [low, high])
    return float(lo), float(hi)


def normalize_percentile(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, min_range: float = 0.0
) -> np.ndarray:
    """Map the [low, high] percentiles of ``image`` to [0, 1] and clip; float32.

    ``min_range`` is the smallest intensity span that is stretched to 0..1: an
    image with no objects (only background noise) would otherwise have its
    noise stretched to full contrast and look like foreground to a network.
    A constant image becomes all zeros rather than NaN.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = percentile_range(image, low, high)
    span = max(hi - lo, min_range)
    if not np.isfinite(lo) or not np.isfinite(span) or span < 1e-12:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / span, 0.0, 1.0).astype(np.float32)


def intensity_range_floor(images: list[np.ndarray], fraction: float = 0.25) -> float:
    """``fraction`` × the median percentile span of ``images`` (**ours**).

    Used as ``min_range`` so that a sample whose span is far below its
    dataset's typical span (an empty field of view) is not over-stretched.
    """
    spans = [np.subtract(*percentile_range(image)[::-1]) for image in images]
    return float(fraction * np.median(spans)) if spans else 0.0


def _channels_first(image: np.ndarray, labels_shape: tuple) -> np.ndarray:
    """Grey (*S) → (1, *S); RGB/RGBA channels-last (*S, C) → (C, *S)."""
    if image.shape == tuple(labels_shape):
        return image[np.newaxis]
    if image.shape[:-1] == tuple(labels_shape) and image.shape[-1] in (3, 4):
        return np.moveaxis(image[..., :3], -1, 0)
    raise ValueError(f"image shape {image.shape} does not match labels shape {labels_shape}")


def _mask_copy(mask, shape: tuple, what: str, name: str) -> np.ndarray:
    """A private bool copy of a caller's trust/ignore mask (all False when None)."""
    if mask is None:
        return np.zeros(shape, bool)
    mask = np.array(mask, dtype=bool, copy=True)
    if mask.shape != tuple(shape):
        raise ValueError(f"{name}: {what} mask shape {mask.shape} does not match labels shape {tuple(shape)}")
    return mask


def _infer_mode(labels: np.ndarray, mode: str) -> str:
    if mode not in SOURCE_MODES:
        raise ValueError(f"mode must be one of {SOURCE_MODES}, not {mode!r}")
    if labels.ndim == 2:
        if mode in ("stack", "volume"):
            raise ValueError(f"labels are 2D {labels.shape}; mode {mode!r} needs 3D labels")
        return "2d"
    if labels.ndim != 3:
        raise ValueError(f"labels must be 2D or 3D, got shape {labels.shape}")
    return "volume" if mode in ("auto", "2d") else mode


def class_count(labels) -> int:
    """Classes of a dataset built from ``labels`` (arrays of integer labels): the largest
    label + 1, and at least 2 (background and one class), as :func:`build_dataset` counts them."""
    return max(1, *(int(np.asarray(label).max(initial=0)) for label in labels)) + 1


def build_dataset(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    names: list[str] | None = None,
    modes: list[str] | str = "auto",
    trust: list[np.ndarray | None] | None = None,
    ignore: list[np.ndarray | None] | None = None,
    n_classes: int | None = None,
    intensity_floor: float | None = None,
) -> NoisyDataset:
    """Build a :class:`NoisyDataset` from image/label pairs.

    Parameters
    ----------
    images : list of ndarray
        Each (H, W), (H, W, 3|4), (D, H, W) or (D, H, W, 3|4); any real dtype.
    labels : list of ndarray
        Each (H, W) or (D, H, W) integer, matching its image. Already validated
        (see :func:`napari_noisyseg.core.io.validate_pair`); copied, not modified.
    names : list of str, optional
    modes : str or list of str
        ``"2d"``, ``"stack"`` (each slice its own sample, normalised per slice),
        ``"volume"`` (3D, sliced along axis 0, normalised per volume so that
        empty slices are not stretched; no intensity floor) or ``"auto"`` (2D labels → 2d, 3D → volume).
    trust, ignore : list of (ndarray of bool or None), optional
        Same shapes as the labels.
    n_classes : int, optional
        Defaults to max label + 1 (at least 2).
    intensity_floor : float, optional
        Smallest intensity span stretched to 0..1 by the per-image (2D) and
        per-slice (stack) normalisation; defaults to :func:`intensity_range_floor`
        of those images (0 when every source is a volume). Pass the training set's
        value when predicting on new images.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label arrays")
    if not images:
        raise ValueError("no image/label pairs given")
    names = list(names) if names is not None else [f"sample_{i}" for i in range(len(images))]
    modes = [modes] * len(images) if isinstance(modes, str) else list(modes)
    trust = trust or [None] * len(images)
    ignore = ignore or [None] * len(images)
    if intensity_floor is None:
        intensity_floor = intensity_range_floor(_normalisation_units(images, labels, modes))
    range_floor = float(intensity_floor)
    samples: list[Sample] = []
    sources: list[Source] = []
    channels = None
    for source_index, (image, label) in enumerate(zip(images, labels)):
        label = np.asarray(label)
        mode = _infer_mode(label, modes[source_index])
        image = _channels_first(np.asarray(image), label.shape)
        if channels is None:
            channels = image.shape[0]
        elif image.shape[0] != channels:
            raise ValueError(
                f"{names[source_index]}: {image.shape[0]} channels but earlier images have {channels}"
            )
        if mode == "volume":
            # No floor for whole volumes (ours): a volume always holds its anatomy, and
            # raw units differ between scans (MRI percentile spans of 102 to 5.8e5 in the
            # hippocampus set), so a floor from other scans compressed low-span volumes (test mean
            # 0.20 against 0.52 in training) and the network failed on them.
            image = normalize_percentile(image)
        label = label.astype(np.int64, copy=True)
        label.setflags(write=False)
        source_trust = _mask_copy(trust[source_index], label.shape, "trust", names[source_index])
        source_ignore = _mask_copy(ignore[source_index], label.shape, "ignore", names[source_index])
        source = Source(names[source_index], mode, label.shape)
        positions = [()] if mode == "2d" else [(z,) for z in range(label.shape[0])]
        for position in positions:
            index = (slice(None),) + position
            sample_image = image[index]
            if mode != "volume":
                sample_image = normalize_percentile(sample_image, min_range=range_floor)
            name = names[source_index] if not position else f"{names[source_index]}[{position[0]}]"
            source.sample_indices.append(len(samples))
            samples.append(
                Sample(
                    image=np.ascontiguousarray(sample_image, dtype=np.float32),
                    labels=label[position] if position else label,
                    trust=source_trust[position] if position else source_trust,
                    ignore=source_ignore[position] if position else source_ignore,
                    source=source_index,
                    position=position,
                    name=name,
                )
            )
        sources.append(source)
    max_label = class_count(labels) - 1
    n_classes = n_classes or max_label + 1
    if max_label >= n_classes:
        raise ValueError(f"labels contain class {max_label} but n_classes is {n_classes}")
    return NoisyDataset(samples, sources, int(n_classes), int(channels), range_floor)


def _normalisation_units(images, labels, modes) -> list[np.ndarray]:
    """The arrays normalised one by one under the floor: single slices or 2D images
    (whole volumes are normalised without it, see :func:`build_dataset`)."""
    units = []
    for image, label, mode in zip(images, labels, modes):
        mode = _infer_mode(np.asarray(label), mode)
        image = np.asarray(image)
        if mode == "stack":
            units.extend(image[z] for z in range(image.shape[0]))
        elif mode == "2d":
            units.append(image)
    return units
