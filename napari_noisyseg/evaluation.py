"""Scoring folders of predictions and noise maps against truth (``noisyseg evaluate``).

Kept apart from :mod:`napari_noisyseg.pipeline` so that scoring never imports torch: it
reads files and counts pixels, and starts in about a second.
"""

from __future__ import annotations

import numpy as np

from .core import io, metrics


def evaluate_folders(pred_dir, truth_dir, noise_dir=None, noise_truth_dir=None) -> dict:
    """Segmentation metrics of predictions against truth (paired by stem), and
    noise-detection metrics of noise maps against true noise masks when given."""
    pairs = io.pair_files(pred_dir, truth_dir)
    preds, truths, spacing = [], [], None
    for _, pred_path, truth_path in pairs:
        # A prediction with no background is a bad model's output to score, not an inverted mask.
        pred, _ = io.read_labels(pred_path, allow_full=True)
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
