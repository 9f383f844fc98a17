"""Out-of-fold confident learning (METHODS.md §7).

The anchor method: confident learning (Northcutt et al., JAIR 2021; the ``cleanlab``
library) as applied to segmentation by Zhang et al. (MICCAI 2020). It needs no
assumption about the kind of noise, only probabilities that were predicted by a
network that never saw the label it is judging.

Algorithm
---------
1. **Folds.** The images are split into K folds (``folds``, 2..5). Samples of one
   source (the slices of a volume or a stack) always share a fold, so a fold model
   never sees a neighbouring slice's labels. Sources are shuffled with the seed and
   given, one by one, to the fold with the fewest pixels so far (balanced folds).
   **(ours)** Fallbacks when there are fewer sources than folds: one source with
   several samples is cut into K contiguous blocks of samples; a single 2D image is
   cut into K contiguous bands along its longer axis, and the held-out band's
   labels are masked out of the fold model's loss (weight 0) — its pixels are still
   seen as image context, never as labels. ``history["fold_kind"]`` says which.
2. **Fold models.** Fold k trains a baseline-style U-Net (CE + Dice on the given
   labels) on every fold but k, then predicts fold k: out-of-fold probabilities
   p (K, H, W) for every pixel of every sample.
3. **Confident learning.** Per-class thresholds t_k = mean p_k over the pixels
   labelled k (ignored pixels left out). A class *clears* its threshold at a pixel
   when p_k ≥ t_k. A pixel is **flagged** when some class clears its threshold,
   cleanlab's guess of its true class (the one class that clears, or the argmax when
   several do: ``cleanlab.count.compute_confident_joint``) differs from the given
   label, and the argmax differs from it too (cleanlab removes issues whose
   prediction equals the given label; without this, weak fold models with low
   thresholds, t_fg < 0.5, flagged a quarter of all pixels in the quick benchmark).
   Trusted and ignored pixels are never flagged.
   On flagged pixels ``corrected`` is the class, other than the given one, that
   clears its threshold with the largest margin p_k − t_k; elsewhere it is the
   given label.
4. **Retrain (ours).** A fresh U-Net is trained on the cleaned labels: flagged
   pixels are left out of the loss (``retrain="ignore"``, the default: cleanlab's
   prune-and-retrain) or take their corrected class (``retrain="corrected"``, as in
   Zhang et al., who train on CL-corrected labels). A wrong flag then costs a pixel
   of supervision instead of a wrong label: on the three quick BBBC039 settings
   (seed 0) the final model's test Dice was 0.931 / 0.937 / 0.931 with "ignore"
   against 0.900 / 0.814 / 0.903 with "corrected". It becomes
   ``final_model`` ("final"), the network the viewer and ``noisyseg predict`` use.
   With ``retrain="none"`` no final model is trained and ``final_model`` is
   "fold0" — one fold model, not an ensemble: a checkpoint names one network
   (``predict`` uses that one); ``models`` holds every fold model, so a caller may
   average them with :func:`napari_noisyseg.engine.infer.predict_many`.

Outputs
-------
- ``probabilities``: the **out-of-fold** probabilities (what ``noise`` and
  ``corrected`` are computed from, as for every method; the final model's
  in-sample predictions on its own training labels would say little).
- ``noise`` **(ours)** = 0.5·flagged + 0.5·(1 − p(given label)), capped at 0.499 on
  unflagged pixels. It ranks every flagged pixel above every unflagged one and,
  within each group, by p(given label) (cleanlab's self-confidence ranking), so the
  map is a full ranking (useful for AUROC/AP and for a review list) while
  ``noise ≥ 0.5`` is exactly the confident-learning decision (F1 at 0.5 scores it).
- ``corrected``: as in step 3.
- ``sample_reliability``: 1 − mean noise over the given or proposed foreground
  (:func:`~napari_noisyseg.methods.base.reliability_from_noise`).
- ``history``: per epoch ``phase`` (fold index, or K for the final model) plus
  loss and IoU against the labels being trained on; and ``fold_kind``,
  ``fold_of_sample``, ``fold_epochs``, ``final_epochs``, ``thresholds`` (t_k),
  ``flagged_fraction``, ``flagged_per_class`` (fraction of the pixels labelled k
  flagged), ``oof_complete`` (False when a stop left some fold untrained and its
  pixels were predicted by in-fold models), ``final_trained``.

Budget **(ours)**
-----------------
The method costs about what the baseline costs with the same config. With
``epochs = E`` (counted in passes over the whole dataset), each fold model gets
F = max(1, round(E·(1 − s)/(K − 1))) epochs over its (K−1)/K of the data and the
final model R = max(1, round(E·s)) epochs, s = ``retrain_share`` (0 when
``retrain="none"``): K·F·(K−1)/K + R ≈ E. Under ``minutes`` F is set from the
epoch plan the first epoch measured, and the final model trains until the time
is up. The out-of-fold predictions cost one prediction pass over the dataset in
all (each sample is predicted by one fold model; in the band fallback, by each
fold model once).

Parameters (``DEFAULTS``)
-------------------------
folds : int, 3
    K, 2..5 (fewer when there are fewer sources; see step 1).
retrain : {"ignore", "corrected", "none"}, "ignore"
retrain_share : float in (0, 1), 1/3
    Share of the budget for the final model. The out-of-fold probabilities decide
    every flag and correction, so the fold models get the larger share (one quick
    BBBC039 erode/dilate run, 24 epochs, seed 0: noise AP 0.71 with a share of 0.3,
    0.53 with 0.5, whose fold models were weaker; its final model was better).
"""

