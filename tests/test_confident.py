"""Out-of-fold confident learning (napari_noisyseg.methods.confident) on small real data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_noisyseg.core import metrics
from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.core.noise import simulate_noise
from napari_noisyseg.engine.device import numeric_path, resolve_device
from napari_noisyseg.engine.events import Progress, StepEvent
from napari_noisyseg.engine.infer import predict_many
from napari_noisyseg.methods import REGISTRY, TrainConfig, fit, get_method
from napari_noisyseg.methods.confident import (
    assign_folds,
    confident_flags,
    confident_noise,
    confident_thresholds,
    fold_schedule,
)

SMALL = dict(patch_size=64, batch_size=8, width=8, depth=3)
# Two 128 × 128 crops of each of the three sample images that hold nuclei.
CROPS = [(i, y, x) for i in (0, 1, 2) for (y, x) in ((60, 80), (300, 420))]


def _crops(bbbc, key):
    return [np.ascontiguousarray(bbbc[key][i][y : y + 128, x : x + 128]) for i, y, x in CROPS]


@pytest.fixture(scope="module")
def missing_run(_bbbc_cached):
    """Half of the nuclei dropped from the labels; one block of sample 0 trusted."""
    images, clean = _crops(_bbbc_cached, "image"), _crops(_bbbc_cached, "clean")
    simulated = simulate_noise(clean, "missing", fraction=1.0, seed=0, p=0.5)
    trust = [np.zeros(c.shape, bool) for c in clean]
    trust[0][:64, :64] = True
    dataset = build_dataset(images, simulated.noisy, trust=trust)
    config = TrainConfig(method="confident", epochs=40, seed=0, **SMALL)
    return dataset, simulated, clean, trust, fit(dataset, config)


# ----------------------------------------------------------------------------- the rule, exactly


def test_thresholds_flags_and_noise_follow_the_confident_joint():
    labels = np.array([[0, 0, 1, 1, 2]])
    # columns: clean bg, bg that is really class 1, clean 1, 1 that is really bg, class 2
    p = np.array([
        [[0.9, 0.1, 0.2, 0.8, 0.1]],
        [[0.1, 0.8, 0.7, 0.2, 0.3]],
        [[0.0, 0.1, 0.1, 0.0, 0.6]],
    ], np.float32)
    t = confident_thresholds([p], [labels], [np.ones(labels.shape, bool)])
    np.testing.assert_allclose(t, [0.5, 0.45, 0.6])
    flagged, corrected = confident_flags(p, labels, t)
    np.testing.assert_array_equal(flagged, [[False, True, False, True, False]])
    np.testing.assert_array_equal(corrected, [[0, 1, 1, 0, 2]])
    noise = confident_noise(p, labels, flagged)
    assert noise[0, 1] == pytest.approx(0.5 + 0.5 * 0.9) and noise[0, 3] == pytest.approx(0.5 + 0.5 * 0.8)
    assert noise[flagged].min() >= 0.5 > noise[~flagged].max()
    # Frozen (trusted/ignored) pixels are never flagged; a class nobody labels never clears.
    frozen = np.array([[False, True, False, False, False]])
    assert not confident_flags(p, labels, t, frozen)[0][0, 1]
    t_missing = confident_thresholds([p[:, :, :4]], [labels[:, :4]], [np.ones((1, 4), bool)])
    assert np.isnan(t_missing[2])
    assert not confident_flags(p[:, :, :4], labels[:, :4], t_missing)[0][0, 0]


def test_corrected_takes_the_largest_margin_among_classes_that_clear():
    labels = np.array([[0]])
    p = np.array([[[0.1]], [[0.5]], [[0.4]]], np.float32)
    t = np.array([0.9, 0.45, 0.2])  # class 1 is most probable, class 2 clears by more
    flagged, corrected = confident_flags(p, labels, t)
    assert flagged[0, 0] and corrected[0, 0] == 2
    # Class 1 clears a low threshold but the prediction still agrees with the label: not flagged.
    p_agree = np.array([[[0.55]], [[0.45]]], np.float32)
    assert not confident_flags(p_agree, labels, np.array([0.6, 0.4]))[0][0, 0]
    assert confident_flags(p_agree, np.array([[1]]), np.array([0.5, 0.4]))[0][0, 0]


def test_fold_schedule_splits_the_budget():
    assert fold_schedule(30, 3, 0.5) == (8, 15)  # 3 folds × 8 epochs × 2/3 data + 15 ≈ 30
    assert fold_schedule(30, 3, 1 / 3) == (10, 10)
    assert fold_schedule(30, 3, 0.0) == (15, 0)
    assert fold_schedule(1, 2, 0.5) == (1, 1)


# ----------------------------------------------------------------------------- folds


def test_folds_keep_a_volumes_slices_together(hippo_sample):
    image, clean = hippo_sample["image"], hippo_sample["clean"]
    volumes = [image, image[:20], image[5:30], image[:, :30]]
    labels = [clean, clean[:20], clean[5:30], clean[:, :30]]
    dataset = build_dataset(volumes, labels, modes="volume")
    maps, n_folds, kind = assign_folds(dataset, 3, seed=0)
    assert (n_folds, kind) == (3, "source")
    fold_of = {}
    for sample, fold_map in zip(dataset.samples, maps):
        assert (fold_map == fold_map.flat[0]).all()
        fold_of.setdefault(sample.source, set()).add(int(fold_map.flat[0]))
    assert all(len(folds) == 1 for folds in fold_of.values())
    assert set().union(*fold_of.values()) == {0, 1, 2}
    assert [m.flat[0] for m in assign_folds(dataset, 3, seed=0)[0]] == [m.flat[0] for m in maps]
    # One volume: contiguous blocks of slices; fewer sources than folds: K shrinks.
    single = build_dataset([image], [clean], modes="volume")
    blocks = [int(m.flat[0]) for m in assign_folds(single, 3, seed=0)[0]]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2}
    assert assign_folds(build_dataset(volumes[:2], labels[:2], modes="volume"), 5, 0)[1] == 2


# ----------------------------------------------------------------------------- on real data


def test_registered():
    assert REGISTRY["confident"] == "napari_noisyseg.methods.confident"
    assert get_method("confident").NAME == "confident"


def test_finds_missing_nuclei_better_than_the_boundary_prior(missing_run):
    dataset, simulated, clean, trust, result = missing_run
    keep = ~np.concatenate([t.ravel() for t in trust])
    truth = np.concatenate([m.ravel() for m in simulated.noise_masks])[keep]
    noise = np.concatenate([n.ravel() for n in result.noise])[keep]
    prior = np.concatenate([metrics.boundary_prior(n).ravel() for n in simulated.noisy])[keep]
    ours = metrics.noise_detection_scores(noise, truth)
    reference = metrics.noise_detection_scores(prior, truth)
    assert ours["auroc"] > 0.7 and ours["ap"] > 0.25 and ours["ap"] > 3 * reference["ap"]
    assert ours["recall"] > 0.3 and ours["precision"] > 0.3
    flat = lambda arrays: np.concatenate([a.ravel() for a in arrays]).reshape(1, -1)  # noqa: E731
    scores = metrics.correction_dice(flat(result.corrected), flat(simulated.noisy), flat(clean))
    assert scores["improvement"] > 0.01


def test_probabilities_are_out_of_fold(missing_run):
    dataset, _, _, _, result = missing_run
    history = result.history
    assert history["fold_kind"] == "source" and history["folds"] == 3 and history["oof_complete"]
    assert result.final_model == "final" and set(result.models) == {"fold0", "fold1", "fold2", "final"}
    path = numeric_path(resolve_device("auto")[0], "auto")
    for index, fold in enumerate(history["fold_of_sample"]):
        again = predict_many(result.models[f"fold{fold}"], [dataset.samples[index].image], path, multiple=8)[0]
        # Same fold model, same image; float32 sums may round differently in another batch (1e-7 on an EPYC).
        np.testing.assert_allclose(again, result.probabilities[index], rtol=0, atol=1e-6)
    assert len(history["thresholds"]) == 2 and 0 < history["flagged_fraction"] < 0.2
    assert history["phase"] == sorted(history["phase"]) and history["phase"][-1] == 3


def test_trusted_pixels_are_never_flagged(missing_run):
    dataset, simulated, _, trust, result = missing_run
    assert simulated.noise_masks[0][trust[0]].any()  # the trusted block holds a dropped nucleus
    assert (result.noise[0][trust[0]] == 0).all()
    np.testing.assert_array_equal(result.corrected[0][trust[0]], dataset.samples[0].labels[trust[0]])


def test_stop_returns_a_usable_partial_result(_bbbc_cached):
    images, noisy = _crops(_bbbc_cached, "image")[:3], _crops(_bbbc_cached, "noisy")[:3]
    dataset = build_dataset(images, noisy)
    progress = Progress()

    def on_event(event):
        if isinstance(event, StepEvent) and event.step >= 2:
            progress.request_stop()

    progress.callback = on_event
    result = fit(dataset, TrainConfig(method="confident", epochs=20, **SMALL), progress)
    assert result.stopped and result.history["steps"] == 2
    assert result.final_model == "fold0" and not result.history["oof_complete"]
    assert all(n.shape == s.shape and 0 <= n.min() and n.max() <= 1 for n, s in zip(result.noise, dataset.samples))


def test_single_image_uses_bands_and_corrected_retraining(_bbbc_cached):
    image = _bbbc_cached["image"][0][:128, :192]
    labels = _bbbc_cached["noisy"][0][:128, :192]
    dataset = build_dataset([image], [labels])
    config = TrainConfig(method="confident", epochs=2, params={"retrain": "corrected", "folds": 3}, **SMALL)
    result = fit(dataset, config)
    assert result.history["fold_kind"] == "band" and result.history["folds"] == 3
    np.testing.assert_allclose(result.probabilities[0].sum(axis=0), 1.0, atol=1e-3)  # every band filled
    assert result.final_model == "final"
    with pytest.raises(ValueError, match="folds"):
        fit(dataset, TrainConfig(method="confident", params={"folds": 6}, **SMALL))
    with pytest.raises(ValueError, match="retrain"):
        fit(dataset, TrainConfig(method="confident", params={"retrain": "prune"}, **SMALL))
