"""Co-Seg: co-train two U-Nets with sample sifting, correct labels, retrain (METHODS.md §2).

The four stages of Huang et al., as this project reads them:

1. **Co-training with sifting.** Two U-Nets ``f`` and ``g`` (seed offsets 0 and 1;
   with ``config.dropout`` > 0 they draw different dropout masks, since both
   consume the seeded global generator in turn). On every mini-batch of patches
   each network scores every sample (a sample is one patch) and keeps the
   fraction ``R(t) = 1 − ε·min(t / T_k, 1)`` with the smallest score; the samples
   ``f`` keeps update ``g`` and vice versa (co-teaching). One AdamW over both
   parameter sets is the same as two optimisers (the losses do not interact).
2. **Reliable subset**: images kept by both networks in most of the last
   ``reliable_window`` (3) epochs of stage 1 (**ours**: "most" is read over the
   image's pooled patches of those epochs: more than half kept by both; a
   per-epoch vote is too coarse when an image gives only a few patches per epoch).
3. **Label correction** of the other images: where ``f`` and ``g`` agree and their
   mean confidence is ≥ ``tau``, the label becomes their argmax. A corrected image
   whose ``Dice(f, g)`` ≥ ``join_dice`` joins the reliable set; in the others the
   uncertain pixels (``f``/``g`` disagree or are below ``tau``) get weight 0.
4. **Retrain** a network (seed offset 2) on the updated set, ignored pixels masked.

Parameters (``config.params``; defaults in :data:`DEFAULTS`)
-------------------------------------------------------------
granularity : {"image", "pixel"}
    ``"image"`` (default): the paper's sample-level selection. ``"pixel"``
    **(ours)**: small-loss selection of pixels inside each patch, per given class
    (the ``floor((1 − R(t))·n)`` highest-score pixels of each class in each patch
    are dropped). The per-image selection record (stage 2) uses the sample-level
    ranking in both modes. Measured on 12 BBBC039 images with erode/dilate noise
    (r 2–5, every image), 20 epochs: pixel mode made the stage-1 networks much
    worse (noise AUROC 0.79 vs 0.97, test Dice of f+g 0.82 vs 0.88): dropping the
    hardest 30 % of each class's pixels removes the boundary supervision the
    networks need. A variant that only dropped pixels the network already
    misclassified was worse still (AUROC 0.56: confirmation bias, foreground
    grows unchecked). Hence ``"image"``.
epsilon : float or "auto"
    ε, the expected fraction of noisy samples. METHODS.md's fixed value is 0.3;
    ``"auto"`` (default, **ours; the spec's "estimated from the warm-up loss
    distribution"**): after the first stage-1 epoch (R = 1, nothing dropped yet)
    ``f`` and ``g`` predict every training image; each image's whole-image loss
    (mean pixel CE + soft Dice of their mean against the given labels; images that
    are background in the labels and in the prediction left out, as in the
    sifting) is fitted with one and with two Gaussians, and ε is the weight of the
    high-loss component when BIC prefers two, else 0 (no noisy group to sift),
    capped at ``MAX_AUTO_EPSILON`` (0.5: small-loss sifting assumes the clean
    samples are the majority). Fewer than ``MIN_AUTO_SAMPLES`` images:
    ``FALLBACK_EPSILON`` (0.3). ``history["epsilon_estimate"]`` keeps the fit. A
    warm-started :func:`refit` reuses the previous run's ε. Measured against 0.3
    on the same CPU and runs (AMD EPYC, fp32; BBBC039 noise seed 0, hippocampus
    noise seed = training seed; the README's "epsilon=auto" tables): ``bbbc039/erode_half`` (half the images eroded),
    training seeds 0 / 1 / 2: ε 0.5 (fit 0.62–0.68, capped), test Dice 0.962 /
    0.954 / 0.974 against 0.969 / 0.939 / 0.926, Dice(corrected, clean) 0.961 /
    0.942 / 0.931 against 0.938 / 0.899 / 0.877, noise AP 0.82 / 0.84 / 0.86
    against 0.81 / 0.46 / 0.40. ``dilate_half`` (the network sides with the
    dilating annotator; training seed 0): ε 0.05, no exact image dropped, 0.933
    against 0.922 (floor 0.836), corrected 0.898 against 0.882 (given 0.892), AP
    0.58 against 0.49. Hippocampus, seeds 0 / 1 / 2: minority erode ε 0 /
    0.5 / 0.5, 0.728 / 0.732 / 0.719 against 0.658 / 0.707 / 0.534 (floor 0.651 /
    0.697 / 0.540); erode/dilate ε 0.31 / 0 / 0.30, 0.742 / 0.682 / 0.620 against
    0.753 / 0.720 / 0.613 (floor 0.747 / 0.735 / 0.720: both lose). Where every
    image is noisy (``bbbc039/erode_dilate``, Markov boundary) the fit finds no
    group or splits off one or two outlier images (ε ≤ 0.05, which drops nothing
    from a batch of 8) and Co-Seg ties or beats the floor (erode/dilate 0.904 /
    0.907 / 0.887 against 0.877 / 0.909 / 0.892; with 0.3 on training seed 0:
    0.881; Markov 0.944 against 0.872). On the hippocampus slices the estimate is erratic (0 / 0.5 / 0.5 for
    one noise type): per-slice losses there follow how much structure a slice
    shows as much as its noise.
t_k : float
    Epochs over which ``R(t)`` falls from 1 to ``1 − ε`` (10). **(ours)** Short runs
    use ``min(t_k, stage-1 epochs / 2)`` (at least 1), so that stage 1 spends its
    second half at the full drop rate and the last ``reliable_window`` epochs see it.
lambda_agree : float
    λ of the agreement term (1) **(ours)**.
score : {"own", "joint"}
    How a network scores a sample. ``"joint"`` is the spec's formula
    ``loss_f + loss_g + λ·(1 − Dice(f, g))``: the same number for both networks,
    so ``f`` and ``g`` keep identical sets (JoCoR-like). ``"own"`` **(ours,
    default)**: ``f`` ranks by ``loss_f + λ·(1 − Dice(f, g))`` and ``g`` by
    ``loss_g + λ·(1 − Dice(f, g))``, keeping co-teaching's cross-update while still
    favouring samples the two networks agree on. ``loss`` is the mean pixel CE +
    soft Dice of the patch (see ``sample_loss``); ``Dice(f, g)`` the soft
    foreground Dice between the two probability maps. Per pixel (pixel mode): pixel CE and ``½·Σ_k |p_f − p_g|``.
sample_loss : {"ce_dice", "ce"}
    **(ours)** The loss in a sample's score: the spec's mean pixel CE + soft Dice
    (``"ce_dice"``, default) or the mean pixel CE alone (``"ce"``). The update
    loss is CE + soft Dice either way; ``history["loss_f"]``/``["loss_g"]`` report
    the score's loss. Why try CE alone: the soft Dice of a patch falls as its
    foreground grows, so it might rank patches by how much foreground they hold
    rather than by how wrong their labels are. Measured on ``bbbc039/dilate_half``
    (half the images' nuclei dilated 2–5 px; full benchmark, noise and training
    seed 0): "ce" kept
    the dilated images more, not less (selection record against the dilated
    images, AUROC 0.20 against 0.41 with "ce_dice") and trained a worse network
    (0.907 against 0.920; floor 0.832). The default stays the spec's. The score is not
    the cause: ``benchmarks/sifting_diagnostic.py`` shows the network itself learns the
    two annotators' mix there and draws every nucleus dilated, so the exact images cost
    more loss under either score; on ``bbbc039/erode_half`` it sides with the exact
    annotator and the same ranking finds the eroded images (AUROC 0.88–0.91).
tau : float
    Mean-confidence threshold of the label correction (0.8).
join_dice : float or None
    Dice(f, g) at which a corrected image joins the reliable set (0.9); ``None``:
    corrected images never join, so their uncertain pixels are always ignored.
    On BBBC039 nearly every image reaches 0.9, so its uncertain band (where the
    boundary noise is) trains on the given labels again. Measured with
    ``correct_reliable=True`` and ``join_dice=None`` (full mode, Markov boundary
    noise, seeds 0 / 1 / 2): 0.947 / 0.911 / 0.865 against the floor's 0.919 /
    0.958 / 0.904 and the defaults' 0.902 / 0.948 / 0.874; erode/dilate seed 0
    0.890 (floor 0.885). Better than the defaults on one seed of three: not a default.
    ``join_dice=0`` (every corrected image joins: its uncertain pixels train on
    their given labels instead of being ignored), 4 hippocampus volumes × 200
    epochs, cosine rate, seeds 0 / 1 / 2 (bf16 EPYC): test Dice 0.713 / 0.622 /
    0.677 against the default's 0.713 / 0.611 / 0.661 (floor 0.649 / 0.729 /
    0.690); Dice(corrected, clean) 0.831 / 0.809 / 0.815 against 0.811 / 0.758 /
    0.793; noise AP 0.708 / 0.578 / 0.610 against 0.630 / 0.476 / 0.532. Better
    labels and noise map, the same loss to the floor on test Dice: not a default
    from one split.
stage1_ratio : float
    **(ours)** Length of stage 1 relative to the retraining (0.6). An epoch budget
    of E epochs is the stage-4 network's: it retrains for all E epochs, like the
    baseline it is compared with, and stage 1 runs ``round(0.6·E)`` epochs in
    front of it (the run reports E + that many epochs; its wall time is about
    2.2 baseline runs, since a stage-1 epoch trains two networks). Under a
    ``minutes`` budget stage 1 gets ``0.6 / 1.6`` of the planned epochs (the plan
    counts stage-1 epochs while stage 1 runs, so up to 37 % of the time; less where
    the first, slower epoch already ends it: one of 15 epochs in a 3-minute run on
    the four sample images), and the retraining trains until the time is up.
    Earlier the budget was split 60 / 40, so the fresh stage-4 network trained
    40 % of what the baseline did and lost to it at every budget the benchmark
    used (quick BBBC039 erode/dilate, 64 steps in all, seeds 0 / 1 / 2: 0.944 /
    0.594 / 0.295 against the floor's 0.843 / 0.769 / 0.891; full mode 0.745
    against 0.885). With the whole budget for stage 4 the same quick runs gave
    0.850 / 0.942 / 0.837 (Dice(corrected, clean) 0.862 / 0.880 / 0.874 against
    0.79 given).
reliable_window : int
    Stage-1 epochs the reliable subset looks back on (3).
correct_reliable : bool
    **(ours)** Also apply the stage-3 rule to the reliable images' training labels
    (the paper leaves them as given; off). Measured in full mode (seed 0, test Dice,
    default in brackets, floor 0.885 / 0.919): BBBC039 erode/dilate 0.881 (0.884),
    Markov boundary 0.921 (0.902); with ``tau`` 0.5 as well (every pixel where f
    and g agree takes their argmax) 0.869 and 0.888. Correcting every image does
    not help on boundary noise: f and g, trained on the same noisy labels, put the
    boundary where the floor does, so labels copied from them teach the floor's
    boundary again (Dice(corrected, clean) 0.875 / 0.834, given 0.784 / 0.778).
    Where the floor memorises (4 hippocampus volumes × 200 epochs, cosine rate, seeds
    0 / 1 / 2, bf16 EPYC) the floor's argmax is far better than the given labels
    (0.81–0.84 against 0.73), so correcting the reliable half was tried there: test
    Dice 0.725 / 0.588 / 0.707 against the default's 0.713 / 0.611 / 0.661 (floor 0.649 /
    0.729 / 0.690), Dice(corrected, clean) 0.816 / 0.763 / 0.796 against 0.811 / 0.758 /
    0.793. The pair's confident pixels (τ 0.8) change little on those images, and seed
    1's fresh stage-4 network still loses class 1 (0.567). Off.
stage4_init : {"auto", "fresh", "f"}
    The stage-4 network starts from a fresh initialisation (the paper) or
    **(ours)** from ``f``'s weights; ``"auto"`` (default, ours) starts fresh when
    ``f`` and ``g`` learnt every class by the end of stage 1 (see ``learnt_iou``)
    and from ``f`` otherwise. Measured with the whole budget for stage 4
    (``benchmarks/quality.py --quick`` settings, seeds 0 / 1 / 2, test Dice, fresh
    against f, floor in brackets): BBBC039 erode/dilate 0.855 / 0.924 / 0.837
    against 0.840 / 0.779 / 0.913 (0.843 / 0.769 / 0.891); Markov boundary
    0.773 / 0.932 / 0.864 against 0.814 / 0.741 / 0.856 (0.792 / 0.738 / 0.919);
    missing + spurious 0.912 / 0.966 / 0.932 against 0.968 / 0.963 / 0.972
    (0.972 / 0.927 / 0.966); hippocampus erode/dilate, seed 0, 0.073 against 0.567
    (0.501). ``f`` has learnt the systematic boundary shift of the noisy labels
    during stage 1 and a network that starts from it keeps some of it, so a fresh
    network is better where the pair is good enough to correct the labels. On the
    hippocampus the pair had not learnt either class after 18 epochs (IoU against
    the given labels 0.01 and 0.26) and a fresh network, trained 30 epochs, did not
    find them at all (IoU 0 throughout), where ``f`` kept its 18-epoch head start:
    "auto" gave 0.567 / 0.533 / 0.443 there (floor 0.501 / 0.505 / 0.263). Under
    the earlier 60 / 40 budget split the fresh network was fragile on every
    setting (erode/dilate 0.944 / 0.594 / 0.295): see ``stage1_ratio``. Where
    ``f`` continues, the final network has trained stage 1's epochs as well: on the
    hippocampus with a cosine rate (8 epochs, seeds 0 / 1 / 2, ``f`` forced) Co-Seg
    gave 0.766 / 0.769 / 0.763 on erode/dilate against floors of 0.754 / 0.755 /
    0.725 at 8 epochs but 0.759 / 0.782 / 0.769 at 13 (5 + 8), so that margin is
    the extra epochs. On full-mode BBBC039 erode/dilate (seed 0, 6 epochs), where
    "auto" starts fresh: fresh 0.904, ``f`` 0.885, floor 0.877.
learnt_iou : float
    **(ours)** A class counts as learnt by stage 1 when the IoU between the
    argmax of ``f + g`` and the given labels reaches 0.5 on the reliable subset
    (ADELE's ``min_iou``, the same reasoning: the labels the pair trusts are mostly
    right, so a pair that has learnt a class agrees with most of them there; over
    every sample where the reliable subset never shows the class). Pooled over all
    samples instead, heavy noise alone pushes the IoU below 0.5 (Co-Seg's test set:
    half the crops with 80 % of the nuclei dropped or invented, IoU 0.45 over all,
    0.62 on the reliable crops). Pixels whose given or
    predicted class is not learnt keep their given label in stage 3: neither
    corrected nor ignored. Without it, on the hippocampus, the pair's confident
    background erased or masked out the classes it had not learnt yet and the
    retrained network lost them (test Dice 0.19 and 0.16 with the f/g fallback).
keep_background_only : bool
    **(ours)** Patches that are background in the labels and in both networks'
    argmax are always kept and the drop rate applies to the others (True). Such
    patches have the smallest loss by far, so on data with many empty patches
    (hippocampus slices) small-loss selection otherwise drops almost only the
    patches that show the structures. Patches cannot hide a missed annotation
    there, since neither network sees foreground in them.
match_area : bool
    **(ours)** Before the stage-3 correction, reweight ``f``'s and ``g``'s class
    probabilities (each on its own) so that every class's expected area over the
    training set equals its area in the given labels (ADELE's ``match_area``,
    :func:`~napari_noisyseg.methods.base.match_class_areas`); the weights are in
    ``history["area_weights"]``. The learnt classes, the noise map and the
    fallback predictions use the networks' own probabilities. Measured on seed 0
    only (4 hippocampus volumes × 200 epochs, cosine; default in brackets, floor
    0.649 on both): benchmark split test Dice 0.682 (0.713), Dice(corrected, clean)
    0.828 (0.811), noise AP 0.663 (0.630); never-seen volumes 0.693 (0.717), 0.809
    (0.807), 0.608 (0.602). The pair's expected foreground area exceeded the given
    labels' (weights 0.63–0.76 for class 1, 0.36–0.37 for class 2 on the never-seen
    run): better labels, a worse network, so off.
refine_tau : float
    **(ours)** Confidence of the final network above which its argmax replaces the
    stage-1 correction in ``corrected`` (0.6; below it the pixel keeps the stage-1
    label, i.e. the given one unless ``f`` and ``g`` confidently agreed otherwise).
    Dice(corrected, clean) on the training images of three BBBC039 settings
    (erode/dilate every image; missing + spurious; half the images dilated) for
    thresholds 0.5 / 0.6 / 0.7 / 0.8: 0.880 / 0.901 / 0.863 / 0.835,
    0.976 / 0.979 / 0.981 / 0.982 and 0.764 / 0.903 / 0.904 / 0.902 (given labels:
    0.790, 0.746, 0.906). The plain argmax moves boundaries on sub-pixel evidence
    and follows a network's biases (over-segmentation when half the labels are
    dilated); a high threshold keeps most wrong boundaries. 0.6 was picked from
    this sweep, on the images it is reported on: confirm it on held-out data.

Outputs
-------
- ``probabilities``: the stage-4 network; the mean of ``f`` and ``g`` when stage 4
  has not trained a full epoch's worth of steps (e.g. stopped early) or when it lost
  a foreground class that ``f`` and ``g`` still find (:func:`collapsed_classes`:
  its argmax covers < 25 % of the pixels the given labels give the class;
  ``history["stage4_collapsed_classes"]``).
- ``noise`` = ``1 − p(given label)`` of that same model on every pixel **(ours)**.
  The spec takes it from the stage-1 pair; the retrained network was measured
  better (erode/dilate benchmark: AUROC 0.987 / AP 0.862 against 0.970 / 0.797
  for the f, g mean), and the viewer needs a ranking on every pixel, not only
  where a correction fired.
- ``corrected`` **(ours)**: the stage-1 correction, refined by the final network
  wherever its confidence is ≥ ``refine_tau``: there its argmax wins. Without a
  stage-4 network: the stage-1 rule alone.
- ``sample_reliability`` **(ours)**: ``reliability_from_noise`` (1 − mean noise over
  the given or proposed foreground). Rank correlation with the true per-image
  label quality: 0.99 (missing + spurious noise) and 0.87 (erode/dilate), against
  0.71 / −0.10 when half of it was the selection record: a patch's score includes
  a Dice loss that is large on sparse patches, so images with few objects are
  rarely kept whatever the quality of their labels. The selection record stays in
  the history (``selection_fraction``).
- ``history``: per epoch ``stage`` (1 or 4), ``keep_ratio`` R(t),
  ``selected_f``/``selected_g`` (fraction of samples, or pixels, each network kept),
  ``score_kept``/``score_dropped`` (mean score), ``loss`` (and ``loss_f``/``loss_g``
  for the stage-1 epochs); once: ``reliable_samples``, ``joined_samples``,
  ``rejected_samples`` (names), ``n_corrected_pixels`` (final),
  ``n_stage1_corrected_pixels``, per sample ``selection_fraction``, ``dice_fg``
  (Dice(f, g)) and ``label_dice`` (Dice(prediction, given)), ``stage1_epochs``,
  ``stage4_epochs``, ``t_k``, ``final_from`` (``"final"`` or ``"f+g"``),
  ``stage4_start`` (``"fresh"``, ``"f"`` or ``"previous"``), ``stage1_class_iou``
  (per class, f + g against the given labels on the reliable subset), ``area_weights``
  (``match_area``: the class weights of f and g, else None),
  ``stage1_class_agreement`` (per class, Dice between f's and g's argmax) and
  ``learnt_classes``.

Trust: trusted pixels are always kept (pixel mode never drops them; in image mode
a dropped sample still trains on its trusted pixels), never corrected and never
ignored in stage 4; ``result_from_run`` sets their noise to 0.

Stopping: in stage 1 the result comes from ``f`` and ``g`` (the stage-1 rule for
``corrected``); in stage 4 from the stage-4 network once it has had an epoch's
worth of steps, else again from ``f`` and ``g``. ``final_model`` (what a checkpoint
predicts with) is ``"final"``, or ``"f"`` when stage 4 did not train.

Cost: a stage-1 epoch runs two networks (about twice a baseline epoch); stage 3
predicts every sample once with ``f`` and once with ``g``; a stage-4 epoch costs a
baseline epoch; the end predicts every sample once.

:func:`refit` warm-starts ``f``, ``g`` and the stage-4 network from a previous
result's models (retraining after a person's decisions) and skips the warm-up.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from ..core import metrics
from ..engine.losses import ce_dice_per_sample, ce_map, per_sample
from ..engine.train import TrainingRun
from .base import (class_iou, given_class_areas, learnt_class_ids, learnt_classes, match_class_areas,
                   noise_from_probabilities, pooled_valid, result_from_run, unlearnt_pixels)

NAME = "coseg"
SUMMARY = "Co-Seg (default): two U-Nets co-teach, correct the rest, retrain; co-teaching adds 60 % epochs."
DEFAULTS: dict = {
    "granularity": "image",
    "epsilon": "auto",
    "t_k": 10.0,
    "lambda_agree": 1.0,
    "score": "own",
    "sample_loss": "ce_dice",
    "tau": 0.8,
    "join_dice": 0.9,
    "stage1_ratio": 0.6,
    "reliable_window": 3,
    "correct_reliable": False,
    "stage4_init": "auto",
    "refine_tau": 0.6,
    "keep_background_only": True,
    "learnt_iou": 0.5,
    "match_area": False,
}

GRANULARITIES = ("pixel", "image")
COLLAPSE_RATIO = 0.25
SCORES = ("own", "joint")
SAMPLE_LOSSES = ("ce_dice", "ce")
STAGE4_INITS = ("auto", "f", "fresh")
EPSILON_AUTO = "auto"
MAX_AUTO_EPSILON = 0.5
MIN_AUTO_SAMPLES = 8
FALLBACK_EPSILON = 0.3  # METHODS.md's ε, where too few images for an estimate


# ----------------------------------------------------------------------------- schedule


def check_params(params: dict) -> dict:
    """Validate the merged parameters; returns them."""
    if params["granularity"] not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {params['granularity']!r}")
    if params["score"] not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, not {params['score']!r}")
    if params["sample_loss"] not in SAMPLE_LOSSES:
        raise ValueError(f"sample_loss must be one of {SAMPLE_LOSSES}, not {params['sample_loss']!r}")
    if params["join_dice"] is not None and not float(params["join_dice"]) >= 0.0:
        raise ValueError(f"join_dice must be >= 0 or None (never join), not {params['join_dice']}")
    if params["stage4_init"] not in STAGE4_INITS:
        raise ValueError(f"stage4_init must be one of {STAGE4_INITS}, not {params['stage4_init']!r}")
    if params["epsilon"] != EPSILON_AUTO and not (
            isinstance(params["epsilon"], (int, float)) and 0.0 <= float(params["epsilon"]) < 1.0):
        raise ValueError(f"epsilon must be in [0, 1) or {EPSILON_AUTO!r}, not {params['epsilon']!r}")
    if not float(params["stage1_ratio"]) > 0.0:
        raise ValueError(f"stage1_ratio must be > 0, not {params['stage1_ratio']}")
    for key in ("tau", "refine_tau"):
        if not 0.5 <= float(params[key]) <= 1.0:
            raise ValueError(f"{key} must be in [0.5, 1], not {params[key]}")
    if int(params["reliable_window"]) < 1:
        raise ValueError("reliable_window must be >= 1")
    if params["match_area"] not in (False, True):
        raise ValueError(f"match_area must be false or true, not {params['match_area']!r}")
    return params


def stage1_epochs(budget: int, ratio: float) -> int:
    """Stage-1 epochs in front of an epoch budget of ``budget`` retraining epochs: ``round(ratio·budget)``, ≥ 1."""
    return max(1, int(round(float(ratio) * max(1, int(budget)))))


def timed_stage1_epochs(planned: int, ratio: float) -> int:
    """Stage-1 epochs out of ``planned`` under a time budget: the share ``ratio / (1 + ratio)``.

    At least one epoch each for stage 1 and (when ``planned`` ≥ 2) for the retraining.
    """
    planned = max(1, int(planned))
    count = max(1, int(round(planned * float(ratio) / (1.0 + float(ratio)))))
    return count if planned < 2 else min(count, planned - 1)


def effective_t_k(t_k: float, stage1: int) -> float:
    """T_k shortened for short runs: ``min(t_k, stage1 / 2)``, at least 1 epoch."""
    return max(1.0, min(float(t_k), 0.5 * max(1, int(stage1))))


def keep_ratio(epoch: float, epsilon: float, t_k: float) -> float:
    """R(t) = 1 − ε·min(t / T_k, 1)."""
    return 1.0 - epsilon * min(max(epoch, 0.0) / max(t_k, 1e-9), 1.0)


def image_losses(probabilities: list, dataset) -> np.ndarray:
    """Each sample's whole-image loss against its given labels, float64 (N,).

    Mean pixel CE + soft Dice (the spec's sample loss) of ``probabilities[i]``
    (K, H, W) float32 over the sample's labelled pixels; NaN for a sample that is
    background in its labels and in the prediction's argmax (never sifted).
    """
    out = np.full(len(dataset), np.nan)
    for i, (p, sample) in enumerate(zip(probabilities, dataset.samples)):
        prob = torch.from_numpy(p)[None]
        labels = torch.from_numpy(sample.labels.astype(np.int64))[None]
        weights = torch.from_numpy((~sample.ignore).astype(np.float32))[None]
        if bool(background_only(labels, prob, prob, weights)[0]):
            continue
        log_p = torch.log(prob.clamp(1e-8, 1.0))  # softmax(log p) = p
        out[i] = float(ce_dice_per_sample(log_p, labels, weights)[0])
    return out


def estimate_noisy_fraction(losses, max_fraction: float = MAX_AUTO_EPSILON, seed: int = 0) -> dict:
    """ε from the per-image loss distribution (ours): the high-loss weight of a two-Gaussian fit.

    Parameters
    ----------
    losses : array-like float (N,)
        Per-image losses; NaN entries are left out.
    max_fraction : float
        Cap on the estimate.
    seed : int

    Returns
    -------
    dict
        ``epsilon`` (float, in [0, ``max_fraction``]; ``FALLBACK_EPSILON`` when
        fewer than ``MIN_AUTO_SAMPLES`` losses), ``source`` (``"two groups"``, ``"one
        group"`` when BIC prefers a single Gaussian, or ``"too few samples"``),
        ``n``, ``losses`` (the input in its order, NaN as None, so the fit can be
        checked against known noise later), and for a fit ``means``, ``stds``,
        ``weights`` (low, high), ``bic`` (one, two) and ``n_high`` (samples whose
        posterior favours the high-loss component).
    """
    given = np.asarray(losses, np.float64).ravel()
    values = given[np.isfinite(given)]
    out = {"n": int(values.size), "losses": metrics.to_json_safe(given)}
    if values.size < MIN_AUTO_SAMPLES or float(values.max() - values.min()) < 1e-9:
        source = "too few samples" if values.size < MIN_AUTO_SAMPLES else "one group"
        return {**out, "epsilon": FALLBACK_EPSILON if source == "too few samples" else 0.0, "source": source}
    x = values[:, np.newaxis]
    # scikit-learn costs about 2 s of every command's start; only the ε estimate needs it
    from sklearn.mixture import GaussianMixture
    fits = [GaussianMixture(n_components=k, random_state=seed, reg_covar=1e-6).fit(x) for k in (1, 2)]
    bic = [float(f.bic(x)) for f in fits]
    order = np.argsort(fits[1].means_.ravel())
    weights = fits[1].weights_.ravel()[order]
    two = bic[1] < bic[0]
    epsilon = min(float(weights[1]), float(max_fraction)) if two else 0.0
    n_high = int((fits[1].predict_proba(x)[:, order[1]] > 0.5).sum())
    return {**out, "epsilon": epsilon, "source": "two groups" if two else "one group", "bic": bic,
            "means": fits[1].means_.ravel()[order].tolist(),
            "stds": np.sqrt(fits[1].covariances_.ravel()[order]).tolist(),
            "weights": weights.tolist(), "n_high": n_high}


# ----------------------------------------------------------------------------- scores and selection


def agreement_dice(prob_f: torch.Tensor, prob_g: torch.Tensor, weights: torch.Tensor, smooth: float = 1.0):
    """Soft Dice between two probability maps over foreground classes, per sample (N,) in [0, 1].

    ``prob_*`` (N, K, H, W) float; ``weights`` (N, H, W). Background is left out
    (it dominates every patch); with one class only, that class is used.
    """
    start = 1 if prob_f.shape[1] > 1 else 0
    w = weights.unsqueeze(1)
    a, b = (prob_f * w)[:, start:], (prob_g * w)[:, start:]
    intersection = (a * b).sum(dim=(2, 3))
    denominator = (a * a).sum(dim=(2, 3)) + (b * b).sum(dim=(2, 3))
    return ((2 * intersection + smooth) / (denominator + smooth)).mean(dim=1)


def pixel_disagreement(prob_f: torch.Tensor, prob_g: torch.Tensor) -> torch.Tensor:
    """Total-variation distance ``½·Σ_k |p_f − p_g|`` per pixel, (N, H, W) in [0, 1]."""
    return 0.5 * (prob_f - prob_g).abs().sum(dim=1)


def select_samples(scores: torch.Tensor, ratio: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the ``ceil(ratio · n)`` samples with the smallest score (at least one); bool (N,).

    ``valid`` (N,) bool: samples that can be ranked (others are never kept).
    """
    valid = torch.ones_like(scores, dtype=torch.bool) if valid is None else valid
    n_valid = int(valid.sum())
    keep = torch.zeros_like(valid)
    if n_valid == 0:
        return keep
    count = min(n_valid, max(1, int(math.ceil(ratio * n_valid - 1e-6))))
    ranked = torch.where(valid, scores, torch.full_like(scores, float("inf")))
    keep[torch.argsort(ranked, stable=True)[:count]] = True
    return keep & valid


def background_only(labels: torch.Tensor, prob_f: torch.Tensor, prob_g: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """Samples whose valid pixels are background in the labels and in both networks' argmax; bool (N,)."""
    valid = weights > 0
    foreground = (labels > 0) | (prob_f.argmax(1) > 0) | (prob_g.argmax(1) > 0)
    return ~(foreground & valid).flatten(1).any(dim=1)


def select_pixels(
    scores: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, trust: torch.Tensor,
    ratio: float, n_classes: int,
) -> torch.Tensor:
    """Small-score pixel selection inside each patch, per given class; bool (N, H, W).

    For every patch and class with ``n`` untrusted weighted pixels, the
    ``floor((1 − ratio) · n)`` with the largest score are dropped. Trusted pixels
    are always kept; zero-weight pixels never are.
    """
    valid = weights > 0
    if ratio >= 1.0:
        return valid
    keep = valid.clone()
    candidates = valid & ~trust
    for index in range(scores.shape[0]):
        for cls in range(n_classes):
            droppable = candidates[index] & (labels[index] == cls)
            count = int(droppable.sum())
            budget = int(math.floor((1.0 - ratio) * count + 1e-6))
            if budget == 0:
                continue
            values = scores[index][droppable]
            threshold = values.kthvalue(count - budget).values  # keep the count − budget smallest
            keep[index] &= ~(droppable & (scores[index] > threshold))
    return keep


def sample_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, kind: str) -> torch.Tensor:
    """Each sample's loss for the selection score, shape (N,): CE + soft Dice (``"ce_dice"``) or CE alone."""
    if kind == "ce":
        return per_sample(ce_map(logits, labels), weights)
    return ce_dice_per_sample(logits, labels, weights)


def update_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean CE + soft Dice over the samples that keep any weight (a scalar, 0 when none do)."""
    per = ce_dice_per_sample(logits, labels, weights)
    has = weights.flatten(1).sum(dim=1) > 0
    if not bool(has.any()):
        return logits.float().sum() * 0.0
    return per[has].mean()


# ----------------------------------------------------------------------------- selection record


class SelectionRecord:
    """Per image and epoch: how many of its patches each network kept.

    Parameters
    ----------
    n_samples : int
    """

    def __init__(self, n_samples: int):
        self.n = n_samples
        self.epochs: list[dict] = []  # closed epochs: {"both": (N,) fraction, "total": (N,) patches, "ratio": R}
        self._reset()

    def _reset(self) -> None:
        self._total = np.zeros(self.n)
        self._both = np.zeros(self.n)

    def add(self, samples: np.ndarray, kept_f: np.ndarray, kept_g: np.ndarray) -> None:
        """Record one batch: sample index (B,), kept by f (B,) bool, kept by g (B,) bool."""
        np.add.at(self._total, samples, 1.0)
        np.add.at(self._both, samples, (kept_f & kept_g).astype(float))

    def close_epoch(self, ratio: float) -> None:
        seen = self._total > 0
        both = np.where(seen, self._both / np.maximum(self._total, 1.0), np.nan)
        self.epochs.append({"both": both, "total": self._total.copy(), "ratio": float(ratio)})
        self._reset()

    def reliable(self, window: int) -> np.ndarray:
        """bool (N,): kept by both networks in most of the last ``window`` epochs.

        "Most" is read over the pooled patches of those epochs: more than half of
        the image's patches drawn in the window were kept by both networks. (An
        image contributes only a few patches per epoch, so a per-epoch vote would
        be coarse: with two patches, keeping one would already count as kept.)
        """
        recent = self.epochs[-window:]
        if not recent:
            return np.zeros(self.n, bool)
        both = np.stack([np.nan_to_num(e["both"]) * e["total"] for e in recent]).sum(0)
        total = np.stack([e["total"] for e in recent]).sum(0)
        return (total > 0) & (both > 0.5 * total)

    def fraction(self) -> np.ndarray:
        """float (N,) in [0, 1]: mean kept-by-both fraction over the epochs with R < 1 (all if none)."""
        epochs = [e for e in self.epochs if e["ratio"] < 1.0] or self.epochs
        if not epochs:
            return np.ones(self.n)
        stacked = np.stack([e["both"] for e in epochs])
        seen = ~np.isnan(stacked)
        total = np.where(seen, stacked, 0.0).sum(0)
        return np.where(seen.any(0), total / np.maximum(seen.sum(0), 1), 1.0)


# ----------------------------------------------------------------------------- correction


def hard_dice(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    """Mean foreground Dice of two label maps; 1 when both lack every foreground class."""
    scores = []
    for cls in range(1, max(n_classes, 2)):
        in_a, in_b = a == cls, b == cls
        total = int(in_a.sum()) + int(in_b.sum())
        if total:
            scores.append(2.0 * int((in_a & in_b).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def correct_sample(prob_f: np.ndarray, prob_g: np.ndarray, labels: np.ndarray, frozen: np.ndarray, tau: float):
    """The stage-3 rule on one sample.

    Parameters
    ----------
    prob_f, prob_g : ndarray float32 (K, H, W)
    labels : ndarray int (H, W), the given labels
    frozen : ndarray bool (H, W), trusted or ignored pixels (never changed)
    tau : float

    Returns
    -------
    corrected : ndarray int64 (H, W)
        Consensus argmax where ``f`` and ``g`` agree with mean confidence ≥ ``tau``.
    confident : ndarray bool (H, W)
        Where the rule applies (agree and confident, not frozen).
    dice_fg : float
        Foreground Dice between the two networks' argmax maps.
    """
    arg_f, arg_g = prob_f.argmax(0), prob_g.argmax(0)
    mean = 0.5 * (prob_f + prob_g)
    confident = (arg_f == arg_g) & (mean.max(0) >= tau) & ~frozen
    corrected = np.where(confident, arg_f, labels).astype(np.int64)
    return corrected, confident, hard_dice(arg_f, arg_g, prob_f.shape[0])


def stage4_start(init: str, learnt: np.ndarray) -> str:
    """``"fresh"`` or ``"f"``: ``"auto"`` starts fresh only when f and g learnt every class."""
    if init != "auto":
        return init
    return "fresh" if bool(np.all(learnt)) else "f"


def pair_class_dice(probs_f: list, probs_g: list, dataset) -> list:
    """Per-class Dice between the argmax maps of ``f`` and of ``g``, pooled over the training set.

    Ignored pixels are left out. Returns a list of K floats (NaN where neither predicts a class).
    """
    arg_f, arg_g = [p.argmax(0) for p in probs_f], [p.argmax(0) for p in probs_g]
    return metrics.dice_per_class(pooled_valid(arg_f, dataset), pooled_valid(arg_g, dataset),
                                  dataset.n_classes).tolist()


# ----------------------------------------------------------------------------- the method


def fit(dataset, config, events=None):
    """Run Co-Seg (METHODS.md §2).

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
    events : Progress, callable or None

    Returns
    -------
    CurationResult
        ``models``: ``f``, ``g`` (stage 1) and ``final`` (stage 4); ``final_model``
        is ``final``, or ``f`` when stage 4 never trained.
    """
    return _fit(dataset, config, events, previous=None)


def refit(dataset, config, previous, events=None):
    """Co-Seg warm-started from ``previous.models`` (e.g. after a person's decisions).

    ``f``, ``g`` and ``final`` start from the previous weights when their network
    description matches this run's (else fresh), and stage 1 starts at the full
    drop rate (the warm-up already happened). The dataset usually carries new
    trusted pixels (:meth:`NoisyDataset.with_trust`).

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
    previous : CurationResult
        A Co-Seg result (models ``f``, ``g``, ``final``).
    events : Progress, callable or None
    """
    return _fit(dataset, config, events, previous=previous)


def _warm_start(model, previous_models: dict, name: str) -> bool:
    old = (previous_models or {}).get(name)
    if old is None or not hasattr(old, "spec") or old.spec() != model.spec():
        return False
    model.load_state_dict({k: v.to(next(model.parameters()).device) for k, v in old.state_dict().items()})
    return True


def _fit(dataset, config, events, previous):
    params = check_params(config.with_params(DEFAULTS))
    run = TrainingRun(dataset, config, events)
    n_classes = dataset.n_classes
    model_f, _ = run.new_model(seed_offset=0)
    model_g, _ = run.new_model(seed_offset=1)
    warm = previous is not None and all(
        [_warm_start(model_f, previous.models, "f"), _warm_start(model_g, previous.models, "g")])
    parameters = list(model_f.parameters()) + list(model_g.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = run.make_scaler()
    record = SelectionRecord(len(dataset))
    run.closing_passes = 2  # f and g; the retrained network alone once stage 4 starts
    state = {"stage": 1, "stage1_end": None, "t_k": None, "epsilon": _initial_epsilon(params, previous, warm),
             "epsilon_estimate": None}

    def stage1_preview(indices):
        probs_f, probs_g = run.predict(model_f, indices), run.predict(model_g, indices)
        noise, corrected = [], []
        for pf, pg, i in zip(probs_f, probs_g, indices):
            sample = dataset.samples[i]
            noise.append(noise_from_probabilities(0.5 * (pf + pg), sample.labels))
            corrected.append(correct_sample(pf, pg, sample.labels, sample.trust | sample.ignore, params["tau"])[0])
        return noise, corrected

    ratio_stage1 = float(params["stage1_ratio"])
    budget_stage1 = None
    if run.total_epochs is not None:  # an epoch budget is the retraining's; stage 1 comes in front of it
        budget_stage1 = stage1_epochs(run.total_epochs, ratio_stage1)
        run.total_epochs += budget_stage1
    stage4 = None
    run.lr_phase(optimizer, 0, lambda: budget_stage1 or timed_stage1_epochs(run.planned_epochs(), ratio_stage1))
    for epoch in run.epochs():
        if state["stage"] == 1:
            end = budget_stage1 or timed_stage1_epochs(run.planned_epochs(), ratio_stage1)
            if epoch >= end:
                state["stage1_end"] = epoch
                stage4 = _prepare_stage4(run, dataset, params, record, model_f, model_g, previous)
                run.lr_phase(stage4["optimizer"], epoch, lambda start=epoch: run.planned_epochs() - start)
                state["stage"] = 4
                run.closing_passes = 1
            else:
                t_k = effective_t_k(params["t_k"], end)
                state["t_k"] = t_k
                ratio = keep_ratio(t_k if warm else epoch, state["epsilon"] or 0.0, t_k)
                extras = _stage1_epoch(run, params, record, model_f, model_g, optimizer, scaler, epoch, ratio,
                                       n_classes, stage1_preview)
                record.close_epoch(ratio)
                if state["epsilon"] is None and epoch + 1 < end and not run.should_stop():
                    # R(0) = 1 whatever ε is: the first epoch is the warm-up ε is estimated after.
                    estimate = estimate_noisy_fraction(
                        image_losses(run.predict([model_f, model_g]), dataset), seed=config.seed)
                    state["epsilon"], state["epsilon_estimate"] = estimate["epsilon"], estimate
                run.end_epoch(epoch, stage=1, keep_ratio=ratio, **extras)
                continue
        _stage4_epoch(run, stage4, scaler, epoch)
        run.end_epoch(epoch, stage=4, keep_ratio=None, selected_f=None, selected_g=None,
                      score_kept=None, score_dropped=None)
    if state["stage1_end"] is None:
        state["stage1_end"] = len(record.epochs)
    return _finish(run, dataset, params, record, model_f, model_g, stage4, state)


def _initial_epsilon(params: dict, previous, warm: bool):
    """ε for the first stage-1 epoch: the parameter, or with ``"auto"`` None (estimated after
    the warm-up epoch) or, warm-started, the previous run's ε (``FALLBACK_EPSILON`` if it has none)."""
    if params["epsilon"] != EPSILON_AUTO:
        return float(params["epsilon"])
    if not warm:
        return None
    earlier = (previous.history or {}).get("epsilon")
    return float(earlier) if isinstance(earlier, (int, float)) else FALLBACK_EPSILON


def _stage1_epoch(run, params, record, model_f, model_g, optimizer, scaler, epoch, ratio, n_classes, preview):
    """One co-teaching epoch; returns the epoch's history extras."""
    lam = float(params["lambda_agree"])
    pixel = params["granularity"] == "pixel"
    joint = params["score"] == "joint"
    sums = {"selected_f": [0.0, 0.0], "selected_g": [0.0, 0.0], "kept": [0.0, 0.0], "dropped": [0.0, 0.0]}
    model_f.train()
    model_g.train()
    for batch in run.batches():
        with run.path.autocast():
            logits_f = model_f(batch.image)
            logits_g = model_g(batch.image)
        labels, weights, trust = batch.labels, batch.weights, batch.trust
        with torch.no_grad():
            loss_f = sample_loss(logits_f, labels, weights, params["sample_loss"])
            loss_g = sample_loss(logits_g, labels, weights, params["sample_loss"])
            prob_f = F.softmax(logits_f.float(), dim=1)
            prob_g = F.softmax(logits_g.float(), dim=1)
            disagree = 1.0 - agreement_dice(prob_f, prob_g, weights)
            lf, lg = loss_f.detach(), loss_g.detach()
            score_f = (lf + lg if joint else lf) + lam * disagree
            score_g = (lf + lg if joint else lg) + lam * disagree
            valid = weights.flatten(1).sum(dim=1) > 0
            empty = (background_only(labels, prob_f, prob_g, weights) if params["keep_background_only"]
                     else torch.zeros_like(valid))
            keep_f = select_samples(score_f, ratio, valid & ~empty) | (valid & empty)
            keep_g = select_samples(score_g, ratio, valid & ~empty) | (valid & empty)
            record.add(batch.samples.cpu().numpy(), keep_f.cpu().numpy(), keep_g.cpu().numpy())
            if pixel:
                dis_pix = lam * pixel_disagreement(prob_f, prob_g)
                ce_f, ce_g = ce_map(logits_f.detach(), labels), ce_map(logits_g.detach(), labels)
                pix_f = (ce_f + ce_g if joint else ce_f) + dis_pix
                pix_g = (ce_f + ce_g if joint else ce_g) + dis_pix
                mask_f = select_pixels(pix_f, labels, weights, trust, ratio, n_classes)
                mask_g = select_pixels(pix_g, labels, weights, trust, ratio, n_classes)
                weights_g = weights * mask_f  # f's choice trains g
                weights_f = weights * mask_g
                _accumulate_pixels(sums, weights, mask_f, mask_g, pix_f, pix_g)
            else:
                trusted = trust.float()
                weights_g = weights * torch.where(keep_f[:, None, None], torch.ones_like(trusted), trusted)
                weights_f = weights * torch.where(keep_g[:, None, None], torch.ones_like(trusted), trusted)
                _accumulate_samples(sums, valid, keep_f, keep_g, score_f, score_g)
        update_f = update_loss(logits_f, labels, weights_f)
        update_g = update_loss(logits_g, labels, weights_g)
        total = update_f + update_g
        losses = {"loss": float(total.detach()) / 2, "loss_f": float(lf.mean()), "loss_g": float(lg.mean())}
        run.step(optimizer, total, scaler, epoch, losses)
        run.track(logits_f.detach(), labels, weights)
        run.maybe_preview(preview)
    ratio_of = lambda pair: pair[0] / pair[1] if pair[1] else None
    return {
        "selected_f": ratio_of(sums["selected_f"]),
        "selected_g": ratio_of(sums["selected_g"]),
        "score_kept": ratio_of(sums["kept"]),
        "score_dropped": ratio_of(sums["dropped"]),
    }


def _accumulate_samples(sums, valid, keep_f, keep_g, score_f, score_g) -> None:
    n = float(valid.sum())
    for key, keep, score in (("selected_f", keep_f, score_f), ("selected_g", keep_g, score_g)):
        sums[key][0] += float(keep.sum())
        sums[key][1] += n
        dropped = valid & ~keep
        sums["kept"][0] += float(score[keep].sum())
        sums["kept"][1] += float(keep.sum())
        sums["dropped"][0] += float(score[dropped].sum())
        sums["dropped"][1] += float(dropped.sum())


def _accumulate_pixels(sums, weights, mask_f, mask_g, pix_f, pix_g) -> None:
    valid = weights > 0
    n = float(valid.sum())
    for key, keep, score in (("selected_f", mask_f, pix_f), ("selected_g", mask_g, pix_g)):
        sums[key][0] += float(keep.sum())
        sums[key][1] += n
        dropped = valid & ~keep
        sums["kept"][0] += float(score[keep].sum())
        sums["kept"][1] += float(keep.sum())
        sums["dropped"][0] += float(score[dropped].sum())
        sums["dropped"][1] += float(dropped.sum())


def _stage1_outputs(run, dataset, params, record, model_f, model_g):
    """Stage 2 + 3: predictions of f and g, reliable subset, per-sample correction."""
    probs_f, probs_g = run.predict(model_f), run.predict(model_g)
    reliable = record.reliable(int(params["reliable_window"]))
    predicted = [(pf + pg).argmax(0) for pf, pg in zip(probs_f, probs_g)]
    # Learnt: the pair reproduces the class's labels on the reliable subset (the samples
    # whose labels it trusts); on every sample where a class never occurs there.
    iou_all = class_iou(predicted, dataset)
    iou = class_iou(predicted, dataset, reliable) if reliable.any() else iou_all
    iou = [a if np.isnan(r) else r for r, a in zip(iou, iou_all)]
    agreement = pair_class_dice(probs_f, probs_g, dataset)
    learnt = learnt_classes(iou, float(params["learnt_iou"]))

    out = {"probs_f": probs_f, "probs_g": probs_g, "reliable": reliable, "corrected": [], "confident": [],
           "frozen": [], "dice_fg": [], "joined": np.zeros(len(dataset), bool),
           "class_iou": iou, "class_agreement": agreement, "learnt": learnt, "area_weights": None}
    rule_f, rule_g = probs_f, probs_g
    if params["match_area"]:  # the correction sees each network's classes at the given labels' areas
        areas, counted = given_class_areas(dataset)
        rule_f, weights_f = match_class_areas(probs_f, areas, counted)
        rule_g, weights_g = match_class_areas(probs_g, areas, counted)
        out["area_weights"] = {"f": [float(w) for w in weights_f], "g": [float(w) for w in weights_g]}
    for i, (pf, pg, sample) in enumerate(zip(rule_f, rule_g, dataset.samples)):
        # A class f and g have not learnt keeps its given labels: neither corrected nor ignored.
        frozen = sample.trust | sample.ignore | unlearnt_pixels(learnt, sample.labels, predicted[i])
        corrected, confident, dice_fg = correct_sample(pf, pg, sample.labels, frozen, params["tau"])
        out["corrected"].append(corrected)
        out["confident"].append(confident)
        out["frozen"].append(frozen)
        out["dice_fg"].append(dice_fg)
        out["joined"][i] = (not reliable[i]) and params["join_dice"] is not None and dice_fg >= params["join_dice"]
    return out


def stage4_target(given, corrected, confident, frozen, reliable: bool, joined: bool, params: dict):
    """Training labels and pixel weights of one sample for the stage-4 network.

    Parameters
    ----------
    given, corrected : ndarray int (H, W)
        The given labels and the stage-3 correction (see :func:`correct_sample`).
    confident : ndarray bool (H, W)
        Where ``f`` and ``g`` agree with mean confidence ≥ ``tau``.
    frozen : ndarray bool (H, W)
        Pixels the correction left alone and that are never masked here: trusted
        pixels, pixels without a label (their weight is 0 already) and pixels of
        classes the pair has not learnt.
    reliable, joined : bool
        The sample is in the reliable subset / joined it after correction.
    params : dict
        ``correct_reliable``.

    Returns
    -------
    labels : ndarray int64 (H, W)
    mask : ndarray float32 (H, W)
        0 on the uncertain pixels (not confident, not frozen) of a corrected sample
        that did not join the reliable set; 1 elsewhere.
    """
    labels = given if reliable and not params["correct_reliable"] else corrected
    if reliable or joined:
        return labels.astype(np.int64), np.ones(given.shape, np.float32)
    uncertain = ~confident & ~frozen
    return labels.astype(np.int64), (~uncertain).astype(np.float32)


def _prepare_stage4(run, dataset, params, record, model_f, model_g, previous):
    """Stage 2/3 and a fresh network for stage 4; returns the stage-4 state."""
    stage1 = _stage1_outputs(run, dataset, params, record, model_f, model_g)
    labels, masks = [], []
    for i, sample in enumerate(dataset.samples):
        target, mask = stage4_target(sample.labels, stage1["corrected"][i], stage1["confident"][i],
                                     stage1["frozen"][i], bool(stage1["reliable"][i]), bool(stage1["joined"][i]),
                                     params)
        labels.append(target)
        masks.append(mask)
    model, optimizer = run.new_model(seed_offset=2)
    start = stage4_start(params["stage4_init"], stage1["learnt"])
    if previous is not None and _warm_start(model, previous.models, "final"):
        start = "previous"
    elif start == "f":
        model.load_state_dict(model_f.state_dict())
    return {"start": start, "stage1": stage1, "labels": labels, "masks": masks, "model": model, "optimizer": optimizer,
            "extras": {"labels": (labels, 0), "mask": (masks, 0.0)}, "epochs": 0, "steps": 0,
            "steps_per_epoch": run.steps_per_epoch}


def _stage4_epoch(run, stage4, scaler, epoch) -> None:
    model, optimizer = stage4["model"], stage4["optimizer"]
    model.train()

    def preview(indices):
        probabilities = run.predict(model, indices)
        noise = [noise_from_probabilities(p, run.dataset.samples[i].labels) for p, i in zip(probabilities, indices)]
        return noise, [p.argmax(0) for p in probabilities]

    for batch in run.batches(extras=stage4["extras"]):
        labels = batch.extras["labels"]
        weights = batch.weights * batch.extras["mask"]
        with run.path.autocast():
            logits = model(batch.image)
        loss = ce_dice_per_sample(logits, labels, weights).mean()
        run.step(optimizer, loss, scaler, epoch)
        stage4["steps"] += 1
        run.track(logits.detach(), labels, weights)
        run.maybe_preview(preview)
    stage4["epochs"] += 1


def collapsed_classes(final: list, pair: list, dataset, ratio: float = COLLAPSE_RATIO) -> list:
    """Foreground classes the final network has all but lost (ours).

    A class counts as lost when the final network's argmax covers less than ``ratio``
    of the pixels the given labels give it, over the whole training set, while the
    f/g pair still covers at least that much.

    Parameters
    ----------
    final, pair : list of ndarray float32 (K, H, W)
        Probabilities of the final network and of the f/g mean, per sample.
    dataset : NoisyDataset

    Returns
    -------
    list of int
    """
    k = dataset.n_classes
    given = np.zeros(k, np.int64)
    by_final = np.zeros(k, np.int64)
    by_pair = np.zeros(k, np.int64)
    for sample, p_final, p_pair in zip(dataset.samples, final, pair):
        valid = ~sample.ignore
        given += np.bincount(sample.labels[valid].ravel(), minlength=k)[:k]
        by_final += np.bincount(p_final.argmax(0)[valid].ravel(), minlength=k)[:k]
        by_pair += np.bincount(p_pair.argmax(0)[valid].ravel(), minlength=k)[:k]
    return [c for c in range(1, k)
            if given[c] > 0 and by_final[c] < ratio * given[c] <= by_pair[c]]


def _finish(run, dataset, params, record, model_f, model_g, stage4, state):
    """Predictions, noise, corrections, reliability and history of whatever was trained."""
    run.begin_closing()
    stage1 = stage4["stage1"] if stage4 is not None else _stage1_outputs(run, dataset, params, record, model_f,
                                                                           model_g)
    # A final network that has not seen one epoch's worth of steps is worse than f and g.
    final_trained = stage4 is not None and stage4["steps"] >= stage4["steps_per_epoch"]
    models = {"f": model_f, "g": model_g}
    pair = [0.5 * (pf + pg) for pf, pg in zip(stage1["probs_f"], stage1["probs_g"])]
    collapsed: list = []
    if final_trained:
        models["final"] = stage4["model"]
        probabilities = run.predict(stage4["model"])
        collapsed = collapsed_classes(probabilities, pair, dataset)
        if collapsed:  # an undertrained fresh network lost a class that f and g still find: keep f and g
            final_trained = False
    if not final_trained:
        probabilities = pair
    noise, corrected, label_dice = [], [], []
    for i, sample in enumerate(dataset.samples):
        predicted = probabilities[i].argmax(0)
        noise.append(noise_from_probabilities(probabilities[i], sample.labels))
        refined = stage1["corrected"][i]
        if final_trained:  # the final network refines the stage-1 correction where it is confident
            refined = np.where(probabilities[i].max(0) >= params["refine_tau"], predicted, refined)
        corrected.append(refined.astype(np.int64))  # trust is restored by result_from_run
        label_dice.append(hard_dice(predicted, sample.labels, dataset.n_classes))
    selection = record.fraction()
    names = [s.name for s in dataset.samples]
    n_corrected = int(sum(int(((c != s.labels) & ~(s.trust | s.ignore)).sum())
                          for c, s in zip(corrected, dataset.samples)))
    rejected = ~stage1["reliable"] & ~stage1["joined"]
    history_extra = {
        "granularity": params["granularity"],
        "score": params["score"],
        "epsilon": state["epsilon"],
        "epsilon_estimate": state["epsilon_estimate"],
        "t_k": state["t_k"],
        "stage1_epochs": int(state["stage1_end"]),
        "stage4_epochs": int(stage4["epochs"]) if stage4 is not None else 0,
        "stage4_steps": int(stage4["steps"]) if stage4 is not None else 0,
        "final_from": "final" if final_trained else "f+g",
        "stage4_start": stage4["start"] if stage4 is not None else None,
        "stage4_collapsed_classes": collapsed,
        "stage1_class_iou": metrics.to_json_safe(stage1["class_iou"]),
        "stage1_class_agreement": metrics.to_json_safe(stage1["class_agreement"]),
        "learnt_classes": learnt_class_ids(stage1["learnt"]),
        "area_weights": stage1["area_weights"],
        "reliable_samples": [n for n, r in zip(names, stage1["reliable"]) if r],
        "joined_samples": [n for n, j in zip(names, stage1["joined"]) if j],
        "rejected_samples": [n for n, r in zip(names, rejected) if r],
        "n_corrected_pixels": n_corrected,
        "n_stage1_corrected_pixels": int(sum(int((c != s.labels).sum())
                                             for c, s in zip(stage1["corrected"], dataset.samples))),
        "selection_fraction": [float(v) for v in selection],
        "dice_fg": [float(v) for v in stage1["dice_fg"]],
        "label_dice": [float(v) for v in label_dice],
    }
    final_name = "final" if final_trained else "f"
    # reliability=None: result_from_run uses reliability_from_noise (see the module docstring).
    return result_from_run(run, probabilities, noise, corrected, models, final_model=final_name,
                           history_extra=history_extra)