from __future__ import annotations

import math

import numpy as np

from ..engine.losses import ce_dice_loss
from ..engine.train import TrainingRun
from .base import noise_from_probabilities, result_from_run

NAME = "confident"
SUMMARY = ("Confident learning: K-fold out-of-fold probabilities and per-class thresholds flag "
           "likely label errors; a final U-Net is retrained on the cleaned labels.")
DEFAULTS: dict = {"folds": 3, "retrain": "ignore", "retrain_share": 1 / 3}
RETRAIN_MODES = ("corrected", "ignore", "none")
UNFLAGGED_CAP = 0.499


# ----------------------------------------------------------------------------- folds


def assign_folds(dataset, folds: int, seed: int) -> tuple[list, int, str]:
    """Per-pixel fold maps for out-of-fold prediction.

    Parameters
    ----------
    dataset : NoisyDataset
    folds : int
        Requested K (2..5).
    seed : int

    Returns
    -------
    fold_maps : list of ndarray, int8 (H, W)
        Fold of every pixel of every sample.
    n_folds : int
        K actually used (≤ ``folds``).
    kind : str
        ``"source"`` (whole sources per fold), ``"sample"`` (contiguous blocks of one
        source's samples) or ``"band"`` (contiguous bands of a single image).
    """
    samples = dataset.samples
    sources = sorted({s.source for s in samples})
    if len(sources) >= 2:
        n_folds = min(folds, len(sources))
        pixels = {src: 0 for src in sources}
        for s in samples:
            pixels[s.source] += s.labels.size
        order = [sources[i] for i in np.random.default_rng(seed).permutation(len(sources))]
        load, fold_of_source = [0] * n_folds, {}
        for src in order:
            fold = int(np.argmin(load))
            fold_of_source[src] = fold
            load[fold] += pixels[src]
        maps = [np.full(s.shape, fold_of_source[s.source], np.int8) for s in samples]
        return maps, n_folds, "source"
    if len(samples) >= 2:
        n_folds = min(folds, len(samples))
        maps = [np.full(s.shape, i * n_folds // len(samples), np.int8) for i, s in enumerate(samples)]
        return maps, n_folds, "sample"
    height, width = samples[0].shape
    axis, length = (0, height) if height >= width else (1, width)
    band = (np.arange(length) * folds // length).astype(np.int8)
    fold_map = np.broadcast_to(band[:, None] if axis == 0 else band[None, :], (height, width)).copy()
    return [fold_map], folds, "band"


def fold_schedule(units: float, n_folds: int, share: float) -> tuple[int, int]:
    """Epochs per fold model and for the final model from a budget of ``units`` full-data epochs.

    Returns
    -------
    (fold_epochs, final_epochs) : tuple of int
        ``final_epochs`` is 0 when ``share`` is 0 (no retraining).
    """
    fold_epochs = max(1, int(round(units * (1.0 - share) / (n_folds - 1))))
    final_epochs = max(1, int(round(units * share))) if share > 0 else 0
    return fold_epochs, final_epochs


# ----------------------------------------------------------------------------- confident learning


def confident_thresholds(probabilities: list, labels: list, valid: list) -> np.ndarray:
    """t_k = mean p_k over the pixels labelled k.

    Parameters
    ----------
    probabilities : list of ndarray, float32 (K, H, W)
    labels : list of ndarray, int (H, W)
    valid : list of ndarray, bool (H, W)
        Pixels that count (not ignored).

    Returns
    -------
    ndarray, float64 (K,)
        ``nan`` for a class no pixel is labelled with (it can never clear).
    """
    n_classes = probabilities[0].shape[0]
    sums = np.zeros(n_classes)
    counts = np.zeros(n_classes)
    for p, y, keep in zip(probabilities, labels, valid):
        y_valid = y[keep]
        counts += np.bincount(y_valid, minlength=n_classes)[:n_classes]
        for k in range(n_classes):
            sums[k] += float(p[k][keep][y_valid == k].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def confident_flags(probabilities: np.ndarray, labels: np.ndarray, thresholds: np.ndarray,
                    frozen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flag pixels by the confident-joint rule and propose their class.

    A pixel is flagged when some class clears its threshold, cleanlab's guess of the
    true class (the single class that clears, or the argmax when several do) differs
    from the given label, and so does the argmax (cleanlab drops issues whose
    prediction equals the label).

    Parameters
    ----------
    probabilities : ndarray, float32 (K, H, W)
        Out-of-fold probabilities.
    labels : ndarray, int (H, W)
        Given labels.
    thresholds : ndarray, float64 (K,)
        From :func:`confident_thresholds` (nan = never clears).
    frozen : ndarray of bool (H, W), optional
        Trusted or ignored pixels: never flagged.

    Returns
    -------
    flagged : ndarray of bool (H, W)
    corrected : ndarray of int64 (H, W)
        The given labels, with flagged pixels set to the other class clearing its
        threshold by the largest margin p_k − t_k.
    """
    t = np.nan_to_num(thresholds, nan=np.inf)[:, None, None]
    clears = probabilities >= t
    argmax = probabilities.argmax(axis=0)
    # cleanlab's guess of the true class: the one class that clears, or the argmax when several do.
    k_star = np.where(clears.sum(axis=0) > 1, argmax, clears.argmax(axis=0))
    flagged = clears.any(axis=0) & (k_star != labels) & (argmax != labels)
    if frozen is not None:
        flagged &= ~frozen
    margin = np.where(clears, probabilities - np.where(np.isfinite(t), t, 0.0), -np.inf)
    np.put_along_axis(margin, labels[None].astype(np.int64), -np.inf, axis=0)
    corrected = np.where(flagged, margin.argmax(axis=0), labels).astype(np.int64)
    return flagged, corrected


def confident_noise(probabilities: np.ndarray, labels: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """0.5·flagged + 0.5·(1 − p(given)), unflagged capped below 0.5; float32 (H, W)."""
    base = 0.5 * noise_from_probabilities(probabilities, labels)
    return np.where(flagged, 0.5 + base, np.minimum(base, UNFLAGGED_CAP)).astype(np.float32)


# ----------------------------------------------------------------------------- training


def _train_epoch(run, model, optimizer, scaler, epoch, samples, extras, preview, target_key=None, mask_fold=None):
    """One epoch of CE + Dice; ``mask_fold`` drops that fold's pixels, ``target_key`` swaps the labels."""
    model.train()
    for batch in run.batches(samples, extras):
        weights = batch.weights
        if mask_fold is not None:
            weights = weights * (batch.extras["fold"] != mask_fold)
        if "keep" in batch.extras:
            weights = weights * batch.extras["keep"]
        labels = batch.extras[target_key] if target_key else batch.labels
        with run.path.autocast():
            logits = model(batch.image)
        loss = ce_dice_loss(logits, labels, weights)
        run.step(optimizer, loss, scaler, epoch)
        run.track(logits.detach(), labels, weights)
        run.maybe_preview(preview)


class _OutOfFold:
    """Collects out-of-fold probabilities fold by fold."""

    def __init__(self, fold_maps, n_folds):
        self.fold_maps = fold_maps
        self.n_folds = n_folds
        self.probabilities = [None] * len(fold_maps)
        self.done = set()
        self.in_fold = set()

    def members(self, fold):
        return [i for i, m in enumerate(self.fold_maps) if (m == fold).any()]

    def training_samples(self, fold):
        return [i for i, m in enumerate(self.fold_maps) if (m != fold).any()]

    def fill(self, run, models, fold, in_fold=False):
        """Predict ``fold``'s pixels with ``models`` (its own model unless ``in_fold``)."""
        indices = self.members(fold)
        if indices:
            for i, p in zip(indices, run.predict(models, indices)):
                mask = self.fold_maps[i] == fold
                if mask.all():
                    self.probabilities[i] = p
                else:
                    if self.probabilities[i] is None:
                        self.probabilities[i] = np.zeros_like(p)
                    self.probabilities[i][:, mask] = p[:, mask]
        self.done.add(fold)
        if in_fold:
            self.in_fold.add(fold)


def _flag_summary(labels, flagged, valid, n_classes) -> dict:
    """Fraction of valid pixels flagged, overall and per given class (None: class unused)."""
    total = sum(int(v.sum()) for v in valid)
    flagged_total = sum(int((f & v).sum()) for f, v in zip(flagged, valid))
    per_class = []
    for k in range(n_classes):
        count = sum(int(((y == k) & v).sum()) for y, v in zip(labels, valid))
        hits = sum(int(((y == k) & f & v).sum()) for y, f, v in zip(labels, flagged, valid))
        per_class.append(hits / count if count else None)
    return {"flagged_fraction": flagged_total / total if total else 0.0, "flagged_per_class": per_class}


def _budget_units(run, n_folds):
    """Budget in full-data epochs: the config's epochs, or what the time plan allows."""
    if not run.config.minutes:
        return float(run.config.epochs)
    return run.planned_epochs() * (n_folds - 1) / n_folds


def fit(dataset, config, events=None):
    """Train K fold models, flag label errors by confident learning, retrain on cleaned labels.

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
    events : Progress, callable or None

    Returns
    -------
    CurationResult
        ``probabilities`` are out-of-fold; ``final_model`` is "final" (or "fold0"
        with ``retrain="none"`` or when a stop came before the final model trained).
    """
    params = config.with_params(DEFAULTS)
    folds = int(params["folds"])
    if not 2 <= folds <= 5:
        raise ValueError(f"confident: folds must be 2..5, got {folds}")
    retrain = params["retrain"]
    if retrain not in RETRAIN_MODES:
        raise ValueError(f"confident: retrain must be one of {RETRAIN_MODES}, got {retrain!r}")
    share = float(params["retrain_share"]) if retrain != "none" else 0.0
    if retrain != "none" and not 0.0 < share < 1.0:
        raise ValueError(f"confident: retrain_share must be in (0, 1), got {share}")

    run = TrainingRun(dataset, config, events)
    scaler = run.make_scaler()
    fold_maps, n_folds, fold_kind = assign_folds(dataset, folds, config.seed)
    oof = _OutOfFold(fold_maps, n_folds)
    fold_extras = {"fold": (fold_maps, -1)} if fold_kind == "band" else {}
    models: dict = {}
    state = {"model": None}

    def preview(indices):
        probabilities = run.predict(state["model"], indices)
        noise = [noise_from_probabilities(p, dataset.samples[i].labels) for p, i in zip(probabilities, indices)]
        return noise, [p.argmax(0) for p in probabilities]

    labels = dataset.labels
    valid = [~s.ignore for s in dataset.samples]
    frozen = [s.trust | s.ignore for s in dataset.samples]
    cl: dict = {}

    def confident_learning():
        """Fill ``cl`` from the out-of-fold probabilities (any fold not done is predicted in-fold)."""
        trained = [models[f"fold{k}"] for k in range(n_folds) if f"fold{k}" in models]
        if not trained:
            models["fold0"], _ = run.new_model(seed_offset=0)
            trained = [models["fold0"]]
        for k in range(n_folds):
            if k not in oof.done:
                oof.fill(run, trained, k, in_fold=True)
        thresholds = confident_thresholds(oof.probabilities, labels, valid)
        flags = [confident_flags(p, y, thresholds, f) for p, y, f in zip(oof.probabilities, labels, frozen)]
        cl.update(thresholds=thresholds, flagged=[f for f, _ in flags], corrected=[c for _, c in flags])

    epoch, phase = 0, None
    final_epochs_done = 0
    optimizer = None
    schedule = None  # (fold epochs, final epochs); under a time budget, set from the first measured plan

    def run_end() -> int:
        end = n_folds * schedule[0] + schedule[1]
        if run.config.minutes and share > 0:
            end = max(end, run.planned_epochs())  # the final model trains until the time is up
        return end

    while not run.should_stop():
        if schedule is None or (run.config.minutes and epoch <= 1):
            schedule = fold_schedule(_budget_units(run, n_folds), n_folds, share)
        fold_epochs = schedule[0]
        if epoch >= run_end():
            break
        new_phase = min(epoch // fold_epochs, n_folds)
        if new_phase != phase:
            if phase is not None and phase < n_folds:
                oof.fill(run, models[f"fold{phase}"], phase)
            phase = new_phase
            if phase < n_folds:
                state["model"], optimizer = run.new_model(seed_offset=phase)
                models[f"fold{phase}"] = state["model"]
                run.lr_phase(optimizer, epoch, fold_epochs)
            else:
                confident_learning()
                state["model"], optimizer = run.new_model(seed_offset=n_folds)
                models["final"] = state["model"]
                run.lr_phase(optimizer, epoch, lambda start=epoch: run_end() - start)
        if phase < n_folds:
            _train_epoch(run, state["model"], optimizer, scaler, epoch, oof.training_samples(phase),
                         fold_extras, preview, mask_fold=phase if fold_extras else None)
        else:
            targets = cl["corrected"] if retrain == "corrected" else labels
            extras = {"target": (targets, 0)}
            if retrain == "ignore":
                extras["keep"] = ([(~f).astype(np.float32) for f in cl["flagged"]], 0.0)
            _train_epoch(run, state["model"], optimizer, scaler, epoch, None, extras, preview, target_key="target")
            final_epochs_done += 0 if run.should_stop() and run.stopped else 1
        run.end_epoch(epoch, phase=phase)
        epoch += 1

    run.begin_closing()
    if phase is not None and phase < n_folds and phase not in oof.done:
        oof.fill(run, models[f"fold{phase}"], phase)
    if not cl:
        confident_learning()
    final_trained = final_epochs_done > 0
    final_model = "final" if final_trained else "fold0"
    if not final_trained:
        models.pop("final", None)

    noise = [confident_noise(p, y, f) for p, y, f in zip(oof.probabilities, labels, cl["flagged"])]
    extra = {
        "folds": n_folds,
        "fold_kind": fold_kind,
        "fold_of_sample": [int(np.bincount(m.ravel().astype(np.int64)).argmax()) for m in fold_maps],
        "fold_epochs": (schedule or fold_schedule(_budget_units(run, n_folds), n_folds, share))[0],
        "final_epochs": final_epochs_done,
        "thresholds": [None if not math.isfinite(t) else float(t) for t in cl["thresholds"]],
        **_flag_summary(labels, cl["flagged"], valid, dataset.n_classes),
        "oof_complete": not oof.in_fold,
        "final_trained": final_trained,
        "retrain": retrain,
    }
    return result_from_run(run, oof.probabilities, noise, cl["corrected"], models, final_model=final_model,
                           history_extra=extra)
