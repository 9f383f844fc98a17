"""Baseline: one U-Net trained with CE + Dice on the given labels (METHODS.md §1).

It is the floor every method must beat; trained on clean labels it is the ceiling.
``noise`` = 1 − p(given label); ``corrected`` = argmax p.
"""

from __future__ import annotations

import numpy as np

from ..engine.losses import ce_dice_loss
from ..engine.train import TrainingRun
from .base import noise_from_probabilities, result_from_run

NAME = "baseline"
SUMMARY = "One U-Net trained with CE + Dice on the given labels (the floor to beat)."
DEFAULTS: dict = {}


def fit(dataset, config, events=None):
    """Train on the given labels and propose argmax corrections.

    Parameters
    ----------
    dataset : NoisyDataset
    config : TrainConfig
    events : Progress, callable or None

    Returns
    -------
    CurationResult
    """
    config.with_params(DEFAULTS)
    run = TrainingRun(dataset, config, events)
    model, optimizer = run.new_model()
    scaler = run.make_scaler()

    def preview(indices):
        probabilities = run.predict(model, indices)
        noise = [noise_from_probabilities(p, dataset.samples[i].labels) for p, i in zip(probabilities, indices)]
        return noise, [p.argmax(0) for p in probabilities]

    for epoch in run.epochs():
        model.train()
        for batch in run.batches():
            with run.path.autocast():
                logits = model(batch.image)
            loss = ce_dice_loss(logits, batch.labels, batch.weights)
            run.step(optimizer, loss, scaler, epoch)
            run.track(logits.detach(), batch.labels, batch.weights)
            run.maybe_preview(preview)
        run.end_epoch(epoch)
    run.begin_closing()
    probabilities = run.predict(model)
    noise = [noise_from_probabilities(p, s.labels) for p, s in zip(probabilities, dataset.samples)]
    corrected = [p.argmax(0).astype(np.int64) for p in probabilities]
    return result_from_run(run, probabilities, noise, corrected, {"model": model})
