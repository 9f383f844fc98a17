"""Agreement between the noise maps of several methods (``noisyseg compare``).

Where several noisy-label methods, trained on the same data with the same
budget, all say "this label is wrong", a proposal is more credible than where
only one does. This module measures that, on plain arrays: no torch, Qt or
napari.

Conventions (ours)
------------------
- A method **flags** a pixel when its noise likelihood is ``>= threshold``
  (default 0.5), the convention of :func:`napari_noisyseg.core.metrics.noise_detection_scores`.
- The **agreement map** is, per pixel, the fraction of methods that flag it:
  0 (none), 1/M, ..., 1 (all M methods).
- **Pairwise agreement** of two methods, over every pixel of every source:
  Dice and IoU of their flagged masks (both masks empty → 1.0: they agree that
  nothing is wrong), and Spearman's rank correlation of their noise maps on a
  seeded random subsample of at most ``max_pixels`` pixels (``None`` when
  either subsample is constant: a rank correlation is undefined there).
- A **region** (a proposal, see :mod:`napari_noisyseg.core.proposals`) gets the
  mean of the agreement map over its pixels, and is **flagged by** a method
  when that method's mean noise over the region is ``>= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

DEFAULT_THRESHOLD = 0.5
#: Pixels used for the rank correlation of two maps (a seeded subsample beyond this).
DEFAULT_MAX_PIXELS = 200_000


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0 or not np.isfinite(threshold):
        raise ValueError(f"the agreement threshold must lie in [0, 1], got {threshold}")
    return threshold


def _as_map(array, what: str) -> np.ndarray:
    values = np.asarray(array, dtype=np.float32)
    if values.ndim not in (2, 3):
        raise ValueError(f"{what}: noise maps are 2D or 3D arrays, got shape {values.shape}")
    return values


def flag_agreement(noise_maps, threshold: float = DEFAULT_THRESHOLD, names=None) -> np.ndarray:
    """Per pixel, the fraction of methods whose noise likelihood is ``>= threshold``.

    Parameters
    ----------
    noise_maps : list of ndarray, float, all of one shape (H, W) or (D, H, W)
        One noise-likelihood map per method, for the same labels.
    threshold : float in [0, 1]
        A method flags a pixel when its noise is at least this.
    names : list of str, optional
        Method names, used in error messages (default ``method 0``, ...).

    Returns
    -------
    ndarray of float32, the maps' shape
        Values in {0, 1/M, ..., 1} for M maps. NaN noise never flags.

    Raises
    ------
    ValueError
        No maps, a threshold outside [0, 1], or maps of different shapes (the
        message names the method).
    """
    threshold = _check_threshold(threshold)
    maps = list(noise_maps)
    if not maps:
        raise ValueError("flag_agreement needs at least one noise map")
    names = list(names) if names is not None else [f"method {i}" for i in range(len(maps))]
    first = _as_map(maps[0], names[0])
    count = np.zeros(first.shape, np.float32)
    for name, noise in zip(names, maps):
        noise = _as_map(noise, name)
        if noise.shape != first.shape:
            raise ValueError(f"{name}: noise map of shape {noise.shape} differs from {names[0]}'s {first.shape}")
        count += noise >= threshold  # NaN >= t is False
    return (count / np.float32(len(maps))).astype(np.float32)


def _by_method(noise_maps: dict) -> tuple[list[str], list[list[np.ndarray]]]:
    """Check ``{method: [map per source]}``: same number of sources, same shapes."""
    if not isinstance(noise_maps, dict):
        raise ValueError("noise maps go as a dict {method name: [one map per source]}")
    names = list(noise_maps)
    if not names:
        raise ValueError("no methods to compare")
    maps = []
    for name in names:
        value = noise_maps[name]
        value = [value] if isinstance(value, np.ndarray) else list(value)
        maps.append([_as_map(m, f"{name}, source {i}") for i, m in enumerate(value)])
    reference, first = names[0], maps[0]
    for name, method_maps in zip(names[1:], maps[1:]):
        if len(method_maps) != len(first):
            raise ValueError(f"{name}: {len(method_maps)} noise maps, but {reference} has {len(first)}")
        for i, (a, b) in enumerate(zip(first, method_maps)):
            if a.shape != b.shape:
                raise ValueError(
                    f"{name}: noise map of source {i} has shape {b.shape}, {reference}'s has {a.shape}"
                )
    return names, maps


def agreement_maps(noise_maps: dict, threshold: float = DEFAULT_THRESHOLD) -> list[np.ndarray]:
    """:func:`flag_agreement` per source of ``{method: [noise map per source]}``.

    Returns
    -------
    list of ndarray of float32
        One agreement map per source.
    """
    names, maps = _by_method(noise_maps)
    return [flag_agreement([m[s] for m in maps], threshold, names) for s in range(len(maps[0]))]


def dice_iou(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; both empty → (1.0, 1.0)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} differ")
    both = int(np.count_nonzero(a & b))
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    union = total - both
    if total == 0:
        return 1.0, 1.0
    return 2.0 * both / total, both / union


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two equally long 1D arrays (average ranks for ties);
    ``None`` when either is constant or they are empty."""
    from scipy.stats import rankdata

    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"{a.size} and {b.size} values cannot be rank-correlated")
    if a.size < 2:
        return None
    ra = rankdata(a) - (a.size + 1) / 2.0
    rb = rankdata(b) - (b.size + 1) / 2.0
    denominator = float(np.sqrt(np.dot(ra, ra) * np.dot(rb, rb)))
    if denominator == 0.0:
        return None
    return float(np.clip(np.dot(ra, rb) / denominator, -1.0, 1.0))


