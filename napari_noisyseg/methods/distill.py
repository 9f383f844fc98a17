"""Distilling effective supervision (Shi & Wu, MICCAI 2021; METHODS.md §4).

A mean teacher (EMA of the student) sampled with Monte-Carlo dropout estimates,
per pixel, how likely the given label is wrong; the student then learns from a
per-pixel mix of the given and the teacher's pseudo label (pixel level), and the
images that look noisiest learn from the pseudo label only (image level).

Algorithm
---------
1. **Warm-up** (``warmup_fraction`` of the planned epochs, at least 1): CE + Dice on
   the given labels, like the baseline; the teacher follows by EMA from step one.
   Before that the teacher has not learnt the data and its noise estimate would
   flag everything it has not learnt yet **(ours)**.
2. **Pixel-wise noise estimation.** The teacher, with dropout on, predicts every
   training image ``mc_samples`` = T times; p̄ is the mean and
   u = H(p̄) / log K its normalised entropy. Noise n = u + (1 − u)·(1 − p̄(given)).
3. **Pixel-wise robust learning.** Per pixel (1 − λ)·CE(p, given) + λ·CE(p, pseudo),
   pseudo = argmax p̄, λ detached. This equals the soft CE against the target
   t = (1 − λ)·onehot(given) + λ·onehot(pseudo); a soft Dice is added with weight
   ``dice_weight`` so the objective matches the baseline's CE + Dice when λ = 0
   **(ours)**. **(ours)** The Dice compares with the given labels, each pixel
   weighted by 1 − λ (``dice_target="given"``), not with t: Dice against mixed
   targets pushes every pixel with some foreground target towards 1 and drifted
   through the teacher in :mod:`~napari_noisyseg.methods.cleansing`. Here the
   evidence is weaker (BBBC039 erode/dilate, full benchmark, seed 0, warm-up 0.5):
   with ε = 0 and dropout 0.05 the two are equal within a seed (0.864 given,
   0.871 against t); with ε = 0.3 the given-label Dice and dropout 0.05 reached
   0.865 where Dice against t and dropout 0.1 reached 0.824 (both changed at
   once). **(ours)** λ = n·(1 − u), not n as in METHODS.md:
   t differs from the given label only where pseudo ≠ given, and there n ≥ 0.5
   always (≈ 1 wherever the teacher is unsure), so λ = n turns the method into
   hard self-training on the teacher's argmax, coin flips included. Measured on
   BBBC039 (12 images, 30 % missing nuclei, 30 epochs; with the first EMA ramp, see
   :class:`~napari_noisyseg.engine.ema.EMATeacher`, whose teacher was nearly
   uniform after the warm-up, so mean n was 0.99) it drifted and collapsed: the
   IoU against the given labels fell from 0.62 to 0.08, test Dice 0.35 against
   the baseline's 0.88. With λ = n·(1 − u) the pseudo label takes over only as far
   as the teacher is certain (p̄(given) = 0.45 → λ ≈ 0.01; 0.1 → 0.50; 0.01 → 0.91).
   Re-measured with the current EMA ramp on the full benchmark (BBBC039
   erode/dilate, 40 images, 6 epochs, seed 0, warm-up 0.5, floor 0.885): λ = n
   gave 0.787 (hard pseudo labels, ε = 0) and 0.814 (soft p̄ as the pseudo label,
   given-label Dice); λ = n·(1 − u) 0.864 (ε = 0) and 0.865 (ε = 0.3).
4. **Image-level robust learning.** Each image's score is the mean λ = n·(1 − u)
   over its *region*: given foreground ∪ pseudo foreground ∪ a band of ``band``
   pixels around the given label edges **(ours: the pseudo foreground is included
   so an image whose objects were never annotated still scores high; λ rather than
   n because the mean n ranks images by how unsure the teacher is of them — on 6
   crops, one with every nucleus unannotated, mean n was 0.95 for it but 0.91 for
   a clean crop the teacher found hard, mean λ 0.36 against ≤ 0.21)**. The
   ``image_fraction`` = ε images with the highest scores (round(ε·N), at least 1
   when ε > 0) train on the pseudo label only (λ = 1) until the next refresh.
5. **Learnt-class guard (ours**, shared with Co-Seg, Self-Cleansing and CLCS
   through ``methods.base.learnt_classes``). At each refresh, a foreground class
   whose given pixels the teacher's argmax reproduces less than ``learnt_recall``
   of (pooled over the training set) is not learnt yet: pixels whose given or
   pseudo class is such a class keep λ = 0 (their given label), also inside the
   images selected for pseudo labels, and count as clean (λ = 0) in the image score. Without
   it a teacher that still misses most of a small class hands its background
   pseudo labels to that class's pixels, which then train the student towards
   background (hippocampus, full benchmark, seed 2: class 1 fell to 0.286 test
   Dice against the floor's 0.631). The outputs have their own bar, see step 7.
   Measured (debug runs, full benchmark, hippocampus erode/dilate, seeds 0 / 1 / 2):
   0.695 / 0.697 / 0.593 against 0.695 / 0.697 / 0.384 without it (floor 0.708 /
   0.693 / 0.659): seed 2 no longer collapses (class 1 0.594), seeds 0 and 1 are
   unchanged to the digit, still below the floor on two seeds. The teacher
   reproduced 16 % / 29 % of the two classes' given pixels at the end of the
   warm-up on seed 2, so robust learning there acts on background first and on
   class 2 from epoch 6. BBBC039 erode/dilate seed 0 unchanged (0.865).
6. **Trust.** Trusted pixels have λ = 0 during training (always the given label,
   also inside selected images), and zero noise in the output.
7. **Output guard (ours**, like CLCS's ``judge_recall``). The final teacher's
   recall bar for the outputs is ``judge_recall``: on pixels whose given or pseudo
   class the final teacher reproduces less than that of, ``corrected`` keeps the
   given label and ``noise`` is halved (≤ 0.5, under the correction bar, still
   ranked among themselves). In the full benchmark the final teacher passes the
   bar for every class on every seed (hippocampus: recall 0.53–0.70), so it
   changes nothing there; it matters for short runs that end before a class is learnt.
8. **Correction rule (ours).** ``corrected`` = argmax p̄ where λ = n·(1 − u) >
   ``correct_threshold`` (``correct_on="weight"``): where the pixel-wise robust
   loss hands most of the pixel to the pseudo label, i.e. the teacher disagrees
   *and* is sure. METHODS.md's rule, n > 0.5 (``correct_on="noise"``), is met on
   every pixel where argmax p̄ ≠ given (n ≥ 0.5 there), so it hands out the
   teacher's argmax wholesale, coin flips included. Measured (debug runs, full
   benchmark, same trained teachers), Dice(corrected, clean) with λ / with n
   against the given labels: hippocampus seeds 0 / 1 / 2 0.763 / 0.757 / 0.744
   against 0.720 / 0.713 / 0.628 (given 0.734 / 0.734 / 0.731); BBBC039 Markov
   seed 0 0.884 against 0.856 (given 0.778); BBBC039 erode/dilate seed 0 0.822
   against 0.862 (given 0.784), the one run where the teacher's argmax beats the
   stricter rule. With λ the corrections beat the given labels on all five runs,
   with n on two. The price shows with undertrained teachers (quick benchmark,
   means over seeds 0–2): λ corrects little, 0.790 / 0.781 / 0.795 on BBBC039
   erode/dilate, missing + spurious and Markov against the given 0.783 / 0.770 /
   0.787, where n gave 0.836 / 0.924 / 0.806 but fell below the given labels on two
   of the nine runs (same teachers; on the hippocampus, with the teachers from before
   the learnt-class guard, n gave 0.525 against the given 0.735; λ now 0.755).
   The noise map stays n: λ as the map ranked the true noise no better (AP 0.54 /
   0.52 / 0.46 against 0.55 / 0.53 / 0.44 on the hippocampus, 0.43 against 0.50 on
   erode/dilate, 0.64 against 0.49 on Markov).

Outputs: ``noise`` = n (the METHODS.md formula, uncertainty included; halved on
the pixels step 7 guards) and ``corrected`` (step 8; given label elsewhere), both
from the final teacher's T dropout samples;
``probabilities`` = p̄; ``sample_reliability`` = 1 − image score (the score is a
mean of λ ∈ [0, 1], so it needs no rescaling and stays comparable across runs).
The teacher is the final model (``models = {"teacher", "student"}``).

Cost, measured on the project's 2-core CPU, lightly loaded (bf16, width 16, depth
4, 12 BBBC039 images of 520×696, batch 8 × 256², 9 steps per epoch): a training
step 0.48 s (4.4 s per epoch); T = 8 teacher passes on a training batch 0.73 s
(+150 % per step, +6.6 s per epoch if sampled per batch); T = 8 passes over the 12
whole images, one tile each, 10.7 s (maps and image scores 0.2 s more); an EMA
update 1 ms. The teacher maps are computed on whole images and cached (cropped
into batches through ``extras``), refreshed every ``refresh_every`` epochs
(default 2: +5.4 s per epoch after the warm-up, a little cheaper than per-batch
sampling, and the estimate sees whole images rather than padded, augmented
patches; the teacher moves slowly anyway). ``run.predict``'s overlapping
512-pixel tiles would cost 3.6 s per pass here instead of 1.2 s, hence the
single-tile ``run.predict_whole``. A refresh stops between two dropout samples
when a stop is requested or the time budget runs out; the closing maps then
continue its passes rather than start again. Under a time budget the run keeps
the time that the T closing passes take (timed at the first pass and at every
refresh), up to half of the budget.

Parameters (``TrainConfig.params``)
-----------------------------------
ema_decay : float, 0.99
    Teacher EMA decay (reached after a ramp, see :class:`EMATeacher`).
mc_samples : int, 8
    Dropout samples T of the teacher.
dropout : float, 0.05
    U-Net dropout of this method's networks (must be > 0; overrides ``TrainConfig.dropout``).
    **(ours)** The channel dropout MC sampling needs costs accuracy by itself: the
    baseline with dropout 0.1 reached 0.853 against 0.885 without (BBBC039
    erode/dilate, full benchmark, seed 0); distill with ε = 0 reached 0.871 with
    dropout 0.05 and warm-up 0.5, 0.849 with dropout 0.1 and warm-up 0.2.
train_dropout : bool, True
    **(ours)** Whether the student trains with its dropout layers on. METHODS.md
    asks for dropout samples of the teacher, not for a student trained with
    dropout; with False the student trains like the baseline and the dropout
    layers act only when the teacher is sampled (their weights are the
    student's EMA either way). Measured (full benchmark, BBBC039 erode/dilate,
    seed 0, floor 0.885): 0.865 with False against 0.859 with True (with
    False noise AP 0.490, Dice(corrected, clean) 0.812): within a seed's spread
    and still below the floor, so the default stays True.
warmup_fraction : float, 0.5
    Fraction of the planned epochs trained with plain CE + Dice first. **(ours)**
    Raised from 0.2: in a 6-epoch run one warm-up epoch leaves a teacher whose
    pseudo labels replace 30 % of the images (ε) with a worse segmentation than
    their noisy labels (test Dice 0.791 with 0.2, 0.824 with 0.5, same run).
refresh_every : int, 2
    Epochs between two teacher refreshes after the warm-up.
image_fraction : float, 0.3
    ε: fraction of images trained on the pseudo label only (with
    ``image_select="outliers"``, the most it may be).
image_select : {"fraction", "outliers"}, "outliers"
    **(ours)** ``"fraction"`` (METHODS.md as written): always the ε·N highest-scoring
    images. ``"outliers"`` (default): only those above Tukey's upper fence of the image scores
    (:func:`select_noisy_images`), so a training set whose images are all about
    equally noisy trains none on pseudo labels alone. Where every image carries
    the noise (the benchmark's α = 1 settings) the fixed fraction hands 30 % of
    them to the teacher's hard argmax: without the image level (ε = 0), BBBC039
    Markov noise, full mode, seed 0, gave 0.910 against 0.846 with it (floor
    0.919). Debug runs, full mode, seeds 0 / 1 / 2, test Dice with "outliers"
    (with "fraction"; floor): Markov 0.919 / 0.934 / 0.922 (0.846 / 0.889 / 0.844;
    0.919 / 0.958 / 0.904); hippocampus 0.733 / 0.707 / 0.633 (0.695 / 0.697 /
    0.593; 0.708 / 0.693 / 0.659), noise AP 0.60 / 0.56 / 0.43, Dice(corrected,
    clean) 0.785 / 0.765 / 0.746; erode/dilate 0.859 / 0.881 / 0.875 (0.865 /
    0.896 / 0.879; 0.885 / 0.930 / 0.892); missing + spurious, seed 0, 0.973
    (0.972; 0.964). From losing every Markov and two hippocampus seeds to ties
    there; a little worse on erode/dilate, where both lose. The benchmark's
    Distill rows were rerun with this default (README).
band : int, 3
    Half-width in pixels of the boundary band in the image score.
dice_weight : float, 1.0
    Weight of the soft Dice term.
correct_threshold : float, 0.5
    λ (or n) above which ``corrected`` takes argmax p̄.
correct_on : str, "weight"
    ``"weight"``: λ = n·(1 − u) decides the corrections; ``"noise"``: n, as in METHODS.md.
dice_target : str, "given"
    ``"given"`` (the given labels, weighted by 1 − λ) or ``"target"`` (the soft target t).
learnt_recall : float, 0.5
    The training guard's recall bar (0: no guard). History per robust epoch:
    ``class_recall`` and ``learnt_classes``.
judge_recall : float, 0.5
    The output guard's recall bar (0: no guard). History: ``final_class_recall``
    and ``final_judged_classes``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from ..core.metrics import to_json_safe
from ..engine.ema import EMATeacher
from ..engine.losses import ce_dice_loss, masked_mean, soft_ce_map, soft_dice_per_sample
from ..engine.train import TrainingRun
from ..engine.unet import set_dropout
from .base import class_recall, learnt_class_ids, learnt_classes, result_from_run, unlearnt_pixels

NAME = "distill"
SUMMARY = ("Mean-teacher MC-dropout noise estimate; pixel-wise given/pseudo label mix and "
           "image-level pseudo labels (Shi & Wu 2021).")
DEFAULTS: dict = {
    "ema_decay": 0.99,
    "mc_samples": 8,
    "dropout": 0.05,
    "train_dropout": True,
    "warmup_fraction": 0.5,
    "refresh_every": 2,
    "image_fraction": 0.3,
    "image_select": "outliers",
    "band": 3,
    "dice_weight": 1.0,
    "correct_threshold": 0.5,
    "correct_on": "weight",
    "dice_target": "given",
    "learnt_recall": 0.5,
    "judge_recall": 0.5,
}

IMAGE_SELECT = ("fraction", "outliers")


# ----------------------------------------------------------------------------- pure maths
def pixel_noise(mean_probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel noise estimate from the teacher's predictive mean.

    Parameters
    ----------
    mean_probabilities : ndarray, float (K, H, W)
        p̄, the mean of the teacher's dropout samples (sums to 1 over K).
    labels : ndarray, int (H, W)
        The given labels.

    Returns
    -------
    noise : ndarray, float32 (H, W)
        n = u + (1 − u)·(1 − p̄(given)), in [0, 1].
    uncertainty : ndarray, float32 (H, W)
        u = −Σ p̄ log p̄ / log K, in [0, 1].
    """
    probabilities = np.clip(np.asarray(mean_probabilities, np.float64), 1e-12, 1.0)
    n_classes = probabilities.shape[0]
    entropy = -(probabilities * np.log(probabilities)).sum(axis=0)
    uncertainty = np.clip(entropy / np.log(max(n_classes, 2)), 0.0, 1.0)
    index = np.asarray(labels, np.int64).clip(0, n_classes - 1)[np.newaxis]
    given = np.take_along_axis(probabilities, index, axis=0)[0]
    noise = uncertainty + (1.0 - uncertainty) * (1.0 - given)
    return np.clip(noise, 0.0, 1.0).astype(np.float32), uncertainty.astype(np.float32)


