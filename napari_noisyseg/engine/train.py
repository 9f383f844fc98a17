"""The training loop machinery every method shares.

A method owns its algorithm; :class:`TrainingRun` owns everything around it:
seeding, device and numeric path, the patch sampler, the epoch or time budget,
the stop flag (checked before every step), typed events, per-class IoU
tracking against the current training labels, and batched inference.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core.patches import PatchSampler, crop, effective_patch_size, patches_per_sample, valid_mask
from .device import numeric_path, resolve_device
from .events import EpochEvent, PreviewEvent, StateEvent, StepEvent, as_progress
from .infer import predict_many
from .unet import UNet

# Fraction of a time budget kept for the final predictions over every sample: the
# least kept; more when a measured prediction shows the method's closing passes need it.
PREDICTION_RESERVE = 0.15
# Whole samples up to this side are predicted in one tile by predict_whole (far faster
# than overlapping 512-pixel tiles for the usual 500-1000 pixel microscopy images).
MAX_SINGLE_TILE = 1024
# The most of a time budget kept for them: training gets at least the rest, even where
# the closing passes (Distill's Monte-Carlo maps) would take longer.
MAX_PREDICTION_RESERVE = 0.5
LR_SCHEDULES = ("constant", "cosine")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Batch:
    """Tensors of one training step, on the run's device.

    image (B, C, P, P) float32; labels (B, P, P) int64; weights (B, P, P) float32
    (0 on padding and ignored pixels); trust (B, P, P) bool; samples (B,) int64;
    extras: method arrays cropped the same way.
    """

    image: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    trust: torch.Tensor
    samples: torch.Tensor
    specs: list
    extras: dict = field(default_factory=dict)


class TrainingRun:
    """One training session over a dataset.

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
    events : Progress, callable or None
    """

    def __init__(self, dataset, config, events=None):
        self.dataset = dataset
        self.config = config
        self.progress = as_progress(events)
        if not config.minutes and config.epochs is None:
            raise ValueError("no training budget: set epochs (an int) or minutes (> 0)")
        if config.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
        self.device, self.device_note = resolve_device(config.device)
        self.path = numeric_path(self.device, config.precision)
        seed_everything(config.seed)
        self.multiple = 2**config.depth
        shapes = [sample.shape for sample in dataset.samples]
        self.patch_size = effective_patch_size(shapes, config.patch_size, self.multiple)
        # predict_whole's tile: one per sample up to MAX_SINGLE_TILE pixels.
        self._whole_tile = max(512, self.patch_size, min(max(max(shape) for shape in shapes), MAX_SINGLE_TILE))
        self.sampler = PatchSampler(shapes, self.patch_size, config.batch_size, config.seed, config.augment)
        self.started = time.perf_counter()
        self.deadline = self.started + 60.0 * config.minutes if config.minutes else None
        self.total_epochs = int(config.epochs) if not config.minutes else None
        self._epoch_ends: list[float] = []  # elapsed s at each epoch's end, for the time plan
        # Forward passes over every sample that the method's closing predictions take (one
        # network: 1; Co-Seg's pair: 2; Distill: its Monte-Carlo samples). Methods set it.
        self.closing_passes = 1.0
        self._seconds_per_pass: float | None = None  # measured by predict(), over most samples
        self._sample_pixels = [int(np.prod(shape)) for shape in shapes]  # what a pass covers, per sample
        self._closing_seconds = 0.0  # measured by a method that repeats its closing work (note_closing)
        self._closing_started: float | None = None  # elapsed s at begin_closing
        self._closing_passes_done = 0.0  # whole-dataset passes predicted since then
        self.global_step = 0
        self.stopped = False
        self.history: dict = defaultdict(list)
        self._confusion = None
        self._epoch_losses: dict = defaultdict(list)
        self._lr_phases: dict = {}
        self._lr_steps: dict = {}
        self._last_lr = None
        # Optimisation steps in one epoch over every sample.
        patches = sum(patches_per_sample(shape, self.patch_size) for shape in shapes)
        self.steps_per_epoch = max(1, math.ceil(patches / config.batch_size))
        # The numeric path too: on a CPU without bf16 instructions training runs in fp32, 2-3x slower.
        where = f"{self.device_note.rstrip('.')} in {self.path.precision}." if self.device_note else None
        self.progress.emit(StateEvent("starting", where or f"Training on {self.path.name}."))

    # ----- budget and stopping -------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def planned_epochs(self, default: int = 10) -> int:
        """Total epochs of the run; under a time budget an estimate, refined at every epoch's end
        (``default`` until the first ends)."""
        return self.total_epochs if self.total_epochs is not None else default

    def out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        return time.perf_counter() > self.deadline - self.closing_reserve()

    def closing_reserve(self) -> float:
        """Seconds of a time budget kept for the closing predictions (0 under an epoch budget).

        At least ``PREDICTION_RESERVE`` of the budget; once a prediction over most of
        the samples has been timed, ``closing_passes`` such passes (or the closing work
        a method timed itself, :meth:`note_closing`, if longer) plus a tenth, up to
        ``MAX_PREDICTION_RESERVE`` of the budget. A fixed 15 % let Distill's eight
        closing Monte-Carlo passes run a 1-minute budget to 79 s.
        """
        if not self.config.minutes:
            return 0.0
        budget = 60.0 * self.config.minutes
        passes = self.closing_passes * self._seconds_per_pass if self._seconds_per_pass is not None else 0.0
        needed = 1.1 * max(passes, self._closing_seconds)
        return min(max(PREDICTION_RESERVE * budget, needed), MAX_PREDICTION_RESERVE * budget)

    def note_closing(self, seconds: float) -> None:
        """A method's own timing of work equal to its closing work (a refresh that the end repeats)."""
        self._closing_seconds = float(seconds)

    def note_prediction(self, seconds: float, samples, passes: float = 1.0) -> None:
        """Time one prediction: ``passes`` forward passes over ``samples`` took ``seconds``.

        Only predictions over at least half of the pixels count: a preview of one
        sample is dominated by fixed costs and would overstate a whole pass.
        """
        pixels = self._sample_pixels
        covered, total = sum(pixels[i] for i in samples), sum(pixels)
        if self._closing_started is not None:
            self._closing_passes_done += passes * covered / total
            done, planned = self._closing_passes_done, self.closing_passes
            if 0.5 <= done < planned - 0.5:  # several passes (Distill's eight): show they advance
                self.progress.emit(StateEvent(
                    "predicting", f"Predicting every sample for the noise map: {done:.0f} of {planned:.0f} "
                                  f"passes done ({self.elapsed - self._closing_started:.0f} s)…"))
        if passes <= 0 or covered < 0.5 * total:
            return
        self._seconds_per_pass = seconds / passes * total / covered

    def should_stop(self) -> bool:
        """True once stop was requested or the time budget is spent."""
        if self.progress.stop_requested or self.out_of_time():
            if not self.stopped and self.progress.stop_requested:
                self.progress.emit(StateEvent("stopping", "Stop requested: finishing with what was learnt."))
            self.stopped = self.stopped or self.progress.stop_requested
            return True
        return False

    def epochs(self, start: int = 0, count: int | None = None):
        """Yield epoch numbers until the budget (or ``count`` epochs) is used or a stop is requested."""
        epoch = start
        while True:
            limit = self.planned_epochs() if count is None else start + count
            if epoch >= limit or self.should_stop():
                return
            yield epoch
            epoch += 1

    # ----- models --------------------------------------------------------------
    def new_model(self, seed_offset: int = 0, **overrides) -> tuple[UNet, torch.optim.Optimizer]:
        """A fresh U-Net (seeded with ``seed + seed_offset``) and its AdamW optimiser."""
        cfg = self.config
        spec = dict(
            in_channels=self.dataset.in_channels, n_classes=self.dataset.n_classes,
            width=cfg.width, depth=cfg.depth, ndim=2, dropout=cfg.dropout,
        )
        spec.update(overrides)
        torch.manual_seed(cfg.seed * 1000 + seed_offset)
        model = UNet(**spec).to(self.device, memory_format=self.path.memory_format(4))
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        return model, optimizer

    def lr_phase(self, optimizer, start_epoch: int = 0, n_epochs=None) -> None:
        """The epochs over which ``optimizer`` follows the learning-rate schedule.

        Optimisers never given a phase follow it over the whole run. ``n_epochs`` may
        be a callable (re-read at every step: a time budget's plan changes after the
        first epoch).
        """
        self._lr_phases[id(optimizer)] = (int(start_epoch), n_epochs)

    def lr_factor(self, optimizer, epoch: int) -> float:
        """Multiplier of ``learning_rate`` for ``optimizer``'s next step in ``epoch``."""
        if self.config.lr_schedule == "constant":
            return 1.0
        start, n_epochs = self._lr_phases.get(id(optimizer), (0, None))
        n_epochs = n_epochs() if callable(n_epochs) else n_epochs
        n_epochs = self.planned_epochs() - start if n_epochs is None else n_epochs
        within = min(self._steps_in_epoch(optimizer, epoch), self.steps_per_epoch) / self.steps_per_epoch
        progress = min(max((epoch - start + within) / max(n_epochs, 1), 0.0), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _steps_in_epoch(self, optimizer, epoch: int) -> int:
        """Steps ``optimizer`` has taken so far in ``epoch``."""
        seen_epoch, steps = self._lr_steps.get(id(optimizer), (epoch, 0))
        return steps if seen_epoch == epoch else 0

    def _schedule(self, optimizer, epoch: int) -> None:
        factor = self.lr_factor(optimizer, epoch)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor
        self._lr_steps[id(optimizer)] = (epoch, self._steps_in_epoch(optimizer, epoch) + 1)
        self._last_lr = optimizer.param_groups[0]["lr"]

    def make_scaler(self):
        return torch.amp.GradScaler(self.device.type) if self.path.grad_scaler else None

    def step(self, optimizer, loss: torch.Tensor, scaler=None, epoch: int = 0, losses: dict | None = None) -> None:
        """Backward, optimiser step, bookkeeping, a :class:`StepEvent`."""
        optimizer.zero_grad(set_to_none=True)
        if self.config.lr_schedule != "constant":
            self._schedule(optimizer, epoch)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        self.global_step += 1
        losses = losses if losses is not None else {"loss": float(loss.detach())}
        for key, value in losses.items():
            self._epoch_losses[key].append(float(value))
        self.progress.emit(StepEvent(epoch, self.global_step, losses))

    # ----- data ----------------------------------------------------------------
    def batches(self, samples=None, extras: dict | None = None):
        """Yield the :class:`Batch` es of one epoch; stops early when :meth:`should_stop`.

        Parameters
        ----------
        samples : list of int, optional
            Restrict the epoch to these samples.
        extras : dict of name -> (list of per-sample ndarray (..., H, W), pad value)
            Method state cropped exactly like the image (current labels, soft targets).
        """
        extras = extras or {}
        for specs in self.sampler.epoch(samples):
            if self.should_stop():
                return
            yield self.make_batch(specs, extras)

    def make_batch(self, specs, extras: dict | None = None) -> Batch:
        samples = self.dataset.samples
        fmt = self.path.memory_format(4)
        image = np.stack([crop(samples[s.sample].image, s, 0.0) for s in specs])
        labels = np.stack([crop(samples[s.sample].labels, s, 0) for s in specs])
        weights = np.stack(
            [valid_mask(samples[s.sample].shape, s) * (1 - crop(samples[s.sample].ignore, s, True)) for s in specs]
        )
        trust = np.stack([crop(samples[s.sample].trust, s, False) for s in specs])
        to = lambda array: torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        cropped = {
            name: to(np.stack([crop(arrays[s.sample], s, pad) for s in specs]))
            for name, (arrays, pad) in (extras or {}).items()
        }
        return Batch(
            image=to(image).contiguous(memory_format=fmt),
            labels=to(labels.astype(np.int64)),
            weights=to(weights.astype(np.float32)),
            trust=to(trust),
            samples=torch.tensor([s.sample for s in specs], device=self.device),
            specs=list(specs),
            extras=cropped,
        )

    # ----- metrics and events --------------------------------------------------
    @torch.no_grad()
    def track(self, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
        """Accumulate a confusion matrix of argmax predictions vs ``labels`` on weighted pixels."""
        n_classes = logits.shape[1]
        keep = weights > 0
        pred = logits.argmax(dim=1)[keep]
        target = labels[keep].clamp(0, n_classes - 1)
        counts = torch.bincount(target * n_classes + pred, minlength=n_classes**2)
        counts = counts.reshape(n_classes, n_classes).cpu().numpy()
        self._confusion = counts if self._confusion is None else self._confusion + counts

    def end_epoch(self, epoch: int, **extra) -> dict:
        """Close an epoch: record mean losses, per-class IoU vs the current labels and ``extra``.

        Under a time budget the epoch plan is re-estimated (:meth:`_replan`).
        Returns the epoch's record.
        """
        record = {key: float(np.mean(values)) for key, values in self._epoch_losses.items()}
        self._epoch_losses = defaultdict(list)
        metrics = {}
        if self._confusion is not None:
            confusion = self._confusion
            tp = np.diag(confusion).astype(float)
            union = confusion.sum(0) + confusion.sum(1) - tp
            iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
            metrics["iou"] = [None if np.isnan(v) else float(v) for v in iou]
            self._confusion = None
        self.history["epoch"].append(epoch)
        self.history["elapsed_s"].append(round(self.elapsed, 3))
        if self.config.lr_schedule != "constant":
            self.history["learning_rate"].append(self._last_lr)
        for key, value in {**record, **metrics, **extra}.items():
            self.history[key].append(value)
        if self.config.minutes:
            self._replan(epoch)
        self.progress.emit(EpochEvent(epoch, self.planned_epochs(), record, {**metrics, **extra}, self.elapsed,
                                      total_is_estimate=bool(self.config.minutes)))
        return record

    def _replan(self, epoch: int) -> None:
        """Under a time budget, the epochs that fit: re-estimated at every epoch's end.

        The rate is the median duration of the last three epochs, not the first
        epoch's alone: the first also pays one-off costs (kernel warm-up, Co-Seg's
        noise-rate estimate), and a method's phases differ in cost (Co-Seg's stage 1
        trains two networks, its retraining one), so a plan fixed after the first
        epoch left about half of the budget unused (Co-Seg, 3 minutes on the sample
        images: its last epoch ended at 48 % of the training time). Only epochs that fit at that
        rate are planned: an epoch the deadline would cut short can still end with
        work no step check interrupts (ADELE's correction pass, Distill's
        Monte-Carlo maps), which ran a 1-minute ADELE to 70 s when tried.
        """
        now = self.elapsed
        self._epoch_ends.append(now)
        durations = np.diff([0.0] + self._epoch_ends)[-3:]
        per_epoch = max(float(np.median(durations)), 1e-3)
        remaining = 60.0 * self.config.minutes - self.closing_reserve() - now
        self.total_epochs = epoch + 1 + max(0, int(remaining // per_epoch))

    def begin_closing(self) -> None:
        """Say that training is over before the closing predictions, which can take a while
        (Distill's Monte-Carlo passes, every slice of a volume) with nothing else to show."""
        self.progress.emit(StateEvent(
            "finishing", f"Training done ({self.global_step} steps, {self.elapsed:.0f} s); predicting every "
                         "sample for the noise map and the proposed corrections…"))
        self._closing_started = self.elapsed

    def maybe_preview(self, make_preview) -> None:
        """Every ``preview_every`` steps, emit ``make_preview(indices) -> (noise, corrected)``."""
        every = self.config.preview_every
        if not every or self.global_step % every:
            return
        indices = [i for i in self.config.preview_samples if 0 <= i < len(self.dataset)]
        if not indices:
            return
        noise, corrected = make_preview(indices)
        self.progress.emit(PreviewEvent(self.global_step, indices, noise, corrected))

    # ----- inference -----------------------------------------------------------
    def predict(self, models, samples=None, tile: int | None = None, **kwargs) -> list:
        """Probabilities (K, H, W) float32 of ``samples`` (default: all) averaged over ``models``.

        ``kwargs`` go to :func:`~napari_noisyseg.engine.infer.predict_many`; the call is
        timed for :meth:`closing_reserve`.
        """
        indices = list(range(len(self.dataset)) if samples is None else samples)
        images = [self.dataset.samples[i].image for i in indices]
        tile = tile or max(512, self.patch_size)
        kwargs.setdefault("min_size", self.patch_size)
        started = time.perf_counter()
        probabilities = predict_many(models, images, self.path, tile=tile, multiple=self.multiple, **kwargs)
        n_models = 1 if isinstance(models, torch.nn.Module) else len(models)
        passes = n_models * (2 if kwargs.get("flip_tta") else 1) * max(1, kwargs.get("mc_dropout") or 0)
        self.note_prediction(time.perf_counter() - started, indices, passes)
        return probabilities

    def predict_whole(self, models, samples=None, **kwargs) -> list:
        """:meth:`predict` with one tile per sample up to ``MAX_SINGLE_TILE`` pixels, 4 at a time.

        For methods that predict every sample often (Distill's Monte-Carlo maps,
        Self-Cleansing's mixtures): 1.2 s a pass on 12 BBBC039 images against 3.6 s
        with overlapping 512-pixel tiles.
        """
        kwargs.setdefault("batch_size", 4)
        return self.predict(models, samples, tile=self._whole_tile, **kwargs)

    def finish_history(self) -> dict:
        history = dict(self.history)
        history["device"] = self.path.name
        history["patch_size"] = self.patch_size
        history["steps"] = self.global_step
        history["stopped"] = self.stopped
        history["wall_s"] = round(self.elapsed, 3)
        if self.config.minutes:
            history["closing_reserve_s"] = round(self.closing_reserve(), 3)
        if self._closing_started is not None:
            # What the closing took against what the reserve planned for.
            history["closing_s"] = round(self.elapsed - self._closing_started, 3)
            history["closing_passes"] = {"planned": float(self.closing_passes),
                                         "done": round(self._closing_passes_done, 3)}
        return history
