"""Random square patches with flips and rot90, shared by every method.

A :class:`PatchSpec` says where a patch lies and how it is augmented, so the
same crop can be applied to the image, the given labels and any per-sample
state a method keeps (current labels, soft targets, masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PatchSpec:
    """One patch: sample index, top-left corner (may be negative: padded), size, augmentation."""

    sample: int
    top: int
    left: int
    size: int
    flip_y: bool = False
    flip_x: bool = False
    rot90: int = 0


def round_up(value: int, multiple: int) -> int:
    return int(-(-value // multiple) * multiple)


def effective_patch_size(shapes: list[tuple[int, int]], patch_size: int, multiple: int) -> int:
    """The patch side: ``patch_size`` unless every sample is smaller, then the
    largest sample side rounded up to ``multiple`` (2**depth of the U-Net)."""
    largest = max(max(shape) for shape in shapes)
    return round_up(min(patch_size, largest), multiple)


def crop(array: np.ndarray, spec: PatchSpec, pad_value=0) -> np.ndarray:
    """Crop ``array`` (..., H, W) to the patch, padding outside with ``pad_value``, then augment."""
    height, width = array.shape[-2:]
    top, left, size = spec.top, spec.left, spec.size
    out = np.full(array.shape[:-2] + (size, size), pad_value, dtype=array.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, height), min(left + size, width)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = array[..., y0:y1, x0:x1]
    if spec.flip_y:
        out = out[..., ::-1, :]
    if spec.flip_x:
        out = out[..., :, ::-1]
    if spec.rot90:
        out = np.rot90(out, spec.rot90, axes=(-2, -1))
    return np.ascontiguousarray(out)


def valid_mask(shape: tuple[int, int], spec: PatchSpec) -> np.ndarray:
    """float32 (size, size): 1 where the patch covers the sample, 0 in padding."""
    return crop(np.ones(shape, np.float32), spec, 0.0)


def patches_per_sample(shape: tuple[int, int], size: int) -> int:
    """How many patches an epoch draws from a sample: about its area in patches."""
    return max(1, int(round(shape[0] * shape[1] / float(size * size))))


class PatchSampler:
    """Draws the batches of one epoch.

    Parameters
    ----------
    shapes : list of (H, W)
        Sample shapes.
    patch_size : int
        Square patch side (already made divisible by 2**depth).
    batch_size : int
    seed : int
    augment : bool
        Random flips and rot90.
    """

    def __init__(self, shapes, patch_size: int, batch_size: int, seed: int = 0, augment: bool = True):
        self.shapes = [tuple(shape) for shape in shapes]
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def _spec(self, sample: int) -> PatchSpec:
        height, width = self.shapes[sample]
        size = self.patch_size
        # Small samples are centred with random jitter inside the padding.
        top = int(self.rng.integers(min(0, height - size), max(0, height - size) + 1))
        left = int(self.rng.integers(min(0, width - size), max(0, width - size) + 1))
        if not self.augment:
            return PatchSpec(sample, top, left, size)
        flips = self.rng.integers(0, 2, size=2)
        return PatchSpec(sample, top, left, size, bool(flips[0]), bool(flips[1]), int(self.rng.integers(0, 4)))

    def epoch(self, samples: list[int] | None = None) -> list[list[PatchSpec]]:
        """The batches of one epoch over ``samples`` (default: all), shuffled."""
        samples = range(len(self.shapes)) if samples is None else samples
        order = [s for s in samples for _ in range(patches_per_sample(self.shapes[s], self.patch_size))]
        order = [order[i] for i in self.rng.permutation(len(order))]
        specs = [self._spec(s) for s in order]
        return [specs[i : i + self.batch_size] for i in range(0, len(specs), self.batch_size)]
