"""CLCS: collaborative learning with curriculum selection (METHODS.md §6; Guo et al., 2025).

Two U-Net branches with different decoders learn together; their voted
probability p̄ decides, per class and with a threshold that follows each class's
learning progress, which pixels are clean. Clean pixels train with CE + Dice on
the given label; noisy pixels are kept, under the Noise Balance Loss.

Algorithm (one training step, both branches, one optimiser)
------------------------------------------------------------
1. Branch A (transposed-convolution decoder) and branch B (bilinear decoder)
   give logits and penultimate features (``UNet.forward_features``).
2. **Discrepancy loss**: the mean (over valid pixels) cosine similarity of the two
   branches' penultimate features, minimised with weight ``discrepancy_weight``,
   keeps the two views different.
3. **Voting**: p̄ = (softmax(A) + softmax(B)) / 2, detached.
4. **Curriculum selection**: a pixel labelled c is clean when p̄(c) ≥ τ_c
   (:class:`CurriculumThreshold`); trusted pixels are always clean.
5. Per branch: ``clean · CE(given) + noisy_weight · noisy · NBL`` averaged over
   valid pixels, plus soft Dice on the clean pixels only. The Noise Balance Loss
   on a noisy pixel is ``w·CE(given) + (1 − w)·RCE(given) + agree_weight · agree ·
   conf · CE(voted)`` with ``w = p̄(given)``, ``voted = argmax p̄``,
   ``conf = p̄(voted)`` (all detached) and ``agree`` = both branches' argmax equal.
6. The step's counts update the learning effects (EMA), hence the thresholds.

Choices marked (ours) in METHODS.md §6, and the ones made here
----------------------------------------------------------------
- **Twin encoders** (ours): two complete U-Nets built by ``run.new_model`` with
  ``up_mode="transpose"`` and ``up_mode="bilinear"`` and different seeds. The spec
  allows a shared encoder; twins reuse ``engine/unet.py`` unchanged and save as two
  ordinary networks. Cost: two forward/backward passes per step (about 2× the baseline).
- **Learning effect** (ours): σ_c = EMA_confident_c / EMA_total_c, where per step
  ``confident_c`` counts valid pixels labelled c with p̄(c) > τ and ``total_c``
  counts valid pixels labelled c. Averaging numerator and denominator separately
  (momentum ``ema`` per step) weights batches by their pixel counts, needs no bias
  correction, and leaves σ_c unchanged when a batch holds no pixel of class c.
- **Convex mapping** (ours, FlexMatch's): β_c = σ_c / normaliser,
  τ_c = τ · β_c / (2 − β_c), τ = ``tau`` (0.8, see the parameter).
- **Warm-up floor** (ours, FlexMatch's threshold warm-up): with ``warmup=True``
  the normaliser is ``max(max_k σ_k, u)`` where u is the fraction of all labelled
  pixels not yet confident (1 − Σ EMA_confident / Σ EMA_total). At the start every
  σ is 0 and u is 1, so every τ_c is 0 (every pixel clean: the networks first learn
  from all labels, as the baseline does); thresholds then rise as the classes are
  learnt, and once most pixels are learnt the normaliser becomes max_k σ_k, the
  best learnt class reaching τ. A slowly learnt (e.g. minority) class keeps a lower
  threshold instead of being filtered out.
- **Learnt-class guard** (ours, shared with Co-Seg and Self-Cleansing through
  ``methods.base.learnt_classes``): a pixel whose given class or voted class is a
  foreground class the branches do not reproduce yet (EMA recall of its given
  labels, argmax p̄ = c on pixels labelled c, below ``learnt_recall``) is always
  clean. The curriculum alone lets a slowly learnt class be filtered against a
  low threshold while p̄(c) is still near 0: on the hippocampus (full benchmark,
  seed 0) 44–54 % / 40–44 % of the two classes' pixels were judged noisy from epoch 3 on
  (train IoU 0.2–0.4) and the Noise Balance Loss pulled them to the voted
  background; test Dice 0.493 (class 2 0.371; floor 0.708, 0.695 / 0.720). With the
  guard at recall 0.5: 0.653 (0.716 / 0.590), Dice(corrected, clean) 0.765 against 0.654 (given
  0.734) — better, still below the floor there; over seeds 0–2 0.579 ± 0.127
  against the floor's 0.686 ± 0.025 (seed 2 lost class 1: 0.275), while its
  corrected labels (0.748) and noise map (AP 0.59 against 0.55) beat the floor's.
  BBBC039 is unchanged (the nuclei are learnt within the first epoch). The
  default guards training at recall 0.7 and judges the outputs at 0.5
  (``learnt_recall``, ``judge_recall``): above the floor on all three seeds.
- The selection of a step uses the thresholds from before that step's update; the
  final ``noise``/``corrected`` use the thresholds at the end of training.
- **Noise Balance Loss** (ours): as in step 5. RCE uses ``log 0 := −4``
  (``reverse_ce_map``), so a confidently contradicted label costs a bounded loss.
- **Outputs**: ``probabilities`` = p̄ of the final branches (eval mode);
  ``noise`` ≥ 0.5 exactly on the pixels judged noisy, graded by p̄(given) on both
  sides of τ_given (see :func:`judge_sample`; ``0.5·(1 − p̄(given))`` on the
  pixels of classes below ``judge_recall``); ``corrected`` = argmax p̄ on noisy pixels
  (p̄(given) < τ_given), the given label elsewhere.
- **sample_reliability** (ours): the fraction of the sample's foreground-relevant
  pixels (given or corrected label > 0; every pixel when there are none) judged
  clean, trusted pixels counting as clean.
- **Saved model**: both branches are saved; ``final_model`` is the transpose
  branch (a checkpoint predicts with one network; the result's probabilities are
  the two-branch vote).

Parameters (``TrainConfig.params``)
-----------------------------------
tau : float, default 0.8
    Confidence that counts a pixel as learnt; the ceiling of every τ_c. **Ours**:
    FlexMatch's 0.95 is for long classification runs; in short segmentation runs
    the vote rarely passes it (BBBC039, 16 epochs: max p̄(given) 0.85–0.93 over
    the first 4 epochs, σ ≈ 0 at the end), so every τ_c stayed 0 and CLCS trained
    like the baseline. Quick benchmark, seed 0, test Dice for τ = 0.95 / 0.8 / 0.7
    (floor): BBBC039 erode/dilate 0.860 / 0.882 / 0.873 (0.843), Markov boundary
    0.794 / 0.807 / 0.805 (0.792), hippocampus erode/dilate 0.567 / 0.537 / 0.485
    (0.501); noise AP 0.763 / 0.938 / 0.715 on erode/dilate. Chosen on seed 0;
    the README's table reports other seeds too.
ema : float, default 0.9
    Momentum (per step) of the learning-effect counts.
warmup : bool, default True
    FlexMatch's warm-up floor on the normaliser (see above).
discrepancy_weight : float, default 0.1
    Weight of the feature cosine-similarity loss.
noisy_weight : float, default 1.0
    Weight of the Noise Balance Loss relative to the clean CE.
agree_weight : float, default 1.0
    Weight of the confidence-weighted CE toward the voted label inside the NBL.
learnt_recall : float, default 0.7
    EMA recall of its given labels at which a foreground class counts as learnt
    for training: below it, its pixels (given or voted) are never selected away
    and never pulled by the Noise Balance Loss (see the guard above).
judge_recall : float, default 0.5
    The same bar for the outputs: ``noise`` and ``corrected`` judge a class's
    pixels against the curriculum thresholds once its final EMA recall reaches
    it. **Ours**: one bar for both (0.5) let selection act on the hippocampus
    classes while the branches still confused them with background and cost
    test Dice; one bar of 0.7 for both protected training but judged nothing
    (neither class reaches 0.7 recall in the full benchmark: no corrections,
    noise AP 0.34–0.37, below the boundary prior's 0.45). Debug runs, full-mode
    hippocampus erode/dilate, seeds 0 / 1 / 2 (floor 0.708 / 0.693 / 0.659):
    learnt_recall / judge_recall 0.5 / 0.5: test Dice 0.653 / 0.651 / 0.432;
    0.7 / 0.7: 0.769 / 0.710 / 0.683, Dice(corrected, clean) = given (0.734);
    0.7 / 0.5: 0.769 / 0.710 / 0.683 (the same training), Dice(corrected,
    clean) 0.801 / 0.780 / 0.760 against the given 0.734 / 0.734 / 0.731,
    noise AUROC 0.98, AP 0.615 / 0.569 / 0.558. The benchmark's rows are in the
    README.

History extras (per epoch)
--------------------------
``thresholds`` (K per epoch, at the epoch's end), ``learning_effect`` (σ, K per
epoch), ``clean_fraction`` (per class: fraction of the epoch's valid pixels
labelled c judged clean; None for a class absent that epoch),
``clean_fraction_all``, ``agree_fraction`` (pixels where the branches agree),
``class_recall`` (K per epoch), ``learnt_classes`` (foreground class ids), the
step losses ``loss``, ``clean_loss``, ``noise_balance_loss``, ``discrepancy``.
After training: ``final_thresholds``, ``final_learning_effect``,
``final_class_recall``, ``final_learnt_classes`` (the training guard's) and
``final_judged_classes`` (the classes the outputs judged, ``judge_recall``).

Costs: a step trains two U-Nets (about twice the baseline's step); the selection
bookkeeping is a few tensor reductions per step; no per-epoch dataset prediction
(only previews, when requested, and one final prediction of both branches).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..engine.losses import ce_map, masked_mean, reverse_ce_map, soft_dice_per_sample
from ..engine.train import TrainingRun
from .base import learnt_class_ids, learnt_classes, result_from_run, unlearnt_pixels

NAME = "clcs"
SUMMARY = ("Two U-Nets (transpose / bilinear decoders) vote; per-class curriculum thresholds select "
           "clean pixels; noisy pixels train under a Noise Balance Loss.")
DEFAULTS: dict = {
    "tau": 0.8,
    "ema": 0.9,
    "warmup": True,
    "discrepancy_weight": 0.1,
    "noisy_weight": 1.0,
    "agree_weight": 1.0,
    "learnt_recall": 0.7,
    "judge_recall": 0.5,
}

_EPS = 1e-6


# ----------------------------------------------------------------------------- curriculum threshold


def curriculum_thresholds(learning_effect, tau: float = 0.95, unlearnt: float | None = None) -> np.ndarray:
    """Per-class thresholds from learning effects (the FlexMatch convex mapping).

    Parameters
    ----------
    learning_effect : array-like of float, shape (K,)
        σ_c in [0, 1]: how much of class c is already learnt.
    tau : float
        The ceiling threshold.
    unlearnt : float, optional
        Warm-up floor of the normaliser (fraction of pixels not yet learnt);
        None disables the warm-up.

    Returns
    -------
    ndarray, float64 (K,)
        τ_c = τ · β_c / (2 − β_c) with β_c = σ_c / max(max_k σ_k, unlearnt); all 0
        when the normaliser is 0.
    """
    sigma = np.clip(np.asarray(learning_effect, np.float64), 0.0, 1.0)
    normaliser = float(sigma.max()) if sigma.size else 0.0
    if unlearnt is not None:
        normaliser = max(normaliser, float(unlearnt))
    if normaliser <= 0.0:
        return np.zeros_like(sigma)
    beta = np.clip(sigma / normaliser, 0.0, 1.0)
    return tau * beta / (2.0 - beta)


class CurriculumThreshold:
    """Per-class curriculum thresholds driven by an EMA of each class's learning effect.

    Parameters
    ----------
    n_classes : int
    tau : float
        Confidence that counts a pixel as learnt, and the highest threshold.
    momentum : float
        EMA momentum per :meth:`update` (0 = only the latest counts).
    warmup : bool
        Floor the normaliser by the fraction of pixels not yet learnt, so that
        thresholds start at 0 and rise with learning progress.

    Notes
    -----
    σ_c = EMA(confident_c) / EMA(total_c), 0 for a class never seen.
    """

    def __init__(self, n_classes: int, tau: float = 0.95, momentum: float = 0.9, warmup: bool = True):
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ema momentum must be in [0, 1), got {momentum}")
        self.n_classes = int(n_classes)
        self.tau = float(tau)
        self.momentum = float(momentum)
        self.warmup = bool(warmup)
        self.confident = np.zeros(self.n_classes, np.float64)
        self.total = np.zeros(self.n_classes, np.float64)
        self.recalled = np.zeros(self.n_classes, np.float64)

    def update(self, confident, total, recalled=None) -> np.ndarray:
        """Fold one step's counts in; returns the new thresholds.

        Parameters
        ----------
        confident : array-like (K,)
            Pixels labelled c whose voted probability of c exceeds ``tau``.
        total : array-like (K,)
            Pixels labelled c.
        recalled : array-like (K,), optional
            Pixels labelled c whose voted class (argmax p̄) is c; feeds :attr:`recall`.
        """
        confident = np.asarray(confident, np.float64)
        total = np.asarray(total, np.float64)
        recalled = np.zeros(self.n_classes) if recalled is None else np.asarray(recalled, np.float64)
        if any(a.shape != (self.n_classes,) for a in (confident, total, recalled)):
            raise ValueError(f"counts must have shape ({self.n_classes},)")
        m = self.momentum
        self.confident = m * self.confident + (1.0 - m) * confident
        self.total = m * self.total + (1.0 - m) * total
        self.recalled = m * self.recalled + (1.0 - m) * recalled
        return self.thresholds()

    @property
    def recall(self) -> np.ndarray:
        """EMA recall of the given labels per class (argmax p̄ = c on pixels labelled c), float64 (K,)."""
        return np.divide(self.recalled, self.total, out=np.zeros_like(self.total), where=self.total > 0)

    def learnt(self, threshold: float) -> np.ndarray:
        """bool (K,): background, and the classes whose :attr:`recall` is ≥ ``threshold``."""
        return learnt_classes(list(self.recall), threshold)

    @property
    def learning_effect(self) -> np.ndarray:
        """σ_c, float64 (K,) in [0, 1]."""
        return np.divide(self.confident, self.total, out=np.zeros_like(self.total), where=self.total > 0)

    @property
    def unlearnt(self) -> float:
        """Fraction of all labelled pixels not yet learnt (1 before any update)."""
        total = self.total.sum()
        return 1.0 if total <= 0 else float(1.0 - self.confident.sum() / total)

    def thresholds(self) -> np.ndarray:
        """τ_c, float64 (K,)."""
        return curriculum_thresholds(self.learning_effect, self.tau, self.unlearnt if self.warmup else None)


# ----------------------------------------------------------------------------- losses and selection


def feature_discrepancy(features_a: torch.Tensor, features_b: torch.Tensor, weights: torch.Tensor | None = None):
    """Mean cosine similarity of two branches' features over valid pixels (a scalar).

    Parameters
    ----------
    features_a, features_b : torch.Tensor (N, F, H, W)
    weights : torch.Tensor (N, H, W), optional
    """
    similarity = F.cosine_similarity(features_a.float(), features_b.float(), dim=1, eps=1e-6)
    return masked_mean(similarity, weights)


@torch.no_grad()
def select_clean(mean_probabilities, labels, thresholds, trust=None, learnt=None):
    """Clean-pixel mask and p̄(given) of a batch.

    Parameters
    ----------
    mean_probabilities : torch.Tensor (N, K, H, W)
        Voted probabilities p̄.
    labels : torch.Tensor (N, H, W) int64
    thresholds : torch.Tensor (K,)
    trust : torch.Tensor (N, H, W) bool, optional
        Always clean.
    learnt : torch.Tensor (K,) bool, optional
        Classes the branches have learnt; a pixel whose given or voted class is
        not learnt is always clean.

    Returns
    -------
    clean : torch.Tensor (N, H, W) bool
    given : torch.Tensor (N, H, W) float, p̄(given label)
    """
    index = labels.clamp(0, mean_probabilities.shape[1] - 1)
    given = mean_probabilities.gather(1, index.unsqueeze(1)).squeeze(1)
    clean = given >= thresholds[index]
    if trust is not None:
        clean = clean | trust
    if learnt is not None:
        clean = clean | unlearnt_pixels(learnt, index, mean_probabilities.argmax(1))
    return clean, given


@torch.no_grad()
def class_counts(given, labels, weights, tau: float, n_classes: int, voted=None):
    """Per-class (confident, total, recalled) pixel counts, float64 numpy (K,) each.

    ``confident`` counts valid pixels labelled c with p̄(c) > ``tau``; ``recalled``
    those whose voted class ``voted`` (N, H, W) is c (zeros without ``voted``).
    """
    valid = weights > 0
    index = labels.clamp(0, n_classes - 1)[valid]
    confident = torch.bincount(index[given[valid] > tau], minlength=n_classes)
    total = torch.bincount(index, minlength=n_classes)
    recalled = (torch.zeros_like(total) if voted is None
                else torch.bincount(index[voted[valid] == index], minlength=n_classes))
    return tuple(c.double().cpu().numpy() for c in (confident, total, recalled))


def branch_loss(logits, labels, weights, clean, given, voted, confidence, agree, params):
    """One branch's CLCS loss: clean CE + Dice, Noise Balance Loss on the rest.

    Parameters
    ----------
    logits : torch.Tensor (N, K, H, W)
    labels : torch.Tensor (N, H, W) int64, the given labels
    weights : torch.Tensor (N, H, W) float, 0 on padding/ignored
    clean : torch.Tensor (N, H, W) bool
    given, confidence : torch.Tensor (N, H, W) float, p̄(given) and p̄(voted), detached
    voted : torch.Tensor (N, H, W) int64, argmax p̄
    agree : torch.Tensor (N, H, W) bool, the two branches' argmax agree

    Returns
    -------
    (loss, clean_part, noisy_part) scalars.
    """
    clean_f = clean.float()
    noisy_f = 1.0 - clean_f
    ce_given = ce_map(logits, labels)
    balance = given * ce_given + (1.0 - given) * reverse_ce_map(logits, labels)
    balance = balance + params["agree_weight"] * agree.float() * confidence * ce_map(logits, voted)
    clean_part = masked_mean(clean_f * ce_given, weights)
    clean_part = clean_part + soft_dice_per_sample(logits, labels, weights * clean_f).mean()
    noisy_part = params["noisy_weight"] * masked_mean(noisy_f * balance, weights)
    return clean_part + noisy_part, clean_part, noisy_part


# ----------------------------------------------------------------------------- outputs


def judge_sample(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray, frozen=None,
                 protected=None):
    """noise, corrected and the noisy mask of one sample.

    Parameters
    ----------
    probabilities : ndarray float32 (K, H, W), voted p̄
    labels : ndarray int (H, W), given labels
    thresholds : ndarray (K,), τ_c
    frozen : ndarray bool (H, W), optional
        Trusted or ignored pixels: never noisy, never corrected.
    protected : ndarray bool (H, W), optional
        Pixels of a class the branches have not learnt: never noisy, never
        corrected, and their noise is ``0.5·(1 − p)`` (below 0.5, still ranked).

    Returns
    -------
    noise : ndarray float32 (H, W) in [0, 1]; with p = p̄(given) and τ = τ_given:
        ``0.5 + 0.5·(1 − p/τ)`` on pixels judged noisy (p < τ), in (0.5, 1];
        ``0.5·(1 − p)/(1 − τ)`` on pixels judged clean, in [0, 0.5]. Continuous at
        p = τ, decreasing in p, and ≥ 0.5 exactly where the curriculum judged the
        pixel noisy; it ranks every pixel, also while τ is still 0 (the earlier
        ``clip(1 − p/τ)`` was 0 on every clean pixel and constant whenever no
        threshold had risen: AUROC 0.5 on the benchmark).
    corrected : ndarray int64 (H, W), argmax p̄ on noisy pixels, given elsewhere
    noisy : ndarray bool (H, W), p̄(given) < τ_given and not frozen
    """
    index = labels.astype(np.int64).clip(0, probabilities.shape[0] - 1)
    given = np.take_along_axis(probabilities, index[np.newaxis], axis=0)[0]
    tau_given = np.asarray(thresholds, np.float64)[index]
    noisy = given < tau_given
    if frozen is not None:
        noisy &= ~frozen
    below = 0.5 + 0.5 * (1.0 - given / np.maximum(tau_given, _EPS))
    above = 0.5 * (1.0 - given) / np.maximum(1.0 - tau_given, _EPS)
    noise = np.clip(np.where(given < tau_given, below, above), 0.0, 1.0).astype(np.float32)
    if protected is not None:
        noisy &= ~protected
        noise = np.where(protected, 0.5 * (1.0 - given), noise).astype(np.float32)
    corrected = np.where(noisy, probabilities.argmax(0), labels).astype(np.int64)
    return noise, corrected, noisy


def clean_reliability(noisy: np.ndarray, labels: np.ndarray, corrected: np.ndarray) -> float:
    """Fraction of the foreground-relevant pixels (given or corrected > 0) judged clean."""
    region = (labels > 0) | (corrected > 0)
    values = noisy[region] if region.any() else noisy
    return float(1.0 - values.mean()) if values.size else 1.0


# ----------------------------------------------------------------------------- training


class _EpochStats:
    """Per-class clean / total pixel counts and branch agreement over one epoch."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self.clean = np.zeros(n_classes)
        self.total = np.zeros(n_classes)
        self.agree = 0.0
        self.pixels = 0.0

    @torch.no_grad()
    def add(self, labels, weights, clean, agree) -> None:
        valid = weights > 0
        index = labels.clamp(0, self.n_classes - 1)[valid]
        self.clean += torch.bincount(index[clean[valid]], minlength=self.n_classes).double().cpu().numpy()
        self.total += torch.bincount(index, minlength=self.n_classes).double().cpu().numpy()
        self.agree += float(agree[valid].sum())
        self.pixels += float(valid.sum())

    def record(self) -> dict:
        per_class = [float(c / t) if t > 0 else None for c, t in zip(self.clean, self.total)]
        return {
            "clean_fraction": per_class,
            "clean_fraction_all": float(self.clean.sum() / max(self.total.sum(), 1.0)),
            "agree_fraction": float(self.agree / max(self.pixels, 1.0)),
        }