def score_region(labels: np.ndarray, pseudo: np.ndarray, band: int) -> np.ndarray:
    """Pixels an image score looks at: given ∪ pseudo foreground ∪ a band around the given edges.

    Parameters
    ----------
    labels, pseudo : ndarray, int (H, W)
    band : int
        Half-width of the edge band in pixels (0: no band).

    Returns
    -------
    ndarray, bool (H, W)
    """
    region = (labels > 0) | (pseudo > 0)
    if band > 0:
        edge = np.zeros(labels.shape, bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[1:] |= labels[:-1] != labels[1:]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
        if edge.any():
            region |= ndimage.binary_dilation(edge, iterations=int(band))
    return region


def image_noise_score(noise: np.ndarray, labels: np.ndarray, pseudo: np.ndarray, band: int = 3,
                      ignore: np.ndarray | None = None) -> float:
    """Mean noise n over an image's :func:`score_region` (over every pixel when the region is empty).

    Parameters
    ----------
    noise : ndarray, float (H, W) in [0, 1]
    labels, pseudo : ndarray, int (H, W)
    band : int
    ignore : ndarray, bool (H, W), optional
        Pixels left out.

    Returns
    -------
    float in [0, 1]
    """
    region = score_region(labels, pseudo, band)
    valid = np.ones(labels.shape, bool) if ignore is None else ~ignore
    values = noise[region & valid]
    if values.size == 0:
        values = noise[valid]
    return float(values.mean()) if values.size else 0.0


def select_noisy_images(scores, fraction: float, rule: str = "fraction") -> np.ndarray:
    """The images that train on the pseudo label only.

    ``"fraction"``: the round(fraction·N) images with the highest scores (at least
    one when fraction > 0). ``"outliers"``: of those, only the ones above Tukey's
    upper fence Q3 + 1.5·IQR of the scores, i.e. images much noisier than the rest
    (none when every image is about as noisy). Ties go to the lower index (stable
    sort), so the choice is deterministic.

    Parameters
    ----------
    scores : array-like, float (N,)
    fraction : float in [0, 1]
    rule : {"fraction", "outliers"}

    Returns
    -------
    ndarray, bool (N,)
    """
    scores = np.asarray(scores, np.float64)
    chosen = np.zeros(scores.size, bool)
    if fraction <= 0 or scores.size == 0:
        return chosen
    count = min(scores.size, max(1, int(np.floor(fraction * scores.size + 0.5))))
    chosen[np.argsort(-scores, kind="stable")[:count]] = True
    if rule == "outliers":
        first, third = np.percentile(scores, [25, 75])
        chosen &= scores > third + 1.5 * (third - first)
    return chosen


def robust_target(labels: torch.Tensor, pseudo: torch.Tensor, noise: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Soft target (1 − n)·onehot(given) + n·onehot(pseudo), float32 (B, K, H, W).

    Its soft CE is exactly (1 − n)·CE(p, given) + n·CE(p, pseudo).
    """
    given = F.one_hot(labels.clamp(0, n_classes - 1), n_classes).movedim(-1, 1).float()
    pseudo = F.one_hot(pseudo.long().clamp(0, n_classes - 1), n_classes).movedim(-1, 1).float()
    weight = noise.float().clamp(0.0, 1.0).unsqueeze(1)
    return (1.0 - weight) * given + weight * pseudo


def robust_dice(logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, pseudo_weight: torch.Tensor,
                weights: torch.Tensor, dice_target: str = "given") -> torch.Tensor:
    """Mean soft Dice of a batch (a scalar).

    ``"given"``: against the given ``labels``, each pixel weighted by ``weights`` ×
    (1 − λ), so the Dice term only sees labels the teacher does not replace.
    ``"target"``: against the soft ``target`` (B, K, H, W) with ``weights``.
    """
    if dice_target == "target":
        return soft_dice_per_sample(logits, target, weights).mean()
    keep = 1.0 - pseudo_weight.float().clamp(0.0, 1.0)
    return soft_dice_per_sample(logits, labels, weights * keep).mean()


# ----------------------------------------------------------------------------- helpers
class DropoutMean:
    """The mean of ``samples`` dropout passes over every sample, for the teacher as it was at ``step``.

    A refresh that a stop or the time budget interrupts keeps its passes, and the
    closing maps continue them when the teacher has not moved since (no step was
    taken), rather than starting again.
    """

    def __init__(self, samples: int, step: int):
        self.samples, self.step = max(1, int(samples)), step
        self.total: list | None = None
        self.count = 0

    def add(self, run, model, interruptible: bool = False) -> bool:
        """Run the passes still missing; False when interrupted (``interruptible``) before the last."""
        while self.count < self.samples:
            if interruptible and run.should_stop():
                return False
            probabilities = run.predict_whole(model, mc_dropout=1)
            self.total = probabilities if self.total is None else [a + b for a, b in zip(self.total, probabilities)]
            self.count += 1
        return True

    def mean(self) -> list:
        """(K, H, W) float32 per sample."""
        return [(t / self.count).astype(np.float32) for t in self.total]


def teacher_maps(run, mean_probabilities: list, band: int, learnt_recall: float = 0.0) -> dict:
    """Noise n, pseudo-label weight λ = n·(1 − u), pseudo labels and image scores (mean λ) from p̄.

    ``protected`` (bool (H, W) per sample) marks the pixels whose given or pseudo
    class the teacher does not reproduce yet (its recall of the class's given
    labels is below ``learnt_recall``; 0: none); their λ is 0 (the given label trains them)
    and they count as clean in the image score. ``noise`` is left as it is.
    """
    pseudo = [probabilities.argmax(0).astype(np.int64) for probabilities in mean_probabilities]
    recall = class_recall(pseudo, run.dataset)
    learnt = (learnt_classes(recall, float(learnt_recall)) if learnt_recall > 0
              else np.ones(run.dataset.n_classes, bool))
    noise, weight, protected, scores = [], [], [], []
    for sample, probabilities, sample_pseudo in zip(run.dataset.samples, mean_probabilities, pseudo):
        sample_noise, uncertainty = pixel_noise(probabilities, sample.labels)
        sample_noise[sample.trust] = 0.0
        sample_protected = unlearnt_pixels(learnt, sample.labels, sample_pseudo)
        sample_weight = (sample_noise * (1.0 - uncertainty)).astype(np.float32)
        sample_weight[sample_protected] = 0.0
        noise.append(sample_noise)
        weight.append(sample_weight)
        protected.append(sample_protected)
        scores.append(image_noise_score(sample_weight, sample.labels, sample_pseudo, band, sample.ignore))
    return {"noise": noise, "weight": weight, "pseudo": pseudo, "protected": protected,
            "scores": np.asarray(scores), "class_recall": recall, "learnt": learnt}


def training_weights(run, maps: dict, selected: np.ndarray) -> list:
    """Per-sample pseudo-label weight (H, W) float32: λ, 1 in selected images, 0 on trusted
    and protected pixels (see :func:`teacher_maps`)."""
    weights = []
    samples = run.dataset.samples
    for sample, weight, protected, chosen in zip(samples, maps["weight"], maps["protected"], selected):
        weight = np.ones_like(weight) if chosen else weight.copy()
        weight[sample.trust | protected] = 0.0
        weights.append(weight.astype(np.float32))
    return weights


def curation_outputs(run, mean_probabilities: list, maps: dict, correct_threshold: float,
                     correct_on: str = "weight") -> tuple[list, list]:
    """``noise`` and ``corrected`` from the final teacher's p̄ and :func:`teacher_maps`.

    ``corrected`` = argmax p̄ where λ (``correct_on="weight"``) or n (``"noise"``)
    exceeds ``correct_threshold``, the given label elsewhere and on
    ``maps["protected"]`` pixels, whose noise is halved.

    Returns
    -------
    noise : list of ndarray, float32 (H, W)
    corrected : list of ndarray, int64 (H, W)
    """
    noise, corrected = [], []
    for sample, probabilities, sample_noise, weight, protected in zip(
            run.dataset.samples, mean_probabilities, maps["noise"], maps["weight"], maps["protected"]):
        evidence = weight if correct_on == "weight" else sample_noise
        flip = (evidence > float(correct_threshold)) & ~protected
        sample_noise = np.where(protected, 0.5 * sample_noise, sample_noise).astype(np.float32)
        noise.append(sample_noise)
        corrected.append(np.where(flip, probabilities.argmax(0), sample.labels).astype(np.int64))
    return noise, corrected


def warmup_epochs(run, fraction: float) -> int:
    """Warm-up length from the current epoch plan (re-read every epoch under a time budget)."""
    return max(1, int(round(fraction * run.planned_epochs())))


def check_params(params: dict) -> None:
    if params["dropout"] <= 0:
        raise ValueError("distill needs dropout > 0 (Monte-Carlo dropout of the teacher)")
    if int(params["mc_samples"]) < 1 or int(params["refresh_every"]) < 1:
        raise ValueError("mc_samples and refresh_every must be >= 1")
    if not 0.0 <= params["image_fraction"] <= 1.0:
        raise ValueError("image_fraction must be in [0, 1]")
    if params["correct_on"] not in ("weight", "noise"):
        raise ValueError(f"correct_on must be 'weight' or 'noise', not {params['correct_on']!r}")
    if params["image_select"] not in IMAGE_SELECT:
        raise ValueError(f"image_select must be one of {IMAGE_SELECT}, not {params['image_select']!r}")
    if params["dice_target"] not in ("given", "target"):
        raise ValueError(f"dice_target must be 'given' or 'target', not {params['dice_target']!r}")


# ----------------------------------------------------------------------------- method
def fit(dataset, config, events=None):
    """Train a student with a mean teacher's pixel- and image-level supervision.

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
    check_params(params)
    run = TrainingRun(dataset, config, events)
    student, optimizer = run.new_model(dropout=float(params["dropout"]))
    teacher = EMATeacher(student, decay=float(params["ema_decay"]))
    scaler = run.make_scaler()
    n_classes, band = dataset.n_classes, int(params["band"])
    maps, weights = None, None
    selected = np.zeros(len(dataset), bool)
    run.closing_passes = int(params["mc_samples"])
    passes = None  # the last refresh's dropout passes

    def preview(indices):
        probabilities = run.predict_whole(teacher.model, indices, batch_size=16)
        noise = [pixel_noise(p, dataset.samples[i].labels)[0] for p, i in zip(probabilities, indices)]
        return noise, [p.argmax(0) for p in probabilities]

    warm_end = None  # the epoch the robust phase started at: kept, as a time budget's plan can still grow
    for epoch in run.epochs():
        if warm_end is None and epoch >= warmup_epochs(run, params["warmup_fraction"]):
            warm_end = epoch
        robust = warm_end is not None
        if robust and (maps is None or (epoch - warm_end) % int(params["refresh_every"]) == 0):
            started = time.perf_counter()
            passes = DropoutMean(params["mc_samples"], run.global_step)
            if not passes.add(run, teacher.model, interruptible=True):
                break
            run.note_closing(time.perf_counter() - started)  # the closing maps repeat this work
            maps = teacher_maps(run, passes.mean(), band, params["learnt_recall"])
            selected = select_noisy_images(maps["scores"], params["image_fraction"], params["image_select"])
            weights = training_weights(run, maps, selected)
        student.train()
        set_dropout(student, bool(params["train_dropout"]))
        extras = {"pseudo": (maps["pseudo"], 0), "weight": (weights, 0.0)} if robust else None
        for batch in run.batches(extras=extras):
            with run.path.autocast():
                logits = student(batch.image)
            if robust:
                target = robust_target(batch.labels, batch.extras["pseudo"], batch.extras["weight"], n_classes)
                ce = masked_mean(soft_ce_map(logits, target), batch.weights)
                dice = robust_dice(logits, target, batch.labels, batch.extras["weight"], batch.weights,
                                   params["dice_target"])
                loss = ce + params["dice_weight"] * dice
            else:
                loss = ce_dice_loss(logits, batch.labels, batch.weights)
            run.step(optimizer, loss, scaler, epoch)
            teacher.update(student)
            run.track(logits.detach(), batch.labels, batch.weights)
            run.maybe_preview(preview)
        run.end_epoch(
            epoch,
            stage="robust" if robust else "warmup",
            image_scores=[float(s) for s in maps["scores"]] if robust else None,
            down_weighted_fraction=float(selected.mean()) if robust else 0.0,
            down_weighted_images=[int(i) for i in np.flatnonzero(selected)] if robust else [],
            mean_noise=float(np.mean([n.mean() for n in maps["noise"]])) if robust else None,
            mean_pseudo_weight=float(np.mean([w.mean() for w in weights])) if robust else None,
            class_recall=to_json_safe(maps["class_recall"]) if robust else None,
            learnt_classes=learnt_class_ids(maps["learnt"]) if robust else None,
        )

    run.begin_closing()
    if passes is None or passes.step != run.global_step:  # the teacher moved since the last refresh
        passes = DropoutMean(params["mc_samples"], run.global_step)
    passes.add(run, teacher.model)
    mean = passes.mean()
    final = teacher_maps(run, mean, band, params["judge_recall"])
    noise, corrected = curation_outputs(run, mean, final, params["correct_threshold"], params["correct_on"])
    reliability = 1.0 - np.clip(final["scores"], 0.0, 1.0)
    teacher.model.eval()
    student.eval()
    return result_from_run(
        run, mean, noise, corrected, {"teacher": teacher.model, "student": student},
        final_model="teacher", reliability=reliability,
        history_extra={"final_image_scores": [float(s) for s in final["scores"]],
                       "final_class_recall": to_json_safe(final["class_recall"]),
                       "final_judged_classes": learnt_class_ids(final["learnt"]),
                       "warmup_epochs": warm_end if warm_end is not None
                       else warmup_epochs(run, params["warmup_fraction"])},
    )