def pairwise_agreement(noise_maps: dict, threshold: float = DEFAULT_THRESHOLD,
                       max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0) -> dict:
    """How much every pair of methods agrees, over all pixels of all sources.

    Parameters
    ----------
    noise_maps : dict of str -> list of ndarray
        Per method, one noise map per source (or a single array); the same
        number of sources and the same shapes for every method.
    threshold : float in [0, 1]
        Flagging threshold (see the module docstring).
    max_pixels : int
        The rank correlation uses a seeded random subsample of at most this many
        pixels (the same pixels for both maps); Dice and IoU use every pixel.
    seed : int
        Seed of that subsample.

    Returns
    -------
    dict
        ``{(a, b): {"dice": float, "iou": float, "spearman": float or None,
        "n_ranked": int}}`` for every unordered pair in the dict's order
        (``a`` before ``b``). Nan noise counts as not flagged and ranks as 0.

    Raises
    ------
    ValueError
        Mismatched sources or shapes (the message names the method).
    """
    threshold = _check_threshold(threshold)
    names, maps = _by_method(noise_maps)
    flat = {name: np.nan_to_num(np.concatenate([m.ravel() for m in method_maps]), nan=0.0)
            for name, method_maps in zip(names, maps)}
    n = flat[names[0]].size
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=int(max_pixels), replace=False)) if n > max_pixels else slice(None)
    out = {}
    for a, b in combinations(names, 2):
        dice, iou = dice_iou(flat[a] >= threshold, flat[b] >= threshold)
        ranked_a, ranked_b = flat[a][sample], flat[b][sample]
        out[(a, b)] = {"dice": dice, "iou": iou, "spearman": spearman(ranked_a, ranked_b),
                       "n_ranked": int(ranked_a.size)}
    return out