def _train_step(run, models, optimizer, scaler, batch, curriculum, stats, params, epoch) -> None:
    model_a, model_b = models
    with run.path.autocast():
        logits_a, features_a = model_a.forward_features(batch.image)
        logits_b, features_b = model_b.forward_features(batch.image)
    n_classes = logits_a.shape[1]
    with torch.no_grad():
        probabilities_a = F.softmax(logits_a.float(), dim=1)
        probabilities_b = F.softmax(logits_b.float(), dim=1)
        mean_probabilities = 0.5 * (probabilities_a + probabilities_b)
        thresholds = torch.as_tensor(curriculum.thresholds(), dtype=torch.float32, device=run.device)
        learnt = torch.as_tensor(curriculum.learnt(params["learnt_recall"]), device=run.device)
        clean, given = select_clean(mean_probabilities, batch.labels, thresholds, batch.trust, learnt)
        confidence, voted = mean_probabilities.max(dim=1)
        agree = probabilities_a.argmax(1) == probabilities_b.argmax(1)
    parts = [
        branch_loss(logits, batch.labels, batch.weights, clean, given, voted, confidence, agree, params)
        for logits in (logits_a, logits_b)
    ]
    discrepancy = feature_discrepancy(features_a, features_b, batch.weights)
    loss = parts[0][0] + parts[1][0] + params["discrepancy_weight"] * discrepancy
    losses = {
        "loss": float(loss.detach()),
        "clean_loss": float(parts[0][1].detach() + parts[1][1].detach()) / 2,
        "noise_balance_loss": float(parts[0][2].detach() + parts[1][2].detach()) / 2,
        "discrepancy": float(discrepancy.detach()),
    }
    run.step(optimizer, loss, scaler, epoch, losses)
    curriculum.update(*class_counts(given, batch.labels, batch.weights, curriculum.tau, n_classes, voted))
    stats.add(batch.labels, batch.weights, clean, agree)
    run.track(mean_probabilities.log(), batch.labels, batch.weights)


