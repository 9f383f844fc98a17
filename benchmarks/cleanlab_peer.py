"""The real ``cleanlab`` library as a peer of napari-noisyseg's ``confident`` method.

``cleanlab`` is a benchmark/test dependency only (pyproject's ``test`` extra), never
imported by the package. Both functions take the same out-of-fold probabilities the
``confident`` method computed (its ``CurationResult.probabilities``), so the two rows
of the benchmark differ only in how the label issues are chosen:

- ``confident`` flags each pixel by the confident-joint rule (another class clears
  its per-class threshold);
- ``cleanlab.segmentation.filter.find_label_issues`` estimates the *number* of issues
  from the confident joint and returns that many pixels with the lowest
  self-confidence p(given label), then drops those whose argmax equals the label.

Images of different sizes
-------------------------
cleanlab wants ``labels (N, H, W)`` and ``pred_probs (N, K, H, W)``. With
``downsample=1`` (the default) every pixel is treated independently: thresholds,
issue count and ranking are computed over the flattened pixels in image order. So
the samples are concatenated into one row, ``labels (1, 1, P)`` and
``pred_probs (1, K, 1, P)`` (P = all valid pixels), which gives exactly what cleanlab
would return for a stack of equal-sized images, without cropping or padding, and
the result is split back per sample.
"""

from __future__ import annotations

import numpy as np


def _flatten(probabilities, labels, valid):
    labels_row = np.concatenate([np.asarray(y)[v] for y, v in zip(labels, valid)]).astype(np.int64)
    probs_row = np.concatenate([np.asarray(p, np.float32)[:, v] for p, v in zip(probabilities, valid)], axis=1)
    probs_row = probs_row / np.clip(probs_row.sum(axis=0, keepdims=True), 1e-12, None)
    return labels_row[None, None], probs_row[None, :, None, :]


def _split(row: np.ndarray, valid: list, fill) -> list:
    out, start = [], 0
    for v in valid:
        array = np.full(v.shape, fill, dtype=row.dtype)
        count = int(v.sum())
        array[v] = row[start : start + count]
        start += count
        out.append(array)
    return out


def cleanlab_issues(probabilities, labels, exclude=None, n_jobs: int = 1) -> tuple[list, list]:
    """Label issues and pixel quality scores from ``cleanlab.segmentation``.

    Parameters
    ----------
    probabilities : list of ndarray, float (K, H, W)
        Out-of-fold class probabilities, one per sample (sizes may differ).
    labels : list of ndarray, int (H, W)
        The given (noisy) labels, values 0..K-1.
    exclude : list of ndarray of bool (H, W), optional
        Pixels left out (ignored or trusted): never issues, score 1.
    n_jobs : int
        Passed to cleanlab (1 = no multiprocessing).

    Returns
    -------
    issues : list of ndarray of bool (H, W)
        ``cleanlab.segmentation.filter.find_label_issues``.
    quality : list of ndarray of float32 (H, W)
        Pixel scores of ``cleanlab.segmentation.rank.get_label_quality_scores``
        (p(given label); low = likely wrong).
    """
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    if len(probabilities) != len(labels):
        raise ValueError(f"{len(probabilities)} probability maps but {len(labels)} label maps")
    valid = [np.ones(np.shape(y), bool) if exclude is None or exclude[i] is None else ~np.asarray(exclude[i], bool)
             for i, y in enumerate(labels)]
    labels_row, probs_row = _flatten(probabilities, labels, valid)
    issues = find_label_issues(labels_row, probs_row, n_jobs=n_jobs, verbose=False)
    _, pixel_scores = get_label_quality_scores(labels_row, probs_row, verbose=False)
    return (_split(issues.reshape(-1).astype(bool), valid, False),
            _split(pixel_scores.reshape(-1).astype(np.float32), valid, 1.0))


def cleanlab_noise_map(issues: list, quality: list) -> list:
    """A noise map from cleanlab's output: 0.5·issue + 0.5·(1 − quality), unflagged < 0.5.

    Ranks cleanlab's issues above every other pixel and, within each group, by its own
    pixel quality score, so AUROC/AP use cleanlab's ranking and F1 at 0.5 scores
    exactly its issue mask (the same convention as the ``confident`` method's noise).
    """
    out = []
    for issue, q in zip(issues, quality):
        base = 0.5 * (1.0 - np.asarray(q, np.float32))
        out.append(np.where(issue, 0.5 + base, np.minimum(base, 0.499)).astype(np.float32))
    return out
