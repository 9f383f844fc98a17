"""Metrics for segmentation quality, noise detection and label correction.

Everything here is plain NumPy / SciPy / scikit-learn so the benchmark, the CLI and the
viewer can all use it without a GPU or a GUI (METHODS.md §9).

Conventions shared by every function
------------------------------------
- Label maps are integer arrays (any integer dtype, or bool, or floats holding whole
  numbers), 2D ``(H, W)`` or 3D ``(D, H, W)``, values ``0..K-1`` with ``0`` = background.
- Two arrays that are compared must have the same shape; otherwise a ``ValueError`` names
  both shapes.
- Per-class results are float64 arrays of length ``K`` where index ``c`` is class ``c``
  (background included at index 0). A class that is *not applicable* (absent from both
  prediction and truth) is ``nan``, so averages over classes or samples use ``nanmean``
  and are not dragged towards 1 or 0 by images that simply do not contain that class.
- ``n_classes=None`` means ``max(label) + 1`` over the arrays given.
- ``ignore`` masks (bool, same shape) exclude pixels that carry no label.

Decisions (ours)
----------------
- **HD95** is the larger of the two directed 95th-percentile surface distances
  (``max(P95(d(pred→truth)), P95(d(truth→pred)))``, as MONAI computes it). Surfaces are the
  object voxels with at least one face-neighbour outside the object (the image border counts
  as outside). Both masks empty → ``0.0``; exactly one empty → ``inf`` (the distance to a
  missing surface is unbounded; callers should count those cases rather than average them,
  see :func:`evaluate_segmentation`). In :func:`hd95_per_class` background (index 0) is
  ``nan`` (its boundary is the union of the foreground boundaries) and a class absent from
  both maps is ``nan`` (not applicable, as for Dice).
- **Noise detection**: a pixel is flagged when ``noise >= threshold`` (scikit-learn's
  convention, so the F1 point lies on the same precision-recall curve as AP). 0/0 in
  precision or recall gives ``nan``; AUROC and AP are ``nan`` when the truth has a single
  class. AUROC/AP are computed on a seeded random subsample of at most ``max_pixels``
  pixels; prevalence, precision, recall and F1 always use every pixel.
- **Boundary prior**: edge pixels are the pixels with a face-neighbour (4-connectivity in
  2D, 6 in 3D) carrying a different label, on *both* sides of the boundary; they get
  ``d = 0`` and so prior 1. Every other pixel gets the Euclidean distance to the nearest edge
  pixel (in pixels, or physical units with ``spacing``). The image border is not an edge.
- **JSON**: :func:`evaluate_segmentation` returns Python floats/ints/lists only, with
  ``nan`` and ``inf`` written as ``None`` (strict JSON has neither). Use :func:`to_json_safe`
  for other results.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "dice_per_class",
    "iou_per_class",
    "mean_foreground_dice",
    "hd95",
    "hd95_per_class",
    "noise_detection_scores",
    "correction_dice",
    "gap_recovered",
    "boundary_prior",
    "aggregate_scores",
    "evaluate_segmentation",
    "to_json_safe",
]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch: {name_a} has shape {a.shape} but {name_b} has shape {b.shape}"
        )


def _as_label_map(arr, name: str) -> np.ndarray:
    """Return ``arr`` as a non-negative int64 label map, 2D or 3D."""
    arr = np.asarray(arr)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D or 3D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        # Some readers hand back float label volumes; accept them only if they are whole.
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer labels, got non-integer floats")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} holds negative labels (min {arr.min()})")
    return arr


def _as_mask(mask, shape: tuple, name: str, ref_name: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.shape != shape:
        raise ValueError(
            f"shape mismatch: {name} has shape {mask.shape} but {ref_name} has shape {shape}"
        )
    return mask


def _infer_n_classes(*label_maps: np.ndarray) -> int:
    top = max((int(m.max()) for m in label_maps if m.size), default=0)
    return top + 1


def _check_n_classes(n_classes: int, *label_maps: np.ndarray) -> int:
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    top = _infer_n_classes(*label_maps) - 1
    if top >= n_classes:
        raise ValueError(f"labels go up to {top} but n_classes is {n_classes}")
    return n_classes


def _spacing_tuple(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        return (float(spacing),) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing has {len(spacing)} entries but the arrays are {ndim}D")
    if any(s <= 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {spacing}")
    return spacing


def _nanmean(values) -> float:
    """nanmean that returns nan (without a RuntimeWarning) when nothing is finite."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))