def mean_agreement_with_others(pairwise: dict, names, key: str = "dice") -> dict:
    """Per method, the mean of ``key`` over its pairs (``None`` without pairs or values)."""
    out = {}
    for name in names:
        values = [v[key] for pair, v in pairwise.items() if name in pair and v.get(key) is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


def region_means(region_map: np.ndarray, values: np.ndarray) -> dict:
    """Mean of ``values`` over every region of a region-id map (0 = no region).

    Returns
    -------
    dict of int -> float
        Region id → mean; only ids present in the map.
    """
    region_map = np.asarray(region_map)
    values = np.asarray(values, np.float64)
    if region_map.shape != values.shape:
        raise ValueError(f"region map {region_map.shape} and value map {values.shape} differ in shape")
    ids = region_map.ravel().astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError("region ids must be >= 0")
    if not ids.size or ids.max() == 0:
        return {}
    sums = np.bincount(ids, weights=np.nan_to_num(values.ravel()))
    counts = np.bincount(ids)
    present = np.flatnonzero(counts)
    return {int(i): float(sums[i] / counts[i]) for i in present if i != 0}


def region_agreement(region_map: np.ndarray, agreement_map: np.ndarray) -> dict:
    """Each region's mean agreement: ``{region id: mean of the agreement map over it}``.

    Parameters
    ----------
    region_map : ndarray of int
        Region ids (0 = no region), e.g. from :func:`~napari_noisyseg.core.proposals.find_regions`.
    agreement_map : ndarray of float, same shape
        From :func:`flag_agreement`.
    """
    return region_means(region_map, agreement_map)


def region_flagged_by(region_map: np.ndarray, noise_maps: dict, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Which methods flag each region: mean noise over the region ``>= threshold``.

    Parameters
    ----------
    region_map : ndarray of int
        Region ids of one source (0 = no region).
    noise_maps : dict of str -> ndarray
        Per method, its noise map of that source.

    Returns
    -------
    dict of int -> tuple of str
        Region id → method names, in the dict's order.
    """
    threshold = _check_threshold(threshold)
    region_map = np.asarray(region_map)
    out: dict = {}
    means_by_method = {}
    for name, noise in noise_maps.items():
        noise = np.asarray(noise)
        if noise.shape != region_map.shape:
            raise ValueError(f"{name}: noise map {noise.shape} and region map {region_map.shape} differ in shape")
        means_by_method[name] = region_means(region_map, noise)
    ids = sorted(set().union(*[set(m) for m in means_by_method.values()])) if means_by_method else []
    for rid in ids:
        out[rid] = tuple(name for name, means in means_by_method.items() if means.get(rid, 0.0) >= threshold)
    return out


@dataclass
class MethodAgreement:
    """What a method comparison tells the curation session, per source.

    Attributes
    ----------
    methods : tuple of str
        The compared methods (the first is the one whose proposals are reviewed).
    maps : list of ndarray of float32
        Agreement map per source (:func:`flag_agreement`).
    noise : dict of str -> list of ndarray
        Per method, its noise map per source (for ``flagged_by``).
    threshold : float
    """

    methods: tuple
    maps: list
    noise: dict = field(default_factory=dict)
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def from_noise(cls, noise_maps: dict, threshold: float = DEFAULT_THRESHOLD) -> "MethodAgreement":
        """Agreement maps of ``{method: [noise map per source]}``."""
        maps = agreement_maps(noise_maps, threshold)
        return cls(tuple(noise_maps), maps, {k: list(v) for k, v in noise_maps.items()}, float(threshold))

    def annotate(self, s: int, region_map: np.ndarray) -> dict:
        """``{region id: (agreement, flagged_by)}`` of the regions of source ``s``."""
        if not 0 <= s < len(self.maps):
            raise ValueError(f"the comparison has {len(self.maps)} sources, not {s + 1}")
        if self.maps[s].shape != np.shape(region_map):
            raise ValueError(f"source {s}: agreement map {self.maps[s].shape} and labels "
                             f"{np.shape(region_map)} differ in shape")
        means = region_agreement(region_map, self.maps[s])
        flags = region_flagged_by(region_map, {m: self.noise[m][s] for m in self.noise}, self.threshold) \
            if self.noise else {}
        return {rid: (value, flags.get(rid, ())) for rid, value in means.items()}