def _judge_all(run, models, curriculum, judge_recall, indices=None):
    dataset = run.dataset
    indices = list(range(len(dataset))) if indices is None else list(indices)
    probabilities = run.predict(list(models), indices)
    thresholds = curriculum.thresholds()
    learnt = curriculum.learnt(judge_recall)
    judged = [
        judge_sample(p, s.labels, thresholds, s.trust | s.ignore, unlearnt_pixels(learnt, s.labels, p.argmax(0)))
        for p, s in zip(probabilities, (dataset.samples[i] for i in indices))
    ]
    return probabilities, judged


def fit(dataset, config, events=None):
    """Train two collaborating branches with curriculum selection; judge every pixel.

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
    events : Progress, callable or None

    Returns
    -------
    CurationResult
        ``probabilities`` are the two branches' vote; see the module docstring for
        ``noise``, ``corrected``, ``sample_reliability`` and the history.
    """
    params = config.with_params(DEFAULTS)
    run = TrainingRun(dataset, config, events)
    model_a, _ = run.new_model(seed_offset=0, up_mode="transpose")
    model_b, _ = run.new_model(seed_offset=1, up_mode="bilinear")
    models = (model_a, model_b)
    run.closing_passes = 2
    optimizer = torch.optim.AdamW(
        list(model_a.parameters()) + list(model_b.parameters()),
        lr=config.learning_rate, weight_decay=config.weight_decay,
    )
    scaler = run.make_scaler()
    curriculum = CurriculumThreshold(dataset.n_classes, params["tau"], params["ema"], params["warmup"])

    def preview(indices):
        _, judged = _judge_all(run, models, curriculum, params["judge_recall"], indices)
        for model in models:  # prediction switched them to eval mode
            model.train()
        return [j[0] for j in judged], [j[1] for j in judged]

    for epoch in run.epochs():
        for model in models:
            model.train()
        stats = _EpochStats(dataset.n_classes)
        for batch in run.batches():
            _train_step(run, models, optimizer, scaler, batch, curriculum, stats, params, epoch)
            run.maybe_preview(preview)
        run.end_epoch(
            epoch,
            thresholds=[float(t) for t in curriculum.thresholds()],
            learning_effect=[float(s) for s in curriculum.learning_effect],
            class_recall=[float(r) for r in curriculum.recall],
            learnt_classes=learnt_class_ids(curriculum.learnt(params["learnt_recall"])),
            **stats.record(),
        )

    run.begin_closing()
    probabilities, judged = _judge_all(run, models, curriculum, params["judge_recall"])
    noise = [j[0] for j in judged]
    corrected = [j[1] for j in judged]
    reliability = [clean_reliability(j[2], s.labels, j[1]) for j, s in zip(judged, dataset.samples)]
    return result_from_run(
        run, probabilities, noise, corrected,
        {"branch_transpose": model_a, "branch_bilinear": model_b},
        final_model="branch_transpose",
        reliability=reliability,
        history_extra={
            "final_thresholds": [float(t) for t in curriculum.thresholds()],
            "final_learning_effect": [float(s) for s in curriculum.learning_effect],
            "final_class_recall": [float(r) for r in curriculum.recall],
            "final_learnt_classes": learnt_class_ids(curriculum.learnt(params["learnt_recall"])),
            "final_judged_classes": learnt_class_ids(curriculum.learnt(params["judge_recall"])),
        },
    )
