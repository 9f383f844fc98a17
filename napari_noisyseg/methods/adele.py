"""ADELE: adaptive early-learning correction (Liu et al., CVPR 2022; METHODS.md §3).

A network trained on noisy segmentation labels first learns the clean structure
(*early learning*) and only later fits the label errors (*memorisation*), and
different classes reach that point at different times. ADELE watches, per class,
how well the predictions fit the current training labels, detects when that
class starts memorising, and from then on replaces labels where the network is
confident. A multi-scale consistency term keeps the predictions that drive the
correction stable. The procedure follows the authors' code
(github.com/Kangningthu/ADELE, ``SegThor/brat/label_correction.py``,
``brat/train_segthor.py``, ``lib/utils/JSD_loss.py``).

1. **Multi-scale consistency.** Every training batch is forwarded at the scales
   ``scales`` (0.7, 1.0, 1.5): the patch is resized (bilinear) to
   ``round(P·s / 2**depth)·2**depth`` pixels (at least ``2**depth``) so the U-Net
   accepts it, and the logits are resized back to P. Loss =
   ``(Σ_i CE_i + λ·Σ_i KL(p_i ‖ q)) / n_scales`` against the current training
   labels, with q = mean of the softmaxes clamped to [1e-3, 1 − 1e-3] and the KL
   applied where max q ≥ ``rho`` (0.8), averaged over every valid pixel
   (the authors' ``calc_jsd_multiscale``; the division by the number of scales
   is theirs too). **Ours**: the confidence mask is per pixel (the authors take
   one value per image, the image's largest max q); ``dice=True`` adds the
   project's soft Dice to each scale's CE so the supervised part equals the
   baseline's objective (the authors use CE on SegTHOR); the authors' extra 1/3
   scaling of the logits inside each CE (a side effect of their softmaxed scale
   weights) is left out. Three scales cost ≈ (0.49 + 1 + 2.25)× the pixels of one
   forward/backward; ``scales=[1.0]`` turns the consistency term off.
2. **Per-class memorisation onset** (:func:`detect_onset`). After every epoch,
   each foreground class's IoU between the scale-1 training predictions and the
   *current* training labels (accumulated over the epoch's training patches, as
   the authors do) is appended to its curve. Leading epochs are skipped while the
   IoU gain to the next epoch is < ``min_gain`` (0.1). The rest is fitted with
   f(x) = a·(1 − exp(−x^b / c)), a, b ∈ [0, 1], c ≥ 0 (scipy ``curve_fit``,
   method 'trf', p0 = (1, 1, 1), sigma = geomspace(1, 0.1): later epochs weigh
   more). With r(t) = | |f'(t)| − |f'(1)| | / |f'(1)| (values > 1 set to 0, as the
   authors do) over the run's epochs t = 1, 2, …, the class starts memorising at
   the epoch after the ``#{t : r(t) ≤ r}`` epochs of early learning (r = 0.9);
   the class is switched on once the current epoch has reached it, and stays on.
   Like the authors, after a flat start the last flat epoch sits at x = 0 (where
   f(0) = 0) and the onset is shifted back by the skipped epochs. **Ours**: x
   steps by exactly one epoch (the authors' ``linspace(0, L, L)`` steps by
   L/(L − 1)); when the curve rises from the first epoch (no skip) the first IoU
   sits at x = 1, so that f(0) = 0 stands for the untrained network rather than
   for an already trained epoch; when no gain ≥ ``min_gain`` exists at all (a
   class learnt within the first epoch) nothing is skipped (the authors' loop
   would then keep a single point); a fit needs ``min_points`` (3) epochs and a
   fitted rise over the observed epochs of at least ``min_rise`` (0.05), so a
   flat curve never fires; and (``min_iou``, 0.5) a class only starts memorising
   once its IoU against the current labels has reached 0.5. The labels of a class
   are assumed mostly right, so a network that has learnt its clean structure
   agrees with them on most of the class; below IoU 0.5 it has not, and its
   confident predictions must not relabel the class. Without this guard, on the
   hippocampus set (30 epochs, slow learning: the IoU curve has a brief plateau
   at 0.2–0.35 after epoch 3 and keeps rising slowly to 0.5) the fit fired at
   epochs 4 and 6, the immature network's corrections fed on themselves and both
   classes collapsed to background (corrected and test Dice 0).
   **Known limitation**: the rule assumes that the network is better than the
   labels once early learning ends. Where it never gets there within the budget
   (hippocampus slice-wise, 100 epochs: baseline test Dice 0.69 against 0.86 for
   the noisy labels themselves) the guard only delays the damage: confident
   background predictions still erode the classes (corrected Dice 0.27/0.16
   against 0.85/0.88 given). Review the ``corrections`` history before accepting.
   The rule also cannot tell memorisation from a learning rate that decays: with
   ``lr_schedule="cosine"`` the training IoU curve flattens as the rate falls. On
   the hippocampus (erode/dilate, 20 epochs, cosine, seed 0) it fired in epoch 9
   (class 2) and 13 (class 1) while the noisy-trained baseline's test Dice rose to
   epoch 20, and the corrections cost 0.080 test Dice (0.702 against 0.782).
   Accumulated corrections can also erode small structures away. On 4
   hippocampus volumes trained 200 epochs (cosine rate, ``--n-train 4``; seeds
   0 / 1 / 2) the rule fired for class 2 at epoch 34 / 35 / 49 and class 1 at
   74 / 69 / 81, and from about epoch 100 nearly every correction turned
   foreground into background (a few hundred to 3 200 pixels every 10 epochs)
   while the network agreed with its own corrected labels (IoU 0.7–0.85 until
   they were nearly gone): each correction trained a network that drew the
   structures smaller, whose confident background removed the next rim. In the
   end 14 474 / 12 261 / 14 282 pixels differed from the given labels:
   Dice(corrected, clean) 0.007 / 0.290 / 0.046 against 0.735 / 0.732 / 0.737
   given, test Dice 0.007 / 0.185 / 0.039 against the noisy-trained baseline's
   0.649 / 0.729 / 0.690. ``anchor_onset`` (ours, on by default since then) bounds
   the corrections by the predictions at each class's onset; the same three runs
   gave test Dice 0.674 / 0.737 / 0.741 (both classes up: 0.701 / 0.733 against
   0.678 / 0.701) and Dice(corrected, clean) 0.798 / 0.784 / 0.800 (given 0.735 /
   0.732 / 0.737; the baseline's own argmax 0.813 / 0.843 / 0.811). On volumes
   the repository never names (``benchmarks/unseen.py``, same regime) it erased
   nothing (corrected 0.782 / 0.789 / 0.768 against 0.747 / 0.737 / 0.742 given)
   but lost to the baseline on all three seeds (0.554 / 0.697 / 0.648 against
   0.649 / 0.739 / 0.717), each time on one class. The anchor bounds the drift,
   not the onset estimate: with only the smaller class eroded (never-seen volumes,
   seed 0) the network at that class's onset already drew it smaller than the
   labels, the corrections followed it and the class fell to test Dice 0.193
   (baseline 0.568).
3. **Correction.** At the epoch a class first starts memorising, and then every
   ``correct_every`` epochs (10 in the authors' 100-epoch runs; **ours**: scaled to
   the run as ``max(1, round(correct_every · planned / reference_epochs))`` when
   the run is shorter than ``reference_epochs`` = 100, and counted from the last
   correction rather than at absolute multiples), the training set is predicted
   (whole images, averaged over a horizontal flip: the authors average over
   scales and a flip) and a pixel's current label becomes argmax p where (max
   foreground p > ``tau_fg`` or p(background) > ``tau_bg``, both 0.7), its current
   label and the predicted class are background or a class that has started
   memorising, and (``class_constraint``, the authors' default) the predicted
   class is background or a class present in the sample's source (**ours**: the
   whole volume for slices of a volume, the image in 2D). Corrections accumulate
   in per-sample training labels; trusted and ignored pixels are never corrected
   (so trusted pixels are always supervised with their given label). With
   ``anchor_onset`` (**ours**, default) a pixel also moves into or out of class
   ``c`` only where the prediction at ``c``'s onset chose the new label.
4. **Outputs.** ``corrected`` = the accumulated training labels; with
   ``final_correction`` (**ours**) the rule is applied once more with the final
   model's flip-averaged predictions (same classes, same thresholds).
   ``noise``: pixels whose corrected label differs from the given one carry
   1 − p(given label) at the time of the correction that changed them;
   elsewhere 1 − p(given label) from the early-learning snapshot (**ours**): the
   flip-averaged predictions at the first onset, or the final ones when no class
   started memorising. ``probabilities`` are the final model's flip-averaged
   predictions. ``history`` adds the per-class fit (a, b, c, fitted curve, skip,
   onset), the epoch each class started memorising, the correction epochs and
   pixels changed per correction and per class.

Parameters (``config.params``)
------------------------------
scales : list of float, default [0.7, 1.0, 1.5]
    Must contain 1.0 (IoU tracking and prediction use scale 1).
consistency_weight : float, default 1.0
    λ of the KL term.
rho : float, default 0.8
    Consistency applies where max q ≥ rho.
r : float, default 0.9
    Relative slope change that ends early learning.
min_gain : float, default 0.1
min_points : int, default 3
min_rise : float, default 0.05
min_iou : float, default 0.5
    A class never starts memorising while its IoU against the current labels is below this.
tau_fg, tau_bg : float, default 0.7
    METHODS.md's values. Measured (``benchmarks/quality.py --quick``, seed 0, test
    Dice 0.7 / 0.9, floor): BBBC039 erode/dilate 0.837 / 0.870 (0.843), Markov
    boundary 0.800 / 0.806 (0.792); Dice(corrected, clean) 0.852 / 0.834 on
    erode/dilate (given labels 0.791). 0.9 trains a better model from fewer,
    surer corrections; the default stays the specified 0.7.
correct_every : int, default 10
reference_epochs : int, default 100
dice : bool, default True
class_constraint : bool, default True
final_correction : bool, default True
flip_tta : bool, default True
    Flip-averaged predictions for correction, snapshot and output.
anchor_onset : bool, default True
    **(ours)** Anchor every correction to the early-learning estimate: at the epoch
    a class starts memorising, the argmax of the training predictions is kept as
    that class's anchor, and a later correction turns a pixel into or out of the
    class only where the anchor also predicted the new label. Corrected labels
    then lie between the given labels and what the network drew when early
    learning ended, so corrections cannot feed on themselves (see the known
    limitation under 2). ``False``: the authors' unbounded accumulation.
match_area : {False, True, "argmax"}, default True
    **(ours)** Before each correction (and the onset anchor), reweight the predicted
    class probabilities so that every class's area over the training set equals its
    area in the given labels (:func:`match_class_areas`; ``True``: the expected
    area, the prior adjustment of Saerens et al. 2002; ``"argmax"``: the number of
    pixels each class wins, which is what the correction uses; ``False``: off). A
    network at the end of early learning may draw a structure too small (it learns
    cores first) or too large, so its confident background erodes or its confident
    foreground inflates the labels even where they are unbiased in area; the
    reweighting removes that size bias and keeps the shape. Seen on never-seen
    hippocampus volumes (4 volumes × 200 epochs, cosine, seed 0, anchor alone): class
    1 started memorising at IoU 0.5, its corrected labels covered 0.68× the clean
    class-1 area (given 1.01×) and the network trained on them 0.32× on the test
    volumes (test Dice 0.41). Measured (same regime, seeds 0 / 1 / 2, test Dice
    against the noisy-trained baseline's), ``True`` / ``"argmax"`` / ``False``:
    never-seen volumes 0.685 / 0.754 / 0.674, 0.666 / 0.753 / 0.671 and 0.554 /
    0.697 / 0.648 against 0.649 / 0.739 / 0.717; the benchmark split 0.669 / 0.747 /
    0.690, 0.670 / 0.731 / 0.685 and 0.674 / 0.737 / 0.741 against 0.649 / 0.729 /
    0.690. Over those six runs ``True`` is +0.008 above the baseline on average (worst
    −0.043), ``"argmax"`` +0.001 (worst −0.046), ``False`` −0.020 (worst −0.095).
    BBBC039 erode/dilate (full benchmark, seed 0): 0.958 with ``True`` against 0.921
    with ``False`` (baseline 0.847), corrected labels 0.934 against 0.907, noise AP
    0.894 against 0.784. Hence ``True``; it was off by default at first, while it
    trailed the anchor alone on the split, where it was tried first.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.nn import functional as F

from ..engine.events import StateEvent
from ..engine.losses import ce_map, masked_mean, soft_dice_per_sample
from ..engine.train import TrainingRun
from .base import given_class_areas, match_class_areas, noise_from_probabilities, result_from_run

NAME = "adele"
SUMMARY = ("ADELE: multi-scale consistency; per-class memorisation onset from the IoU curve "
           "switches on confident label correction.")
DEFAULTS: dict = {
    "scales": [0.7, 1.0, 1.5],
    "consistency_weight": 1.0,
    "rho": 0.8,
    "r": 0.9,
    "min_gain": 0.1,
    "min_points": 3,
    "min_rise": 0.05,
    "min_iou": 0.5,
    "tau_fg": 0.7,
    "tau_bg": 0.7,
    "correct_every": 10,
    "reference_epochs": 100,
    "dice": True,
    "class_constraint": True,
    "final_correction": True,
    "flip_tta": True,
    "anchor_onset": True,
    "match_area": True,
}


# ----------------------------------------------------------------------------- onset detection


def iou_curve_model(x, a, b, c):
    """f(x) = a·(1 − exp(−x^b / c)), the authors' early-learning curve."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        return a * (1.0 - np.exp(-np.power(x, b) / c))