# --------------------------------------------------------------------------------------------
# overlap metrics
# --------------------------------------------------------------------------------------------
def _confusion(pred, truth, n_classes, ignore) -> np.ndarray:
    """Confusion matrix ``cm[t, p]`` (int64, (K, K)) counting truth class t predicted as p."""
    pred = _as_label_map(pred, "pred")
    truth = _as_label_map(truth, "truth")
    _check_same_shape(pred, truth, "pred", "truth")
    ignore = _as_mask(ignore, truth.shape, "ignore", "truth")
    if n_classes is None:
        n_classes = _infer_n_classes(pred, truth)
    else:
        n_classes = _check_n_classes(n_classes, pred, truth)
    if ignore is not None:
        keep = ~ignore
        pred, truth = pred[keep], truth[keep]
    # One bincount over the joint index is far faster than K boolean comparisons in 3D.
    flat = truth.ravel() * n_classes + pred.ravel()
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def dice_per_class(pred, truth, n_classes=None, ignore=None) -> np.ndarray:
    """Dice coefficient of every class.

    Parameters
    ----------
    pred, truth : ndarray of int, shape (H, W) or (D, H, W)
        Predicted and reference label maps, values ``0..K-1``.
    n_classes : int, optional
        K. Default ``max(pred.max(), truth.max()) + 1``.
    ignore : ndarray of bool, same shape, optional
        Pixels excluded from the count.

    Returns
    -------
    ndarray of float64, shape (K,)
        ``2|P_c ∩ T_c| / (|P_c| + |T_c|)`` for class ``c`` at index ``c`` (background at 0);
        ``nan`` where the class is absent from both maps.
    """
    cm = _confusion(pred, truth, n_classes, ignore)
    overlap = np.diag(cm).astype(np.float64)
    total = cm.sum(axis=0) + cm.sum(axis=1)  # |P_c| + |T_c|
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(total > 0, 2.0 * overlap / total, np.nan)
    return dice.astype(np.float64)


def iou_per_class(pred, truth, n_classes=None, ignore=None) -> np.ndarray:
    """Intersection over union (Jaccard) of every class.

    Parameters and conventions as :func:`dice_per_class`.

    Returns
    -------
    ndarray of float64, shape (K,)
        ``|P_c ∩ T_c| / |P_c ∪ T_c|``; ``nan`` where the class is absent from both maps.
    """
    cm = _confusion(pred, truth, n_classes, ignore)
    overlap = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, overlap / union, np.nan)
    return iou.astype(np.float64)


def recall_per_class(pred, truth, n_classes=None, ignore=None) -> np.ndarray:
    """Recall (sensitivity) of every class: the fraction of its ``truth`` pixels ``pred`` gives it.

    Parameters and conventions as :func:`dice_per_class`.

    Returns
    -------
    ndarray of float64, shape (K,)
        ``|P_c ∩ T_c| / |T_c|``; ``nan`` where the class is absent from ``truth``.
    """
    cm = _confusion(pred, truth, n_classes, ignore)
    total = cm.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(total > 0, np.diag(cm) / total, np.nan)
    return recall.astype(np.float64)


def mean_foreground_dice(pred, truth, n_classes=None, ignore=None) -> float:
    """Mean Dice over the foreground classes ``1..K-1`` (nanmean: absent classes skipped).

    Parameters
    ----------
    pred, truth : ndarray of int, shape (H, W) or (D, H, W)
    n_classes : int, optional
    ignore : ndarray of bool, optional

    Returns
    -------
    float
        ``nan`` when no foreground class occurs in either map.
    """
    dice = dice_per_class(pred, truth, n_classes=n_classes, ignore=ignore)
    return _nanmean(dice[1:])


