"""Deep Self-Cleansing (Dong et al.; METHODS.md §5): GMM label filter + label cleansing.

Algorithm
---------
1. **Warm-up** (``warmup_fraction`` of the planned epochs, at least 1, or shorter
   where the IoU curve flattens first with ``warmup="plateau"``): CE + Dice on
   the given labels (the baseline objective, before the network memorises the noise).
   An EMA teacher (decay ``ema_decay``) follows the student from the first step.
2. **Label Filtering Module**, at the start of every ``refresh_every``-th epoch after the
   warm-up: the student predicts every training image (eval mode, one whole-image
   tile each) and each pixel's loss is its CE −log p(given). Per class, a 2-component
   1-D Gaussian mixture (scikit-learn) is fitted to the min-max normalised losses of
   the pixels carrying that class (a seeded subsample of at most ``max_fit_pixels``;
   ``REG_COVAR`` = 5e-4 added to the variances, DivideMix's value):
   :func:`fit_loss_mixture`. A pixel's clean probability w is the posterior of the
   low-mean component; pixels with w < ``clean_threshold`` are *filtered* (noisy).
   **(ours)** Losses are clamped to [μ_low, μ_high] before the posterior, which makes
   w non-increasing in the loss (a narrow clean component would otherwise hand the
   very smallest losses to the broad noisy one); a class with fewer than
   ``MIN_FIT_PIXELS`` pixels, or constant losses, is all clean. **(ours)** A
   background pixel the student predicts as background is never filtered
   (``agreeing``).
3. **Label Cleansing Module**: a filtered pixel's target becomes
   w·onehot(given) + (1 − w)·p̂, with p̂ the EMA teacher's prediction averaged over a
   horizontal flip **(ours)**; every other pixel keeps onehot(given). The student
   trains on soft CE against these targets (cached per sample as (K, H, W) maps and
   cropped into batches through ``extras``) + ``dice_weight`` × soft Dice.
   **(ours)** The Dice term compares with the given labels on the unfiltered pixels
   only (``dice_target="clean"``). Dice against the cleansed targets, soft or their
   argmax, was measured to drift: Dice pushes every pixel with some foreground
   target towards 1, so the soft rings that cleansing puts around objects grow
   epoch after epoch through the teacher (8 BBBC039 crops with 30 % missing nuclei:
   Dice(corrected, clean) 0.91 with soft and 0.87 with hard Dice targets, 0.97
   with soft CE alone or with the clean-pixel Dice, whose false-positive pixels were
   0.9k against 17k and 25k). Soft CE alone is stable (its fixed point
   p = (1 − w)·p̂ ≤ p̂ contracts); the clean-pixel Dice keeps the baseline's overlap
   term without feeding the cleansed labels back.
4. **Learnt classes (ours)**: at every refresh a foreground class counts as learnt
   when the student's argmax gives it at least ``learnt_recall`` of the pixels
   labelled with it (pooled over the training set); pixels whose given or predicted
   class is not learnt are left out of the fits and keep w = 1 (Co-Seg's guard, with
   recall instead of IoU: IoU also falls when the network finds the objects the
   labels miss, which is what it should do).
   The GMM assumes the network fits the clean majority of a class's pixels: before
   it does, every pixel of the class has a high loss and the mixture splits them
   arbitrarily, and the teacher's background then replaces the class. In the full
   benchmark (6 BBBC039 epochs, warm-up 1; 8 hippocampus epochs, warm-up 2) the
   first refresh filtered 62 % of the nuclei pixels under Markov noise and the
   final one 72 % / 61 % of the two hippocampus classes (true noise: 10 % and 3 %
   of all pixels); test Dice 0.743 and 0.549 against the floor's 0.919 and 0.708.
   With the guard the hippocampus reached 0.721 (the classes' recall hovers around
   0.5 there, so they are filtered in some epochs only); it does not help the
   Markov case, where the young network over-segments (nuclei recall 0.97,
   background 0.78): that one needed the longer warm-up (``warmup_fraction``).
5. **Trust**: trusted pixels have w = 1 (never filtered, target = given label, noise 0).

Outputs: ``noise`` = 1 − w and ``corrected`` = argmax of the cleansed label, both
computed once more with the final networks; ``probabilities`` = p̂ of the final
teacher (the final model); ``sample_reliability`` from the noise over the
foreground (:func:`~napari_noisyseg.methods.base.reliability_from_noise`).
The teacher is not what wins on boundary noise: with the warm-up covering the whole
budget (``warmup_fraction=1.0``, i.e. the baseline plus an EMA teacher) the full
benchmark's BBBC039 erode/dilate run (seed 0) gave 0.870 test Dice for the teacher
and 0.885 for the student (the floor's own number), against 0.963 with cleansing.

Cost, measured on the project's 2-core CPU, lightly loaded (bf16, width 16, depth
4, 12 BBBC039 images of 520×696, batch 8 × 256², 9 steps per epoch of 0.48 s, 4.4 s
per epoch): one refresh (student pass, teacher pass with its flip, both one tile
per image; per-class GMM fits on 2×10^5 pixels, 0.5 s of it; closed-form
posteriors for every pixel; targets) takes 4.2 s, about +95 % per epoch with the
default refresh every epoch (``refresh_every=2`` halves it). Taking the losses
from the training patches instead would save only the student pass (1.2 s) but
gives w only for the pixels the epoch happened to sample, on augmented patches in
train mode, and p̂ would still cost two teacher forwards per batch; the
whole-image pass is the simpler and cleaner choice.

Parameters (``TrainConfig.params``)
-----------------------------------
ema_decay : float, 0.99
    Teacher EMA decay (reached after a ramp, see :class:`EMATeacher`).
warmup_fraction : float, 0.5
    Fraction of the planned epochs trained with plain CE + Dice first. **(ours)**
    The GMM needs a network that fits the clean majority of each class's pixels;
    after 20 % of a 6-epoch budget (the full benchmark, 40 BBBC039 images) the
    first refresh filtered 62 % of the nuclei pixels and 24 % of the background
    under Markov noise (test Dice 0.743 against the floor's 0.919); after 50 %,
    40 % and 5 %, test 0.915. Erode/dilate 0.958 → 0.963, hippocampus (with the
    learnt-class guard) 0.721 → 0.708 (floor 0.708).
warmup : {"fixed", "plateau"}, "fixed"
    ``"fixed"``: the warm-up lasts ``warmup_fraction`` of the planned epochs.
    ``"plateau"`` **(ours)**: it ends earlier, after the first epoch (the second at
    the soonest) at which no class's IoU against the given labels, tracked on the
    epoch's training patches, rose by ``warmup_gain`` or more since the epoch
    before: the early-learning phase is over (ADELE's reading of the IoU curve,
    without its curve fit), and ``warmup_fraction`` stays the upper bound.
    Measured in quick mode (16 epochs, cap 8): the warm-up ended after 4 / 6 / 4
    epochs; erode/dilate seeds 0 / 1 / 2 0.873 / 0.779 / 0.938 against 0.870 /
    0.771 / 0.932 with the fixed warm-up, missing + spurious seeds 0 / 1 0.875 /
    0.789 against 0.904 / 0.807. Not the default.
warmup_gain : float, 0.02
    IoU gain per epoch below which the ``"plateau"`` warm-up counts as finished.
refresh_every : int, 1
    Epochs between two filter/cleansing refreshes after the warm-up.
max_fit_pixels : int, 200000
    Largest per-class subsample the GMM is fitted on.
clean_threshold : float, 0.5
    Pixels with clean probability w below this are filtered (cleansed).
dice_weight : float, 1.0
    Weight of the soft Dice term (0: soft CE only).
dice_target : str, "clean"
    ``"clean"`` (given labels, unfiltered pixels), ``"hard"`` (argmax of the
    cleansed targets) or ``"soft"`` (the cleansed targets, the literal reading of
    the paper; drifts, see above).
learnt_recall : float, 0.5
    Fraction of a foreground class's given pixels the student must predict as that
    class before the class's pixels are filtered.
agreeing : {"keep_background", "keep", "filter"}, "keep_background"
    **(ours)** Whether a pixel whose given label the student's argmax reproduces
    can be filtered. ``"filter"``: yes, w alone decides (the paper). ``"keep"``:
    no, such pixels are never filtered and their noise is scaled by
    1 − ``clean_threshold`` (:func:`keep_agreeing`). ``"keep_background"``: no
    for background pixels, yes for object pixels. Why background: the Dice term covers the object classes
    on the unfiltered pixels only, so a filtered background pixel no longer counts
    an object prediction there as a false positive and only its soft CE target,
    mixed with the teacher's, holds the boundary; when the mixture flags far more
    background than is wrong the objects grow, the teacher follows and the next
    refresh flags more. Measured on the warm-up student (3 of 6 epochs, full mode,
    debug runs): under Markov noise, seed 1, the mixture flagged 16 % of the
    background pixels (precision 0.32; 5 % truly wrong), the reproduced-label rule
    4.6 % (precision 0.90); under erode/dilate noise it flagged 41 % of the nucleus
    pixels (precision 0.58, recall 1.00) where the rule left 9 % (recall 0.35): the
    dilated rings the network reproduces are what cleansing must remove there. Test
    Dice, BBBC039 full mode, seeds 0 / 1 / 2 ("filter"; "keep"; "keep_background";
    floor): Markov 0.915 / 0.835 / 0.836; 0.947 / 0.927 / 0.926; 0.915 / 0.958 /
    0.962; 0.919 / 0.958 / 0.904. Erode/dilate 0.963 / 0.965 / 0.885; 0.909 / 0.886
    / 0.894; 0.962 / 0.956 / 0.908; 0.885 / 0.930 / 0.892. "keep_background" is the
    only rule of the three that is at or above the floor on all six runs (the
    benchmark reruns in the README).
final_judge : {"teacher", "student"}, "teacher"
    **(ours)** Which network's losses and argmax the final filter (the outputs
    ``noise`` and ``corrected``; training is not affected) uses: the EMA teacher,
    which is also the final model (default), or the student, as every refresh
    does. Measured (full mode, hippocampus, seed 0, debug run): the final student
    reproduced only 0.30 / 0.33 of the two classes' labels (its test Dice 0.505,
    the teacher's 0.731), so the learnt-class guard protected every pixel labelled
    with them and the noise map ranked the dilated rings below the background (AP
    0.088, AUROC 0.28); judged by the teacher (recall 0.56 / 0.68): AP 0.568,
    AUROC 0.971, Dice(corrected, clean) 0.779 against 0.734 (given 0.734); BBBC039
    Markov noise, seed 0: AP 0.693 against 0.676, Dice(corrected, clean) 0.889
    against 0.884. Test Dice is the same by construction. Benchmark rerun (full
    mode, seeds 0–2, README footnote ⁸): hippocampus AP 0.28 → 0.54 (floor 0.55),
    Dice(corrected, clean) 0.750 → 0.761; BBBC039 maps within 0.01 of the
    student's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.metrics import to_json_safe
from ..engine.ema import EMATeacher
from ..engine.losses import ce_dice_loss, masked_mean, soft_ce_map, soft_dice_per_sample
from ..engine.train import TrainingRun
from .base import class_recall, learnt_class_ids, learnt_classes, result_from_run, unlearnt_pixels

NAME = "cleansing"
SUMMARY = ("Deep Self-Cleansing: per-class GMM on pixel losses filters noisy pixels, "
           "which learn from a mix of their label and an EMA teacher (Dong et al.).")
DEFAULTS: dict = {
    "ema_decay": 0.99,
    "warmup_fraction": 0.5,
    "warmup": "fixed",
    "warmup_gain": 0.02,
    "refresh_every": 1,
    "max_fit_pixels": 200_000,
    "clean_threshold": 0.5,
    "dice_weight": 1.0,
    "dice_target": "clean",
    "learnt_recall": 0.5,
    "agreeing": "keep_background",
    "final_judge": "teacher",
}

AGREEING = ("keep_background", "keep", "filter")
FINAL_JUDGES = ("teacher", "student")
MIN_FIT_PIXELS = 16
# Added to each component's variance, in normalised loss units (DivideMix's value): a
# spike of identical tiny losses cannot collapse the clean component to a point.
REG_COVAR = 5e-4
LOSS_FLOOR = 1e-6  # probabilities are clipped here before the log: the largest loss is ~13.8


# ----------------------------------------------------------------------------- the mixture
@dataclass
class LossMixture:
    """A 2-component 1-D Gaussian mixture on min-max normalised losses.

    Attributes
    ----------
    means, variances, weights : tuple of 2 floats
        Components sorted by mean: index 0 is the clean (low-loss) one. In
        normalised units ((loss − low) / (high − low)).
    low, high : float
        The normalisation range (the fitted losses' min and max).
    n_fit : int
        Pixels the mixture was fitted on.
    degenerate : bool
        True when there was nothing to fit (every pixel is then clean).
    """

    means: tuple
    variances: tuple
    weights: tuple
    low: float
    high: float
    n_fit: int = 0
    degenerate: bool = False

    def normalise(self, losses: np.ndarray) -> np.ndarray:
        return (np.asarray(losses, np.float64) - self.low) / max(self.high - self.low, 1e-12)

    def clean_probability(self, losses: np.ndarray) -> np.ndarray:
        """Posterior w of the low-loss component, float32 with the shape of ``losses``.

        Losses are clamped to [μ_low, μ_high] (normalised) first, so w never
        increases with the loss.
        """
        losses = np.asarray(losses)
        if self.degenerate:
            return np.ones(losses.shape, np.float32)
        x = np.clip(self.normalise(losses), self.means[0], self.means[1])
        log_p = [
            np.log(max(w, 1e-12)) - 0.5 * np.log(2 * np.pi * v) - 0.5 * (x - m) ** 2 / v
            for m, v, w in zip(self.means, self.variances, self.weights)
        ]
        w_clean = 1.0 / (1.0 + np.exp(np.clip(log_p[1] - log_p[0], -60.0, 60.0)))
        return w_clean.astype(np.float32)

    def to_dict(self) -> dict:
        return {
            "means": [float(v) for v in self.means],
            "variances": [float(v) for v in self.variances],
            "weights": [float(v) for v in self.weights],
            "low": float(self.low),
            "high": float(self.high),
            "n_fit": int(self.n_fit),
            "degenerate": bool(self.degenerate),
        }


def _all_clean(low: float = 0.0, high: float = 1.0, n_fit: int = 0) -> LossMixture:
    return LossMixture((0.0, 1.0), (1.0, 1.0), (1.0, 0.0), low, high, n_fit, degenerate=True)


def fit_loss_mixture(losses, max_samples: int = 200_000, seed: int = 0) -> LossMixture:
    """Fit the Label Filtering Module's 2-component GMM to one class's pixel losses.

    Parameters
    ----------
    losses : array-like of float, any shape
        Per-pixel losses of the pixels carrying one class (≥ 0).
    max_samples : int
        The fit uses a seeded random subsample of at most this many values
        (min-max normalisation uses every value).
    seed : int

    Returns
    -------
    LossMixture
        ``clean_probability(losses)`` gives each pixel's w.
    """
    values = np.asarray(losses, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < MIN_FIT_PIXELS:
        return _all_clean(n_fit=int(values.size))
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-6:
        return _all_clean(low, high, int(values.size))
    if values.size > max_samples:
        values = np.random.default_rng(seed).choice(values, size=int(max_samples), replace=False)
    x = ((values - low) / (high - low))[:, np.newaxis]
    # scikit-learn costs about 2 s of every command's start; only the per-class mixture needs it
    from sklearn.mixture import GaussianMixture
    gmm = GaussianMixture(
        n_components=2, covariance_type="diag", max_iter=50, tol=1e-3, reg_covar=REG_COVAR, random_state=seed,
    ).fit(x)
    order = np.argsort(gmm.means_.ravel())
    means = gmm.means_.ravel()[order]
    variances = gmm.covariances_.ravel()[order]
    weights = gmm.weights_.ravel()[order]
    return LossMixture(tuple(means), tuple(variances), tuple(weights), low, high, int(values.size))


# ----------------------------------------------------------------------------- the modules
def pixel_losses(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """CE −log p(given) per pixel, float32 (H, W), from probabilities (K, H, W)."""
    index = np.asarray(labels, np.int64).clip(0, probabilities.shape[0] - 1)[np.newaxis]
    given = np.take_along_axis(probabilities, index, axis=0)[0]
    return -np.log(np.clip(given, LOSS_FLOOR, 1.0)).astype(np.float32)


def filter_labels(dataset, losses: list, max_samples: int, seed: int,
                  protected: list | None = None) -> tuple[list, list]:
    """Label Filtering Module: per-class mixtures and every pixel's clean probability w.

    Parameters
    ----------
    dataset : NoisyDataset
    losses : list of ndarray, float32 (H, W)
        Per-pixel losses of every sample.
    protected : list of ndarray, bool (H, W), optional
        Pixels left out of the fits and kept clean (w = 1), e.g. those of classes
        the network has not learnt yet.

    Returns
    -------
    mixtures : list of LossMixture, one per class
    clean : list of ndarray, float32 (H, W)
        w per pixel; 1 on trusted, protected and ignored pixels (the last carry no label).
    """
    if protected is None:
        protected = [np.zeros(s.shape, bool) for s in dataset.samples]
    frozen = [s.trust | s.ignore | p for s, p in zip(dataset.samples, protected)]
    mixtures = []
    for k in range(dataset.n_classes):
        pooled = [loss[(s.labels == k) & ~f] for s, loss, f in zip(dataset.samples, losses, frozen)]
        pooled = np.concatenate(pooled) if pooled else np.zeros(0, np.float32)
        mixtures.append(fit_loss_mixture(pooled, max_samples, seed + k))
    clean = []
    for sample, loss, fixed in zip(dataset.samples, losses, frozen):
        w = np.ones(sample.shape, np.float32)
        for k, mixture in enumerate(mixtures):
            mask = (sample.labels == k) & ~fixed
            if mask.any():
                w[mask] = mixture.clean_probability(loss[mask])
        clean.append(w)
    return mixtures, clean


def keep_agreeing(clean: np.ndarray, predicted: np.ndarray, labels: np.ndarray, threshold: float,
                  classes=None) -> np.ndarray:
    """Map w into [threshold, 1] where the judging network's argmax is the given label; float32 (H, W).

    There ``w' = threshold + (1 − threshold)·w``: such pixels are never filtered
    (the network reproduces their label, so the loss mixture's verdict alone does
    not overrule it) and their noise ``1 − w'`` is ``(1 − threshold)·(1 − w)``,
    which keeps the mixture's ranking among them for the noise map.

    Parameters
    ----------
    clean : ndarray float (H, W)
        w from :func:`filter_labels`.
    predicted, labels : ndarray int (H, W)
        The judging network's argmax (see :func:`cleanse`) and the given labels.
    threshold : float
        ``clean_threshold``.
    classes : tuple of int or None
        Only pixels labelled with these classes (None: every class).
    """
    labels = np.asarray(labels)
    agree = np.asarray(predicted) == labels
    if classes is not None:
        agree &= np.isin(labels, classes)
    clean = np.asarray(clean, np.float32)
    return np.where(agree, threshold + (1.0 - threshold) * clean, clean).astype(np.float32)


def cleansed_targets(labels: np.ndarray, clean: np.ndarray, teacher: np.ndarray, threshold: float) -> np.ndarray:
    """Label Cleansing Module: soft targets (K, H, W) float32 of one sample.

    Filtered pixels (w < ``threshold``) get w·onehot(given) + (1 − w)·p̂; the
    others keep onehot(given).

    Parameters
    ----------
    labels : ndarray, int (H, W)
    clean : ndarray, float (H, W)
        w (1 on trusted pixels, so they are never cleansed).
    teacher : ndarray, float (K, H, W)
        p̂.
    threshold : float
    """
    n_classes = teacher.shape[0]
    one_hot = (np.arange(n_classes)[:, None, None] == np.asarray(labels)[None]).astype(np.float32)
    filtered = clean < threshold
    mixed = clean[None] * one_hot + (1.0 - clean[None]) * teacher
    return np.where(filtered[None], mixed, one_hot).astype(np.float32)


# ----------------------------------------------------------------------------- helpers
def cleanse(run, judge, teacher, params: dict, seed: int, interruptible: bool = False) -> dict | None:
    """Run both modules with the current networks: mixtures, w, p̂ and soft targets per sample.

    ``judge`` is the network whose losses, argmax and class recall decide what is
    filtered: the student at every refresh, the one ``final_judge`` names at the
    end. ``teacher`` gives p̂. With ``interruptible`` it returns None when a stop
    is requested between its stages.
    """
    dataset = run.dataset
    stop = (lambda: run.should_stop()) if interruptible else (lambda: False)
    judge_probabilities = run.predict_whole(judge)
    losses = [pixel_losses(p, s.labels) for p, s in zip(judge_probabilities, dataset.samples)]
    predicted = [p.argmax(0) for p in judge_probabilities]
    recall = class_recall(predicted, dataset)
    learnt = learnt_classes(recall, float(params["learnt_recall"]))
    protected = [unlearnt_pixels(learnt, s.labels, y) for s, y in zip(dataset.samples, predicted)]
    if stop():
        return None
    mixtures, clean = filter_labels(dataset, losses, int(params["max_fit_pixels"]), seed, protected)
    threshold = float(params["clean_threshold"])
    if params["agreeing"] != "filter":
        classes = None if params["agreeing"] == "keep" else (0,)  # 0: background
        clean = [keep_agreeing(w, y, s.labels, threshold, classes)
                 for w, y, s in zip(clean, predicted, dataset.samples)]
    if stop():
        return None
    teacher_probabilities = run.predict_whole(teacher, flip_tta=True)
    targets = [cleansed_targets(s.labels, w, p, threshold)
               for s, w, p in zip(dataset.samples, clean, teacher_probabilities)]
    filtered = []
    for k in range(dataset.n_classes):
        counts = [(np.count_nonzero((s.labels == k) & (w < threshold)), np.count_nonzero(s.labels == k))
                  for s, w in zip(dataset.samples, clean)]
        total = sum(c[1] for c in counts)
        filtered.append(float(sum(c[0] for c in counts) / total) if total else 0.0)
    kept = [(w >= threshold).astype(np.float32) for w in clean]
    return {"mixtures": mixtures, "clean": clean, "teacher": teacher_probabilities, "targets": targets,
            "kept": kept, "filtered": filtered, "class_recall": recall, "learnt": learnt}


def warmup_epochs(run, fraction: float) -> int:
    """Warm-up length from the current epoch plan (re-read every epoch under a time budget)."""
    return max(1, int(round(fraction * run.planned_epochs())))


def iou_plateaued(iou_curve: list, gain: float) -> bool:
    """Whether the last epoch raised no class's IoU by ``gain`` or more.

    Parameters
    ----------
    iou_curve : list of list of float or None
        Per epoch, per class IoU against the given labels (``history["iou"]``).
    gain : float

    Returns
    -------
    bool
        False with fewer than two epochs, or when no class has a value in both of
        the last two.
    """
    if len(iou_curve) < 2:
        return False
    pairs = [(new, old) for new, old in zip(iou_curve[-1], iou_curve[-2]) if new is not None and old is not None]
    return bool(pairs) and all(new - old < gain for new, old in pairs)


def soft_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, dice_weight: float,
              dice_target: str = "clean", labels: torch.Tensor | None = None,
              kept: torch.Tensor | None = None) -> torch.Tensor:
    """Soft CE against the cleansed targets + ``dice_weight`` × soft Dice (a scalar).

    Parameters
    ----------
    logits : (B, K, H, W); targets : (B, K, H, W) cleansed soft labels; weights : (B, H, W)
    dice_target : {"clean", "hard", "soft"}
        What the Dice term compares with: the given ``labels`` on the unfiltered
        pixels only (``kept`` > 0), the argmax of ``targets``, or ``targets``.
    labels : (B, H, W) int64, given labels (for "clean")
    kept : (B, H, W) float, 1 on unfiltered pixels (for "clean")
    """
    ce = masked_mean(soft_ce_map(logits, targets), weights)
    if dice_weight == 0:
        return ce
    if dice_target == "clean":
        dice = soft_dice_per_sample(logits, labels, weights * kept)
    else:
        dice = soft_dice_per_sample(logits, targets.argmax(dim=1) if dice_target == "hard" else targets, weights)
    return ce + dice_weight * dice.mean()


def _history(state: dict | None, robust: bool) -> dict:
    if not robust or state is None:
        return {"stage": "warmup", "gmm_means": None, "gmm_variances": None, "gmm_weights": None,
                "filtered_fraction": None, "class_recall": None, "learnt_classes": None}
    mixtures = [m.to_dict() for m in state["mixtures"]]
    return {
        "stage": "cleansing",
        "gmm_means": [m["means"] for m in mixtures],
        "gmm_variances": [m["variances"] for m in mixtures],
        "gmm_weights": [m["weights"] for m in mixtures],
        "filtered_fraction": state["filtered"],
        "class_recall": to_json_safe(state["class_recall"]),
        "learnt_classes": learnt_class_ids(state["learnt"]),
    }


# ----------------------------------------------------------------------------- method
def fit(dataset, config, events=None):
    """Warm up, then filter noisy pixels with per-class loss GMMs and learn from cleansed labels.

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
    events : Progress, callable or None

    Returns
    -------
    CurationResult
    """
    params = config.with_params(DEFAULTS)
    if int(params["refresh_every"]) < 1:
        raise ValueError("refresh_every must be >= 1")
    if params["warmup"] not in ("fixed", "plateau"):
        raise ValueError(f"warmup must be 'fixed' or 'plateau', not {params['warmup']!r}")
    if params["final_judge"] not in FINAL_JUDGES:
        raise ValueError(f"final_judge must be one of {FINAL_JUDGES}, not {params['final_judge']!r}")
    if params["agreeing"] not in AGREEING:
        raise ValueError(f"agreeing must be one of {AGREEING}, not {params['agreeing']!r}")
    if params["dice_target"] not in ("clean", "hard", "soft"):
        raise ValueError(f"dice_target must be 'clean', 'hard' or 'soft', not {params['dice_target']!r}")
    run = TrainingRun(dataset, config, events)
    student, optimizer = run.new_model()
    teacher = EMATeacher(student, decay=float(params["ema_decay"]))
    scaler = run.make_scaler()
    state = None
    run.closing_passes = 3  # the judge once, the teacher with its flip

    def preview(indices):
        probabilities = run.predict(student, indices)
        noise = [1.0 - np.take_along_axis(p, dataset.samples[i].labels[None].clip(0, p.shape[0] - 1), 0)[0]
                 for p, i in zip(probabilities, indices)]
        student.train()
        return noise, [p.argmax(0) for p in probabilities]

    warm_end = None  # the epoch the robust phase started at
    for epoch in run.epochs():
        if warm_end is None and (epoch >= warmup_epochs(run, params["warmup_fraction"]) or (
                params["warmup"] == "plateau"
                and iou_plateaued(run.history.get("iou", []), float(params["warmup_gain"])))):
            warm_end = epoch
        robust = warm_end is not None
        if robust and (state is None or (epoch - warm_end) % int(params["refresh_every"]) == 0):
            started = time.perf_counter()
            state = cleanse(run, student, teacher.model, params, config.seed + 7919 * epoch, interruptible=True)
            if state is not None:
                run.note_closing(time.perf_counter() - started)  # the final cleanse repeats this work
            if state is None or run.should_stop():
                break
        student.train()
        extras = {"target": (state["targets"], 0.0), "kept": (state["kept"], 0.0)} if robust else None
        for batch in run.batches(extras=extras):
            with run.path.autocast():
                logits = student(batch.image)
            if robust:
                loss = soft_loss(logits, batch.extras["target"], batch.weights, float(params["dice_weight"]),
                                 params["dice_target"], batch.labels, batch.extras["kept"])
            else:
                loss = ce_dice_loss(logits, batch.labels, batch.weights)
            run.step(optimizer, loss, scaler, epoch)
            teacher.update(student)
            run.track(logits.detach(), batch.labels, batch.weights)
            run.maybe_preview(preview)
        run.end_epoch(epoch, **_history(state, robust))

    run.begin_closing()
    judge = teacher.model if params["final_judge"] == "teacher" else student
    final = cleanse(run, judge, teacher.model, params, config.seed + 104729)
    noise = [1.0 - w for w in final["clean"]]
    corrected = [t.argmax(0).astype(np.int64) for t in final["targets"]]
    teacher.model.eval()
    student.eval()
    return result_from_run(
        run, final["teacher"], noise, corrected, {"teacher": teacher.model, "student": student},
        final_model="teacher",
        history_extra={"final_gmm": [m.to_dict() for m in final["mixtures"]],
                       "final_filtered_fraction": final["filtered"],
                       "final_class_recall": to_json_safe(final["class_recall"]),
                       "final_learnt_classes": learnt_class_ids(final["learnt"]),
                       "warmup_epochs": warm_end if warm_end is not None else len(run.history["epoch"])},
    )