def iou_curve_slope(x, a, b, c):
    """f'(x) = a·b/c·x^(b−1)·exp(−x^b / c) (x shifted by 1e-6 as the authors do)."""
    x = np.asarray(x, dtype=np.float64) + 1e-6
    with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
        return a * b / c * np.exp(-np.power(x, b) / c) * np.power(x, b - 1.0)


def fit_iou_curve(y, x=None) -> tuple[float, float, float] | None:
    """Fit :func:`iou_curve_model` to ``y`` observed at ``x`` (default 1, 2, …); None when the fit fails.

    Parameters
    ----------
    y : array-like of float, (L,)
    x : array-like of float, (L,), optional

    Returns
    -------
    (a, b, c) or None
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    y = np.asarray(y, dtype=np.float64)
    x = np.arange(1, y.size + 1, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    sigma = np.geomspace(1.0, 0.1, y.size)  # later epochs weigh more
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = curve_fit(
                iou_curve_model, x, y, p0=(1.0, 1.0, 1.0), method="trf", sigma=sigma,
                absolute_sigma=True, bounds=([0.0, 0.0, 0.0], [1.0, 1.0, np.inf]),
            )
    except (RuntimeError, ValueError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    return tuple(float(v) for v in params)


def _clean_curve(iou_curve) -> np.ndarray:
    """float64 curve with missing values (None/nan: class absent that epoch) carried forward."""
    values = np.array([np.nan if v is None else float(v) for v in iou_curve], dtype=np.float64)
    last = 0.0
    for i, v in enumerate(values):
        if np.isfinite(v):
            last = v
        else:
            values[i] = last
    return values


def skip_leading(iou_curve, min_gain: float = 0.1) -> int:
    """Index of the first epoch whose IoU gain to the next one is ≥ ``min_gain`` (0 if none)."""
    y = _clean_curve(iou_curve)
    gains = np.diff(y)
    rising = np.flatnonzero(gains >= min_gain)
    return int(rising[0]) if rising.size else 0


def onset_analysis(iou_curve, n_epochs: int | None = None, r: float = 0.9, min_gain: float = 0.1,
                   min_points: int = 3, min_rise: float = 0.05, min_iou: float = 0.5) -> dict:
    """Where one class's early learning ends, from its per-epoch IoU curve.

    Parameters
    ----------
    iou_curve : sequence of float (or None)
        IoU against the current training labels after epochs 0, 1, …, E − 1.
    n_epochs : int, optional
        Epochs planned for the whole run (the horizon of r(t)); default E.
    r : float
        Relative slope change that ends early learning.
    min_gain, min_points, min_rise, min_iou : see the module docstring.

    Returns
    -------
    dict
        ``start`` (first kept epoch), ``params`` ((a, b, c) or None), ``onset``
        (predicted first memorising epoch, 0-based, or None when it lies beyond
        the horizon or no knee was found), ``fired`` (the current epoch E − 1 has
        reached the onset), ``reason`` (why not, when not fired), ``fitted``
        (f over the kept epochs, for plotting).
    """
    y = _clean_curve(iou_curve)
    n_epochs = int(n_epochs) if n_epochs is not None else y.size
    info = {"start": 0, "params": None, "onset": None, "fired": False, "reason": "", "fitted": []}
    if y.size == 0:
        info["reason"] = "no epochs yet"
        return info
    start = skip_leading(y, min_gain)
    info["start"] = start
    kept = y[start:]
    if kept.size < min_points:
        info["reason"] = f"{kept.size} epochs after the skip (< {min_points})"
        return info
    # x counts epochs of learning: from the start of training (the first IoU sits at x = 1)
    # or, after a flat start, from the last flat epoch (x = 0, where f(0) = 0).
    origin = start if start > 0 else -1
    x = np.arange(start, y.size, dtype=np.float64) - origin
    params = fit_iou_curve(kept, x)
    if params is None:
        info["reason"] = "curve fit failed"
        return info
    info["params"] = [round(v, 6) for v in params]
    fitted = np.nan_to_num(iou_curve_model(x, *params))
    info["fitted"] = [round(float(v), 5) for v in fitted]
    if fitted[-1] - fitted[0] < min_rise:
        info["reason"] = f"fitted rise {fitted[-1] - fitted[0]:.3f} < {min_rise} (flat curve)"
        return info
    horizon = n_epochs - 1 - origin  # t = 1 … horizon are epochs origin + t of the run
    if horizon < 1:
        info["reason"] = "no epochs left"
        return info
    t = np.arange(1, horizon + 1, dtype=np.float64)
    slope0 = abs(float(iou_curve_slope(1.0, *params)))
    if not np.isfinite(slope0) or slope0 <= 0:
        info["reason"] = "zero initial slope"
        return info
    change = np.abs(np.abs(iou_curve_slope(t, *params)) - slope0) / slope0
    change = np.nan_to_num(change, nan=0.0)
    change[change > 1] = 0.0
    early = int(np.count_nonzero(change <= r))
    if early >= horizon:
        info["reason"] = "still in early learning at the end of the run"
        return info
    info["onset"] = origin + early + 1
    reached = y.size - 1 >= info["onset"]
    info["fired"] = bool(reached and y[-1] >= min_iou)
    if not reached:
        info["reason"] = f"onset predicted at epoch {info['onset']}"
    elif not info["fired"]:
        info["reason"] = f"IoU {y[-1]:.3f} < {min_iou}: class not learnt yet"
    return info


def detect_onset(iou_curve, n_epochs: int | None = None, r: float = 0.9, min_gain: float = 0.1,
                 min_points: int = 3, min_rise: float = 0.05, min_iou: float = 0.5) -> int | None:
    """The epoch (0-based) at which a class started memorising, once the curve has reached it.

    Parameters
    ----------
    iou_curve : sequence of float
        Per-epoch IoU between predictions and the current training labels, epochs 0 … E − 1.
    n_epochs : int, optional
        Epochs planned for the run (default: the curve's length).

    Returns
    -------
    int or None
        The predicted onset epoch when the last epoch (E − 1) has reached it; None
        while the class is still in early learning (rising curve), or when the curve
        shows no knee (flat) or is too short to fit.
    """
    info = onset_analysis(iou_curve, n_epochs, r, min_gain, min_points, min_rise, min_iou)
    return info["onset"] if info["fired"] else None


# ----------------------------------------------------------------------------- multi-scale consistency


def scaled_size(size: int, scale: float, multiple: int) -> int:
    """``size · scale`` rounded to a multiple of ``multiple`` (2**depth), at least ``multiple``."""
    return max(multiple, int(round(size * scale / multiple)) * multiple)


def multiscale_logits(model, image: torch.Tensor, scales, multiple: int,
                      memory_format=torch.contiguous_format) -> list:
    """Forward ``image`` (B, C, P, P) at every scale; logits (B, K, P, P) resized back, one per scale.

    A scale whose rounded size equals P forwards the image itself.
    """
    height, width = image.shape[-2:]
    out = []
    for scale in scales:
        size = (scaled_size(height, scale, multiple), scaled_size(width, scale, multiple))
        if size == (height, width):
            out.append(model(image))
            continue
        resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        logits = model(resized.contiguous(memory_format=memory_format))
        out.append(F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False))
    return out


def consistency_map(logits_list, rho: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i KL(p_i ‖ q) per pixel and the pixels where it applies.

    Parameters
    ----------
    logits_list : list of torch.Tensor, (B, K, H, W)
        One per scale, all at the same size.
    rho : float
        The KL applies where max_k q ≥ rho.

    Returns
    -------
    kl : torch.Tensor, float32 (B, H, W)
        Σ_i KL(p_i ‖ q), q = mean_i p_i clamped to [1e-3, 1 − 1e-3].
    confident : torch.Tensor, bool (B, H, W)
    """
    probabilities = [F.softmax(logits.float(), dim=1) for logits in logits_list]
    mixture = torch.stack(probabilities).mean(dim=0).clamp(1e-3, 1 - 1e-3)
    log_mixture = mixture.log()
    kl = sum(F.kl_div(log_mixture, p, reduction="none").sum(dim=1) for p in probabilities)
    confident = mixture.detach().amax(dim=1) >= rho
    return kl, confident


def adele_loss(logits_list, labels: torch.Tensor, weights: torch.Tensor, rho: float = 0.8,
               consistency_weight: float = 1.0, dice: bool = True) -> tuple[torch.Tensor, dict]:
    """``(Σ_i sup_i + λ·Σ_i KL(p_i ‖ q)) / n_scales`` on weighted pixels.

    Parameters
    ----------
    logits_list : list of torch.Tensor, (B, K, P, P)
    labels : torch.Tensor, int64 (B, P, P)
        Current training labels.
    weights : torch.Tensor, float (B, P, P)
        0 on padding and ignored pixels.

    Returns
    -------
    loss : torch.Tensor (scalar)
    parts : dict of float
        ``loss``, ``supervised``, ``consistency`` and ``consistent_fraction`` (share of
        valid pixels where max q ≥ rho).
    """
    supervised = 0.0
    for logits in logits_list:
        supervised = supervised + masked_mean(ce_map(logits, labels), weights)
        if dice:
            supervised = supervised + soft_dice_per_sample(logits, labels, weights).mean()
    n_scales = len(logits_list)
    if n_scales > 1 and consistency_weight > 0:
        kl, confident = consistency_map(logits_list, rho)
        consistency = masked_mean(kl * confident, weights)
        fraction = float((confident * (weights > 0)).sum() / (weights > 0).sum().clamp(min=1))
    else:
        consistency = torch.zeros((), device=labels.device)
        fraction = 0.0
    loss = (supervised + consistency_weight * consistency) / n_scales
    parts = {
        "loss": float(loss.detach()),
        "supervised": float(supervised.detach()) / n_scales,
        "consistency": float(consistency.detach()),
        "consistent_fraction": fraction,
    }
    return loss, parts


# ----------------------------------------------------------------------------- label correction


def correction_period(correct_every: int, planned_epochs: int, reference_epochs: int = 100) -> int:
    """Epochs between corrections: ``correct_every`` scaled down for runs shorter than the reference."""
    if planned_epochs >= reference_epochs:
        return max(1, int(correct_every))
    return max(1, int(round(correct_every * planned_epochs / reference_epochs)))


def correct_labels(probabilities: np.ndarray, current: np.ndarray, memorising, tau_fg: float = 0.7,
                   tau_bg: float = 0.7, present=None, frozen: np.ndarray | None = None,
                   anchors: dict | None = None) -> np.ndarray:
    """One ADELE correction of one sample's training labels.

    Parameters
    ----------
    probabilities : ndarray, float32 (K, H, W)
    current : ndarray, int (H, W)
        Current training labels.
    memorising : iterable of int
        Foreground classes that have started memorising.
    tau_fg, tau_bg : float
        A pixel is confident when max foreground p > tau_fg or p(background) > tau_bg.
    present : iterable of int, optional
        Classes the prediction may introduce besides background (the class constraint).
    frozen : ndarray of bool (H, W), optional
        Trusted and ignored pixels: never changed.
    anchors : dict of int -> ndarray of int (H, W), optional
        Per foreground class, the argmax of the predictions at the epoch that class
        started memorising. A pixel that is, or would become, class ``c`` changes only
        where ``anchors[c]`` also predicted the new class (``anchor_onset``).

    Returns
    -------
    ndarray, int64 (H, W)
        The new labels (a new array).
    """
    predicted = probabilities.argmax(axis=0)
    confident = (probabilities[0] > tau_bg)
    if probabilities.shape[0] > 1:
        confident |= probabilities[1:].max(axis=0) > tau_fg
    allowed = np.array(sorted({0} | {int(c) for c in memorising}))
    replace = confident & np.isin(current, allowed) & np.isin(predicted, allowed)
    if present is not None:
        replace &= np.isin(predicted, np.array(sorted({0} | {int(c) for c in present})))
    if frozen is not None:
        replace &= ~frozen
    for c, anchor in (anchors or {}).items():
        involved = (current == c) | (predicted == c)
        replace &= ~involved | (anchor == predicted)
    return np.where(replace, predicted, current).astype(np.int64)


def _source_classes(dataset) -> list:
    """Per sample: the foreground classes present anywhere in its source (image or volume)."""
    per_source: dict = {}
    for sample in dataset.samples:
        present = per_source.setdefault(sample.source, set())
        present.update(int(c) for c in np.unique(sample.labels) if c > 0)
    return [per_source[sample.source] for sample in dataset.samples]


class _Corrector:
    """The per-sample training labels and what every correction changed."""

    def __init__(self, dataset, params: dict):
        self.dataset = dataset
        self.params = params
        self.labels = [np.array(s.labels, dtype=np.int64, copy=True) for s in dataset.samples]
        self.frozen = [s.trust | s.ignore for s in dataset.samples]
        self.present = _source_classes(dataset) if params["class_constraint"] else [None] * len(dataset)
        # 1 − p(given) at the correction that last changed a pixel; nan where never changed.
        self.noise_at_change = [np.full(s.shape, np.nan, np.float32) for s in dataset.samples]
        self.records: list = []
        # Per class: per sample, the argmax at the epoch the class started memorising.
        self.anchors: dict = {}
        self.area_weights: list = []
        if params["match_area"]:
            # The given labels never change: their class areas (ignored pixels left out) are fixed.
            self.area_targets, self.counted = given_class_areas(dataset)

    def matched(self, probabilities: list) -> list:
        """``probabilities`` with each class's (expected or argmax) area set to its area in the
        given labels (``match_area``), else unchanged."""
        if not self.params["match_area"]:
            return probabilities
        area = "argmax" if self.params["match_area"] == "argmax" else "soft"
        matched, weights = match_class_areas(probabilities, self.area_targets, self.counted,
                                             tolerance=1e-3 if area == "soft" else 1e-2, area=area)
        self.area_weights.append([float(w) for w in weights])
        return matched

    def set_anchor(self, classes, probabilities: list) -> None:
        """Keep the predictions' argmax as the anchor of each class that starts memorising now."""
        if not self.params["anchor_onset"]:
            return
        argmax = [p.argmax(axis=0).astype(np.uint8) for p in probabilities]
        for c in classes:
            self.anchors[int(c)] = argmax

    def apply(self, probabilities: list, memorising, epoch) -> dict:
        n_classes = self.dataset.n_classes
        changed_total, to_class, from_class = 0, np.zeros(n_classes, np.int64), np.zeros(n_classes, np.int64)
        for i, (sample, probs) in enumerate(zip(self.dataset.samples, probabilities)):
            anchors = {c: per_sample[i] for c, per_sample in self.anchors.items()}
            new = correct_labels(probs, self.labels[i], memorising, self.params["tau_fg"], self.params["tau_bg"],
                                 self.present[i], self.frozen[i], anchors)
            changed = new != self.labels[i]
            if changed.any():
                self.noise_at_change[i][changed] = noise_from_probabilities(probs, sample.labels)[changed]
                changed_total += int(changed.sum())
                to_class += np.bincount(new[changed], minlength=n_classes)[:n_classes]
                from_class += np.bincount(self.labels[i][changed], minlength=n_classes)[:n_classes]
                self.labels[i] = new
        differs = sum(int((lab != s.labels).sum()) for lab, s in zip(self.labels, self.dataset.samples))
        record = {
            "epoch": epoch,
            "classes": sorted(int(c) for c in memorising),
            "pixels_changed": changed_total,
            "changed_to_class": to_class.tolist(),
            "changed_from_class": from_class.tolist(),
            "pixels_differing_from_given": differs,
        }
        self.records.append(record)
        return record

    def noise(self, snapshot: list) -> list:
        """Correction-time noise where the label was changed, the snapshot elsewhere."""
        out = []
        for labels, sample, at_change, base in zip(self.labels, self.dataset.samples, self.noise_at_change, snapshot):
            use = (labels != sample.labels) & np.isfinite(at_change)
            out.append(np.where(use, at_change, base).astype(np.float32))
        return out


# ----------------------------------------------------------------------------- training


def _onset_params(params: dict) -> dict:
    return {key: params[key] for key in ("r", "min_gain", "min_points", "min_rise", "min_iou")}


def fit(dataset, config, events=None):
    """Train with multi-scale consistency and correct labels class by class once they start memorising.

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
        ``config.params`` overrides :data:`DEFAULTS`.
    events : Progress, callable or None

    Returns
    -------
    CurationResult
    """
    return _fit(dataset, config, events)


# Measured (README, "The viewer's own second round"): on never-seen volumes this retrain tested below a
# fresh baseline on the same labels on two seeds of three (mean -0.012), at 2.6x its time, so the note
# points the user there.
REFIT_NOTE = ("afresh on the decided labels as they stand; its label correction runs once, at the end "
              "(the method baseline, trained on the same labels, tested higher on average in about a "
              "third of the time)")


def memorising_classes(history: dict) -> list:
    """The foreground classes an ADELE run corrected, as its run recorded them
    (``history["refit_state"]``, kept by a saved model too); for a run folder written before
    that record existed, those a retrain carried over (``history["carried_memorising"]``) or
    those whose onset fired; [] where the history records none."""
    recorded = _recorded_memorising(history)
    return [] if recorded is None else recorded


def _recorded_memorising(history: dict) -> list | None:
    """:func:`memorising_classes`, or None where the history does not say (a model file saved
    before ``refit_state`` existed): the one place that knows where a run records them."""
    state = history.get("refit_state")
    if isinstance(state, dict) and state.get("memorising_classes") is not None:
        classes = state["memorising_classes"]
    elif history.get("carried_memorising") is not None:
        classes = history["carried_memorising"]
    elif "onset_epoch" in history or "carried_memorising" in history:
        classes = [c for c, epoch in (history.get("onset_epoch") or {}).items() if epoch is not None]
    else:
        return None
    return sorted(int(c) for c in classes)


def refit_refusal(previous) -> str:
    """Why :func:`refit` cannot follow ``previous``: a model loaded from a checkpoint that does
    not record which classes its run corrected (saved before ``refit_state`` existed) ("" when
    known)."""
    if _recorded_memorising(previous.history or {}) is not None:
        return ""
    return "its run history, which says which classes it corrected, is not in this model file, saved by an older version"


def refit(dataset, config, previous, events=None):
    """ADELE's retrain after a person decided on an earlier ADELE run's proposals.

    A fresh network trains with the multi-scale consistency on the decided labels as
    they stand: no onset detection and no correction during training. The earlier
    run's onset already turned into the proposals a person decided on; firing it again
    on those labels made corrections accumulate on the undecided pixels. Measured
    (never-seen hippocampus volumes, 4 volumes × 200 epochs, cosine, seeds 0 / 1 / 2,
    every proposal accepted, ``benchmarks/unseen.py --retrain-with-decisions``): that
    second round ended on labels worse than the ones it was given (0.740–0.764 against
    0.794–0.824) and its test Dice fell below the noisy-trained baseline on all three
    seeds (0.648 / 0.725 / 0.662 against 0.649 / 0.739 / 0.717), where a fresh baseline
    on the same labels reached 0.712 / 0.762 / 0.721. After training, the correction
    rule runs once on the final model's predictions (``final_correction``; no onset
    anchor) for the classes the earlier run found memorising
    (:func:`memorising_classes`); those changes are the new proposals, and nothing
    trains on them. Trusted pixels are never changed. Measured with this retrain (the same
    regime, seeds 0 / 1 / 2, fp32 on another CPU, so other numbers): its labels no longer drift
    (0.786 / 0.822 / 0.824 at the end against 0.788 / 0.827 / 0.827 given); test Dice 0.671 /
    0.738 / 0.747 against a fresh baseline on the same labels 0.688 / 0.763 / 0.742 (mean
    −0.012, at 2.6× its training time); the floor was 0.685 / 0.686 / 0.722. The first-run
    procedure on seed 0's labels, on the same machine, reached 0.627, its labels drifting to
    0.721.

    Parameters
    ----------
    dataset : NoisyDataset
        Usually the cleaned labels with the decided pixels trusted.
    config : TrainConfig
    previous : CurationResult
        An ADELE result (its ``history`` names the memorising classes).
    events : Progress, callable or None

    Returns
    -------
    CurationResult
        ``history["carried_memorising"]`` holds the classes corrected at the end.

    A model saved and loaded again (Save model / Load model, or Export's checkpoint) keeps
    ``history["refit_state"]``, so its Retrain is this one too.
    """
    return _fit(dataset, config, events, carried=memorising_classes(previous.history or {}))


def _fit(dataset, config, events=None, carried=None):
    params = config.with_params(DEFAULTS)
    scales = [float(s) for s in params["scales"]]
    if not scales or not any(math.isclose(s, 1.0) for s in scales) or min(scales) <= 0:
        raise ValueError(f"adele: scales must be positive and include 1.0, got {params['scales']}")
    if params["match_area"] not in (False, True, "argmax"):
        raise ValueError(f"adele: match_area must be false, true or \"argmax\", got {params['match_area']!r}")
    scale_one = next(i for i, s in enumerate(scales) if math.isclose(s, 1.0))
    run = TrainingRun(dataset, config, events)
    model, optimizer = run.new_model()
    scaler = run.make_scaler()
    corrector = _Corrector(dataset, params)
    classes = list(range(1, dataset.n_classes))
    curves: dict = {c: [] for c in classes}
    analyses: dict = {c: None for c in classes}
    onset_epoch: dict = {c: None for c in classes}
    snapshot = None
    snapshot_epoch = None
    last_correction = None
    periods, horizons = [], []
    flip = bool(params["flip_tta"])
    run.closing_passes = 2 if flip else 1

    def preview(indices):
        probabilities = run.predict(model, indices)
        noise = [noise_from_probabilities(p, dataset.samples[i].labels) for p, i in zip(probabilities, indices)]
        return noise, [corrector.labels[i].copy() for i in indices]

    for epoch in run.epochs():
        model.train()
        for batch in run.batches(extras={"current": (corrector.labels, 0)}):
            labels = batch.extras["current"]
            with run.path.autocast():
                logits = multiscale_logits(model, batch.image, scales, run.multiple, run.path.memory_format(4))
            loss, parts = adele_loss(logits, labels, batch.weights, params["rho"],
                                     params["consistency_weight"], params["dice"])
            run.step(optimizer, loss, scaler, epoch, parts)
            run.track(logits[scale_one].detach(), labels, batch.weights)
            run.maybe_preview(preview)
        run.end_epoch(epoch, memorising=sorted(c for c in classes if onset_epoch[c] is not None))
        if run.should_stop():
            break
        iou = run.history["iou"][-1] if run.history.get("iou") else None
        planned = run.planned_epochs()
        horizons.append(planned)
        started = []
        for c in classes:
            curves[c].append(None if not iou or iou[c] is None else float(iou[c]))
            if onset_epoch[c] is not None or carried is not None:
                continue
            analyses[c] = onset_analysis(curves[c], planned, **_onset_params(params))
            if analyses[c]["fired"]:
                onset_epoch[c] = epoch
                started.append(c)
        memorising = [c for c in classes if onset_epoch[c] is not None]
        period = correction_period(params["correct_every"], planned, params["reference_epochs"])
        periods.append(period)
        due = bool(started) or (last_correction is not None and epoch - last_correction >= period)
        if not memorising or not due:
            continue
        probabilities = run.predict(model, flip_tta=flip)
        if snapshot is None:
            snapshot = [noise_from_probabilities(p, s.labels) for p, s in zip(probabilities, dataset.samples)]
            snapshot_epoch = epoch
        matched = corrector.matched(probabilities)
        corrector.set_anchor(started, matched)
        record = corrector.apply(matched, memorising, epoch)
        last_correction = epoch
        what = f"class {', '.join(map(str, started))} started memorising; " if started else ""
        run.progress.emit(StateEvent(
            "correcting", f"Epoch {epoch + 1}: {what}{record['pixels_changed']} label pixels corrected."))

    run.begin_closing()
    probabilities = run.predict(model, flip_tta=flip)
    memorising = [c for c in classes if onset_epoch[c] is not None] if carried is None else \
        [c for c in classes if c in carried]
    if params["final_correction"] and memorising:
        corrector.apply(corrector.matched(probabilities), memorising, "final")
    if snapshot is None:
        snapshot = [noise_from_probabilities(p, s.labels) for p, s in zip(probabilities, dataset.samples)]
    noise = corrector.noise(snapshot)
    corrected = [labels.copy() for labels in corrector.labels]
    history_extra = {
        "iou_curves": {str(c): curves[c] for c in classes},
        "curve_fits": {str(c): analyses[c] for c in classes},
        "onset_epoch": {str(c): onset_epoch[c] for c in classes},
        "snapshot_epoch": snapshot_epoch,
        "correction_epochs": [r["epoch"] for r in corrector.records],
        "pixels_changed": [r["pixels_changed"] for r in corrector.records],
        "corrections": corrector.records,
        "correction_period": periods,
        # The run length each epoch's onset analysis assumed (a time budget's estimate moves).
        "planned_epochs": horizons,
        "area_weights": corrector.area_weights,
        "scales": scales,
        "carried_memorising": None if carried is None else memorising,
        # What a retrain needs from this run; the checkpoint keeps it, so a loaded model retrains alike.
        "refit_state": {"memorising_classes": memorising},
    }
    return result_from_run(run, probabilities, noise, corrected, {"model": model}, history_extra=history_extra)