# --------------------------------------------------------------------------------------------
# boundary distance
# --------------------------------------------------------------------------------------------
def _surface(mask: np.ndarray) -> np.ndarray:
    """Object voxels with a face-neighbour outside the object (image border = outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def _directed_surface_distances(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple
) -> np.ndarray:
    """Distance from every voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    # The EDT measures the distance to the nearest zero, so the target surface must be zeros.
    dist_to_target = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return dist_to_target[from_surface]


def hd95(pred, truth, spacing=None, cls=1) -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of one class.

    Parameters
    ----------
    pred, truth : ndarray of int or bool, shape (H, W) or (D, H, W)
        Label maps; the object is ``== cls``.
    spacing : float or sequence of float, optional
        Voxel size per axis (e.g. ``(z, y, x)`` in µm); distances come out in those units.
        Default 1 per axis (pixels).
    cls : int
        The class whose boundary is compared.

    Returns
    -------
    float
        ``max(P95(d(pred→truth)), P95(d(truth→pred)))`` over surface voxels. ``0.0`` when the
        class is absent from both maps; ``inf`` when it is absent from exactly one.
    """
    pred = _as_label_map(pred, "pred")
    truth = _as_label_map(truth, "truth")
    _check_same_shape(pred, truth, "pred", "truth")
    spacing = _spacing_tuple(spacing, pred.ndim)
    pred_mask = pred == cls
    truth_mask = truth == cls
    has_pred, has_truth = bool(pred_mask.any()), bool(truth_mask.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return float("inf")

    # Crop to the union's bounding box plus one voxel: the EDT stays exact (all target voxels
    # are inside) and 3D volumes with small objects become much cheaper.
    coords = np.nonzero(pred_mask | truth_mask)
    crop = tuple(
        slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, size))
        for c, size in zip(coords, pred.shape)
    )
    # Surfaces on the crop equal those on the full image: the crop edge is either the image
    # border (outside, as for the full image) or a background voxel.
    pred_surface = _surface(pred_mask[crop])
    truth_surface = _surface(truth_mask[crop])
    d_pred_to_truth = _directed_surface_distances(pred_surface, truth_surface, spacing)
    d_truth_to_pred = _directed_surface_distances(truth_surface, pred_surface, spacing)
    return float(max(np.percentile(d_pred_to_truth, 95), np.percentile(d_truth_to_pred, 95)))


def hd95_per_class(pred, truth, n_classes=None, spacing=None) -> np.ndarray:
    """HD95 of every foreground class.

    Parameters
    ----------
    pred, truth : ndarray of int, shape (H, W) or (D, H, W)
    n_classes : int, optional
    spacing : float or sequence of float, optional

    Returns
    -------
    ndarray of float64, shape (K,)
        Index ``c`` = :func:`hd95` for class ``c``; index 0 (background) is ``nan``; a class
        absent from both maps is ``nan`` (not applicable); absent from one is ``inf``.
    """
    pred = _as_label_map(pred, "pred")
    truth = _as_label_map(truth, "truth")
    _check_same_shape(pred, truth, "pred", "truth")
    if n_classes is None:
        n_classes = _infer_n_classes(pred, truth)
    else:
        n_classes = _check_n_classes(n_classes, pred, truth)
    out = np.full(n_classes, np.nan, dtype=np.float64)
    present = set(np.unique(pred).tolist()) | set(np.unique(truth).tolist())
    for c in range(1, n_classes):
        if c in present:
            out[c] = hd95(pred, truth, spacing=spacing, cls=c)
    return out


# --------------------------------------------------------------------------------------------
# noise detection
# --------------------------------------------------------------------------------------------
def noise_detection_scores(
    noise_likelihood,
    noise_truth,
    threshold: float = 0.5,
    ignore=None,
    max_pixels: int = 2_000_000,
    seed: int = 0,
) -> dict:
    """How well a per-pixel noise map finds the wrongly labelled pixels.

    Parameters
    ----------
    noise_likelihood : ndarray of float, shape (H, W) or (D, H, W)
        A method's ``noise`` output: likelihood that the given label is wrong.
    noise_truth : ndarray of bool (or 0/1), same shape
        True noise mask (``noisy != clean``).
    threshold : float
        Operating point: a pixel is flagged when ``noise_likelihood >= threshold``.
    ignore : ndarray of bool, same shape, optional
        Pixels excluded from every score.
    max_pixels : int
        AUROC and AP use a seeded random subsample of at most this many pixels (sorting 10^8
        voxels would dominate a benchmark run); the other scores use every pixel.
    seed : int
        Seed of the subsample, so repeated calls give identical numbers.

    Returns
    -------
    dict
        ``auroc``, ``ap`` (nan when the truth is all-clean or all-noisy), ``f1``,
        ``precision``, ``recall`` (nan on 0/0), ``threshold``, ``prevalence`` (fraction of
        noisy pixels), as Python floats.
    """
    scores = np.asarray(noise_likelihood, dtype=np.float64)
    truth = np.asarray(noise_truth)
    _check_same_shape(scores, truth, "noise_likelihood", "noise_truth")
    truth = truth.astype(bool)
    ignore = _as_mask(ignore, truth.shape, "ignore", "noise_truth")
    if ignore is not None:
        scores, truth = scores[~ignore], truth[~ignore]
    scores, truth = scores.ravel(), truth.ravel()
    if np.isnan(scores).any():
        raise ValueError("noise_likelihood contains nan")

    n = truth.size
    n_noisy = int(truth.sum())
    flagged = scores >= threshold
    tp = int(np.count_nonzero(flagged & truth))
    fp = int(np.count_nonzero(flagged & ~truth))
    fn = n_noisy - tp
    precision = tp / (tp + fp) if (tp + fp) > 0 else float("nan")
    recall = tp / (tp + fn) if (tp + fn) > 0 else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else float("nan")

    if n == 0 or n_noisy == 0 or n_noisy == n:
        auroc = ap = float("nan")
    else:
        if n > max_pixels:
            rng = np.random.default_rng(seed)
            pick = rng.choice(n, size=max_pixels, replace=False)
            sub_scores, sub_truth = scores[pick], truth[pick]
        else:
            sub_scores, sub_truth = scores, truth
        if sub_truth.all() or not sub_truth.any():  # a very rare class can vanish from a subsample
            auroc = ap = float("nan")
        else:
            # scikit-learn costs about 2 s of every command's start; only noise scoring needs it
            from sklearn.metrics import average_precision_score, roc_auc_score
            auroc = float(roc_auc_score(sub_truth, sub_scores))
            ap = float(average_precision_score(sub_truth, sub_scores))

    return {
        "auroc": auroc,
        "ap": ap,
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "threshold": float(threshold),
        "prevalence": n_noisy / n if n else float("nan"),
    }


def boundary_prior(labels, scale: float = 3.0, spacing=None) -> np.ndarray:
    """Learning-free noise map: how close each pixel is to a label edge.

    Annotation noise concentrates on object boundaries, so ``exp(-d / scale)`` is the
    reference any method's ``noise`` map must beat on AP (it already scores a high AUROC on
    erode/dilate noise without looking at the image).

    Parameters
    ----------
    labels : ndarray of int, shape (H, W) or (D, H, W)
        The given label map (multi-class allowed).
    scale : float
        Decay length, in pixels (or in ``spacing`` units).
    spacing : float or sequence of float, optional
        Voxel size per axis for anisotropic volumes.

    Returns
    -------
    ndarray of float32, same shape, values in [0, 1]
        ``exp(-d / scale)``; ``d = 0`` on edge pixels (those with a face-neighbour of a
        different label, on both sides of the boundary), else the Euclidean distance to the
        nearest edge pixel. All zeros when the map has a single label (no edge).
    """
    labels = _as_label_map(labels, "labels")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    spacing = _spacing_tuple(spacing, labels.ndim)
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        differs = labels[tuple(lo)] != labels[tuple(hi)]
        edge[tuple(lo)] |= differs  # mark both sides: either label may be the wrong one
        edge[tuple(hi)] |= differs
    if not edge.any():
        return np.zeros(labels.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~edge, sampling=spacing)
    return np.exp(-distance / scale).astype(np.float32)


# --------------------------------------------------------------------------------------------
# correction and summary
# --------------------------------------------------------------------------------------------
def correction_dice(corrected, given, clean, n_classes=None) -> dict:
    """Did the proposed correction move the labels towards the clean ones?

    Parameters
    ----------
    corrected, given, clean : ndarray of int, same shape (H, W) or (D, H, W)
        A method's ``corrected`` map, the given (noisy) labels and the clean labels.
    n_classes : int, optional
        Default: inferred jointly from all three maps.

    Returns
    -------
    dict
        ``dice_corrected`` = mean fg Dice(corrected, clean), ``dice_given`` = mean fg
        Dice(given, clean), ``improvement`` = their difference (positive = better).
    """
    corrected = _as_label_map(corrected, "corrected")
    given = _as_label_map(given, "given")
    clean = _as_label_map(clean, "clean")
    _check_same_shape(corrected, clean, "corrected", "clean")
    _check_same_shape(given, clean, "given", "clean")
    if n_classes is None:
        # One K for both so the foreground classes compared are the same.
        n_classes = _infer_n_classes(corrected, given, clean)
    dice_corrected = mean_foreground_dice(corrected, clean, n_classes=n_classes)
    dice_given = mean_foreground_dice(given, clean, n_classes=n_classes)
    return {
        "dice_corrected": dice_corrected,
        "dice_given": dice_given,
        "improvement": dice_corrected - dice_given,
    }


def gap_recovered(dice_method, dice_noisy, dice_clean) -> float:
    """Fraction of the noisy→clean Dice gap a method closes.

    Parameters
    ----------
    dice_method, dice_noisy, dice_clean : float
        Test Dice of the method, of the baseline trained on noisy labels, and of the same
        baseline trained on clean labels.

    Returns
    -------
    float
        ``(m - noisy) / (clean - noisy)``: 0 = no better than the noisy baseline, 1 = as good
        as clean training (can exceed 1 or be negative). ``nan`` when
        ``|clean - noisy| < 1e-6`` (no gap to recover) or any input is nan.
    """
    m, noisy, clean = float(dice_method), float(dice_noisy), float(dice_clean)
    gap = clean - noisy
    if not math.isfinite(gap) or abs(gap) < 1e-6 or math.isnan(m):
        return float("nan")
    return (m - noisy) / gap


def _is_number(value) -> bool:
    return (
        value is None
        or (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)))
    )


def _as_float(value) -> float:
    return float("nan") if value is None else float(value)


def aggregate_scores(list_of_dicts) -> dict:
    """Mean, spread and count of every numeric score over seeds or samples.

    Parameters
    ----------
    list_of_dicts : sequence of dict
        E.g. one :func:`noise_detection_scores` result per seed. A key's values may be
        numbers (``None`` and ``nan`` count as missing) or equal-length numeric lists
        (aggregated element-wise, e.g. per-class Dice). Keys missing from some dicts use
        the others; non-numeric keys (strings, bools, nested dicts) are skipped.

    Returns
    -------
    dict
        ``{key: {"mean": m, "std": s, "n": n}}`` with nan-aware mean, sample standard
        deviation (ddof=1; 0.0 when n == 1), and n = number of finite values (Python floats
        and ints; lists for list-valued keys). ``mean``/``std`` are nan when n == 0. ``inf``
        values propagate into the mean.
    """
    keys: list = []
    for d in list_of_dicts:
        if not isinstance(d, Mapping):
            raise ValueError(f"aggregate_scores expects dicts, got {type(d).__name__}")
        for k in d:
            if k not in keys:
                keys.append(k)

    def summarise(values: np.ndarray):
        # values: (n_dicts, ...) float64, nan = missing
        valid = ~np.isnan(values)
        n = valid.sum(axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.where(n > 0, np.nanmean(values, axis=0), np.nan)
            std = np.where(n > 1, np.nanstd(values, axis=0, ddof=1), np.where(n == 1, 0.0, np.nan))
        return mean, std, n

    out: dict = {}
    for k in keys:
        present = [d[k] for d in list_of_dicts if k in d]
        if all(_is_number(v) for v in present):
            values = np.array([_as_float(v) for v in present], dtype=np.float64)
            mean, std, n = summarise(values)
            out[k] = {"mean": float(mean), "std": float(std), "n": int(n)}
        elif all(
            isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, str) for v in present
        ):
            lengths = {len(v) for v in present}
            if len(lengths) != 1 or not all(_is_number(x) for v in present for x in v):
                continue
            values = np.array([[_as_float(x) for x in v] for v in present], dtype=np.float64)
            mean, std, n = summarise(values)
            out[k] = {
                "mean": [float(x) for x in mean],
                "std": [float(x) for x in std],
                "n": [int(x) for x in n],
            }
    return out


def to_json_safe(obj):
    """Convert numpy scalars/arrays to Python types, and nan/inf to ``None``, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def evaluate_segmentation(preds: list, truths: list, n_classes=None, spacing=None) -> dict:
    """Per-class Dice, IoU and HD95 over a test set.

    Parameters
    ----------
    preds, truths : list of ndarray of int
        Paired predicted and clean label maps; each pair has one shape (2D or 3D), pairs
        may differ in shape.
    n_classes : int, optional
        Default: inferred over every map, so all samples share one K.
    spacing : float or sequence of float, optional
        Voxel size for HD95 (the same for every sample).

    Returns
    -------
    dict (JSON-serialisable; nan/inf written as None)
        - ``n_samples``, ``n_classes``
        - ``dice_per_class``, ``iou_per_class``: lists of length K, nanmean over samples of
          the per-sample values (a sample without class c in either map does not count).
        - ``hd95_per_class``: mean over samples where HD95 is finite; index 0 is None.
        - ``hd95_inf_per_class``: number of samples where class c is present in only one of
          the two maps (infinite HD95, left out of the mean above).
        - ``mean_fg_dice``, ``mean_fg_dice_std``: mean and sample std over samples of
          :func:`mean_foreground_dice`; ``mean_fg_iou``; ``mean_fg_hd95`` (nanmean of
          ``hd95_per_class[1:]``).
    """
    preds, truths = list(preds), list(truths)
    if len(preds) != len(truths):
        raise ValueError(f"got {len(preds)} predictions but {len(truths)} references")
    if not preds:
        raise ValueError("evaluate_segmentation needs at least one sample")
    preds = [_as_label_map(p, f"preds[{i}]") for i, p in enumerate(preds)]
    truths = [_as_label_map(t, f"truths[{i}]") for i, t in enumerate(truths)]
    for i, (p, t) in enumerate(zip(preds, truths)):
        _check_same_shape(p, t, f"preds[{i}]", f"truths[{i}]")
    if n_classes is None:
        n_classes = _infer_n_classes(*preds, *truths)
    else:
        n_classes = _check_n_classes(n_classes, *preds, *truths)

    dice = np.stack([dice_per_class(p, t, n_classes) for p, t in zip(preds, truths)])
    iou = np.stack([iou_per_class(p, t, n_classes) for p, t in zip(preds, truths)])
    hd = np.stack(
        [hd95_per_class(p, t, n_classes, spacing=spacing) for p, t in zip(preds, truths)]
    )
    fg_dice = np.array([_nanmean(row[1:]) for row in dice])
    fg_iou = np.array([_nanmean(row[1:]) for row in iou])

    hd_inf = np.isinf(hd)
    hd_finite = np.where(hd_inf, np.nan, hd)
    per_class = lambda values: [_nanmean(values[:, c]) for c in range(n_classes)]  # noqa: E731
    hd_mean = per_class(hd_finite)
    fg_valid = fg_dice[~np.isnan(fg_dice)]
    result = {
        "n_samples": len(preds),
        "n_classes": int(n_classes),
        "dice_per_class": per_class(dice),
        "iou_per_class": per_class(iou),
        "hd95_per_class": hd_mean,
        "hd95_inf_per_class": [int(x) for x in hd_inf.sum(axis=0)],
        "mean_fg_dice": _nanmean(fg_dice),
        # Sample std (ddof=1) as in aggregate_scores; a single sample has no spread.
        "mean_fg_dice_std": (
            float(np.std(fg_valid, ddof=1)) if fg_valid.size > 1
            else (0.0 if fg_valid.size == 1 else float("nan"))
        ),
        "mean_fg_iou": _nanmean(fg_iou),
        "mean_fg_hd95": _nanmean(hd_mean[1:]),
    }
    return to_json_safe(result)
