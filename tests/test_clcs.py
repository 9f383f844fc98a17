"""CLCS (METHODS.md §6): curriculum thresholds, discrepancy loss, trust, stop, CLI.

Training tests use 128×128 crops of the repository's BBBC039 sample data
(``sample_data/bbbc039``: images with their clean and noisy labels) and a tiny
U-Net, so the whole file runs in well under a minute on two CPU cores. Torch
runs single-threaded here: on a shared 2-core machine its default two threads
make these tiny steps many times slower.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_noisyseg._sample_data import load_bbbc
from napari_noisyseg.core import io, metrics
from napari_noisyseg.core.checkpoint import load_checkpoint
from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.engine.events import EventLog, PreviewEvent, Progress, StepEvent
from napari_noisyseg.methods import REGISTRY, TrainConfig, fit, get_method
from napari_noisyseg.methods.clcs import (
    CurriculumThreshold,
    curriculum_thresholds,
    feature_discrepancy,
    judge_sample,
    select_clean,
)

from helpers import write_pairs

# (sample index, top, left): three crops with nuclei, one of the image without nuclei
# (its noisy labels hold a spurious blob).
CROPS = [(0, 0, 0), (1, 0, 64), (2, 320, 128), (3, 256, 192)]
SIZE = 128
TRUST_BOX = (slice(0, 40), slice(0, 40))  # trusted corner of crop 0, with deliberately wrong labels


# A width-8 U-Net trained for 100 steps is rarely 95 % sure of anything, so the
# training tests count a pixel as learnt at 0.8 (the mechanism is the same).
TINY_PARAMS = {"tau": 0.8}


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(method="clcs", epochs=25, patch_size=64, batch_size=4, width=8, depth=3, seed=0,
                    device="cpu", params=dict(TINY_PARAMS))
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def crops():
    data = load_bbbc()
    window = lambda a, y, x: np.ascontiguousarray(a[y : y + SIZE, x : x + SIZE])
    images = [window(data["image"][i], y, x) for i, y, x in CROPS]
    clean = [window(data["clean"][i], y, x).astype(np.int64) for i, y, x in CROPS]
    noisy = [window(data["noisy"][i], y, x).astype(np.int64) for i, y, x in CROPS]
    # A trusted corner whose labels a person confirmed as they are (inverted here on
    # purpose, so that any correction there would be visible).
    noisy[0][TRUST_BOX] = 1 - clean[0][TRUST_BOX]
    trust = [np.zeros((SIZE, SIZE), bool) for _ in CROPS]
    trust[0][TRUST_BOX] = True
    assert sum(int((n != c).sum()) for n, c in zip(noisy, clean)) > 1000
    return {"images": images, "clean": clean, "noisy": noisy, "trust": trust}


@pytest.fixture(scope="module")
def dataset(crops):
    names = [f"crop{i}" for i in range(len(CROPS))]
    return build_dataset(crops["images"], crops["noisy"], names, modes="2d", trust=crops["trust"])


@pytest.fixture(scope="module")
def trained(dataset):
    return fit(dataset, tiny_config())


@pytest.fixture(scope="module")
def trained_without_discrepancy(dataset):
    return fit(dataset, tiny_config(params={**TINY_PARAMS, "discrepancy_weight": 0.0}))


# ----------------------------------------------------------------------------- curriculum thresholds


def test_convex_mapping_matches_flexmatch():
    sigma = np.array([0.8, 0.4, 0.0])
    tau = curriculum_thresholds(sigma, tau=0.95)
    beta = sigma / 0.8
    np.testing.assert_allclose(tau, 0.95 * beta / (2 - beta))
    assert tau[0] == pytest.approx(0.95)  # the best learnt class gets the full threshold
    assert tau[2] == 0.0
    # The warm-up floor: while most pixels are unlearnt, thresholds stay low.
    warm = curriculum_thresholds(sigma * 0.1, tau=0.95, unlearnt=0.9)
    assert np.all(warm < 0.06)
    np.testing.assert_array_equal(curriculum_thresholds([0.0, 0.0], unlearnt=1.0), [0.0, 0.0])


def test_thresholds_rise_with_learning_and_stay_lower_for_a_slow_class():
    """Class 0 (background) is learnt fast, class 1 steadily, class 2 (minority) slowly."""
    curriculum = CurriculumThreshold(3, tau=0.95, momentum=0.8)
    assert np.all(curriculum.thresholds() == 0.0)  # permissive before any learning
    totals = np.array([8000.0, 1500.0, 500.0])
    history = []
    for step in range(100):
        progress = min(1.0, step / 40)
        learnt = np.array([0.95 * min(1.0, 2 * progress), 0.8 * progress, 0.35 * progress])
        history.append(curriculum.update(learnt * totals, totals))
    history = np.array(history)
    assert np.all(np.diff(history, axis=0) >= -1e-12), "thresholds never fall while learning progresses"
    assert np.all(history[:3] < 0.05), "selection starts permissive"
    assert history[-1, 0] == pytest.approx(0.95, abs=1e-3)
    assert history[-1, 0] > history[-1, 1] > history[-1, 2] > 0.0
    # The slow class keeps a clearly lower threshold at every point after the warm-up.
    assert np.all(history[10:, 2] < 0.5 * history[10:, 0])
    np.testing.assert_allclose(curriculum.learning_effect, [0.95, 0.8, 0.35], atol=1e-3)


def test_absent_class_keeps_its_learning_effect():
    curriculum = CurriculumThreshold(2, momentum=0.5)
    curriculum.update([90.0, 5.0], [100.0, 10.0])
    before = curriculum.learning_effect.copy()
    curriculum.update([90.0, 0.0], [100.0, 0.0])  # a batch without class 1
    assert curriculum.learning_effect[1] == pytest.approx(before[1])


# ----------------------------------------------------------------------------- selection, losses, outputs


def test_select_clean_uses_per_class_thresholds_and_trust():
    probabilities = torch.tensor([[0.9, 0.3], [0.1, 0.7]]).reshape(1, 2, 1, 2)  # p̄ of 2 pixels
    labels = torch.tensor([[[0, 1]]])
    thresholds = torch.tensor([0.95, 0.5])
    clean, given = select_clean(probabilities, labels, thresholds)
    assert clean.tolist() == [[[False, True]]]  # 0.9 < 0.95 (bg); 0.7 ≥ 0.5 (fg)
    np.testing.assert_allclose(given.numpy().ravel(), [0.9, 0.7], rtol=1e-6)
    trust = torch.tensor([[[True, False]]])
    clean, _ = select_clean(probabilities, labels, thresholds, trust)
    assert clean.all()


def test_unlearnt_class_pixels_stay_clean():
    """A class the branches do not reproduce yet (recall < 0.5) is never filtered, in either direction."""
    curriculum = CurriculumThreshold(3, momentum=0.0)
    assert curriculum.learnt(0.5).tolist() == [True, False, False]  # before any step: background only
    # Pixels labelled 0 / 1 / 2: 95 % / 80 % / 30 % of them voted to their own class.
    curriculum.update([90.0, 70.0, 10.0], [100.0, 100.0, 100.0], [95.0, 80.0, 30.0])
    np.testing.assert_allclose(curriculum.recall, [0.95, 0.8, 0.3])
    learnt = curriculum.learnt(0.5)
    assert learnt.tolist() == [True, True, False]
    # 4 pixels: labelled 2 with low p̄(2); labelled 0 but voted 2; labelled 1 voted 0; labelled 0 voted 1.
    probabilities = torch.tensor([[0.8, 0.1, 0.1], [0.3, 0.1, 0.6], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    probabilities = probabilities.T.reshape(1, 3, 1, 4)
    labels = torch.tensor([[[2, 0, 1, 0]]])
    thresholds = torch.tensor([0.8, 0.5, 0.5])
    clean, _ = select_clean(probabilities, labels, thresholds)
    assert clean.tolist() == [[[False, False, False, False]]]
    clean, _ = select_clean(probabilities, labels, thresholds, learnt=torch.as_tensor(learnt))
    assert clean.tolist() == [[[True, True, False, False]]]  # only the two pixels touching class 2
    # judge_sample: protected pixels are neither noisy nor corrected and rank below 0.5.
    p = probabilities[0].numpy()
    protected = ~learnt[labels[0].numpy()] | ~learnt[p.argmax(0)]
    noise, corrected, noisy = judge_sample(p, labels[0].numpy(), thresholds.numpy(), protected=protected)
    assert noisy.tolist() == [[False, False, True, True]]
    assert corrected.tolist() == [[2, 0, 0, 1]]
    np.testing.assert_allclose(noise[0, :2], [0.45, 0.35], rtol=1e-5)  # 0.5·(1 − p̄(given))
    assert np.all(noise[0, 2:] > 0.5)


def test_feature_discrepancy_is_cosine_similarity_and_can_be_minimised():
    torch.manual_seed(0)
    a = torch.rand(2, 8, 6, 6)
    assert float(feature_discrepancy(a, a)) == pytest.approx(1.0, abs=1e-5)
    disjoint_a = torch.cat([a[:, :4], torch.zeros_like(a[:, 4:])], dim=1)
    disjoint_b = torch.cat([torch.zeros_like(a[:, :4]), a[:, 4:]], dim=1)
    assert float(feature_discrepancy(disjoint_a, disjoint_b)) == pytest.approx(0.0, abs=1e-6)
    weights = torch.zeros(2, 6, 6)
    weights[0] = 1.0
    mixed = torch.stack([a[0], disjoint_b[1]])
    assert float(feature_discrepancy(a, mixed, weights)) == pytest.approx(1.0, abs=1e-5)


def test_judge_sample_noise_and_correction():
    probabilities = np.zeros((3, 1, 4), np.float32)
    probabilities[:, 0, 0] = [0.9, 0.05, 0.05]  # labelled 0, clean for τ0 = 0.8
    probabilities[:, 0, 1] = [0.6, 0.2, 0.2]  # labelled 0, below τ0: noisy, but argmax is 0
    probabilities[:, 0, 2] = [0.1, 0.1, 0.8]  # labelled 1, noisy → 2
    probabilities[:, 0, 3] = [0.1, 0.1, 0.8]  # labelled 1, noisy but frozen (trusted)
    labels = np.array([[0, 0, 1, 1]])
    thresholds = np.array([0.8, 0.4, 0.3])
    frozen = np.array([[False, False, False, True]])
    noise, corrected, noisy = judge_sample(probabilities, labels, thresholds, frozen)
    # Judged noisy: 0.5 + 0.5·(1 − p/τ); judged clean: 0.5·(1 − p)/(1 − τ).
    np.testing.assert_allclose(noise[0], [0.25, 0.625, 0.875, 0.875], rtol=1e-5)
    assert ((noise >= 0.5) == (noisy | frozen)).all()
    assert noisy.tolist() == [[False, True, True, False]]
    assert corrected.tolist() == [[0, 0, 2, 1]]
    # Before any learning (all τ = 0) nothing is noisy, but the map still ranks by p̄(given).
    noise, corrected, noisy = judge_sample(probabilities, labels, np.zeros(3))
    assert not noisy.any() and np.array_equal(corrected, labels)
    np.testing.assert_allclose(noise[0], [0.05, 0.2, 0.45, 0.45], rtol=1e-5)


# ----------------------------------------------------------------------------- training


def test_registered_and_params_checked(dataset):
    assert REGISTRY["clcs"] == "napari_noisyseg.methods.clcs"
    assert get_method("clcs").NAME == "clcs"
    with pytest.raises(ValueError, match="Unknown parameters"):
        fit(dataset, tiny_config(epochs=1, params={"not_a_param": 1}))


def test_training_curriculum_and_history(trained, trained_without_discrepancy):
    history = trained.history
    n_epochs = len(history["epoch"])
    assert n_epochs == 25 and not trained.stopped
    thresholds = np.array(history["thresholds"])
    assert thresholds.shape == (n_epochs, 2)
    # Selection starts permissive and the thresholds rise as the branches learn.
    assert np.all(thresholds[0] < 0.2)
    assert np.all(thresholds[-1] > thresholds[0])
    assert thresholds[-1].max() > 0.3
    assert history["final_thresholds"] == pytest.approx(list(thresholds[-1]))
    clean_fraction = np.array(history["clean_fraction"], dtype=float)
    assert np.all((clean_fraction >= 0) & (clean_fraction <= 1))
    assert clean_fraction[0].min() > 0.95 and clean_fraction[-1].min() < clean_fraction[0].min()
    # The discrepancy loss is a cosine similarity of ReLU features (in [0, 1]); minimising it
    # keeps the branches' features further apart than training without it (same seed).
    discrepancy = np.array(history["discrepancy"])
    unconstrained = np.array(trained_without_discrepancy.history["discrepancy"])
    assert np.all((discrepancy >= 0) & (discrepancy <= 1))
    assert discrepancy[-5:].mean() < unconstrained[-5:].mean() - 0.02
    json.dumps({k: v for k, v in history.items()})  # JSON-serialisable


def test_outputs_find_noise_and_keep_trust(trained, dataset, crops):
    n = len(dataset)
    assert len(trained.noise) == len(trained.corrected) == len(trained.probabilities) == n
    assert trained.sample_reliability.shape == (n,)
    assert np.all((trained.sample_reliability >= 0) & (trained.sample_reliability <= 1))
    for noise, corrected, sample in zip(trained.noise, trained.corrected, dataset.samples):
        assert noise.dtype == np.float32 and noise.shape == sample.shape
        assert noise.min() >= 0 and noise.max() <= 1
        changed = corrected != sample.labels
        assert np.all(noise[changed] >= 0.5), "only pixels judged noisy (noise >= 0.5) are corrected"
    # Trusted pixels: never corrected, never noisy, although their labels are wrong here.
    trust = crops["trust"][0]
    assert np.array_equal(trained.corrected[0][trust], crops["noisy"][0][trust])
    assert not trained.noise[0][trust].any()
    # Outcome: the noise map ranks the truly wrong pixels (outside the trusted box) first.
    untrusted = [~t for t in crops["trust"]]
    scores = np.concatenate([n[u] for n, u in zip(trained.noise, untrusted)])
    truth = np.concatenate([(a != b)[u] for a, b, u in zip(crops["noisy"], crops["clean"], untrusted)])
    assert metrics.noise_detection_scores(scores, truth)["auroc"] > 0.75
    # ... and the corrections move the labels of the crops with nuclei towards the clean ones.
    corrected = np.mean([metrics.mean_foreground_dice(c, k, n_classes=2)
                         for c, k in zip(trained.corrected[:3], crops["clean"][:3])])
    given = np.mean([metrics.mean_foreground_dice(c, k, n_classes=2)
                     for c, k in zip(crops["noisy"][:3], crops["clean"][:3])])
    assert corrected > given + 0.05


def test_training_guard_and_output_guard_are_separate(dataset):
    # learnt_recall 1.0: the nuclei class never counts as learnt for training, so its
    # pixels are never selected away; the outputs are judged with their own bar.
    guarded = {**TINY_PARAMS, "learnt_recall": 1.0}
    judged = fit(dataset, tiny_config(params={**guarded, "judge_recall": 0.0}))
    protected = fit(dataset, tiny_config(params={**guarded, "judge_recall": 1.0}))
    for result in (judged, protected):
        assert result.history["final_learnt_classes"] == []
        assert all(fraction[1] == 1.0 for fraction in result.history["clean_fraction"])
    # Same training (same seed, same selection), different judgement of the outputs.
    for a, b in zip(judged.probabilities, protected.probabilities):
        np.testing.assert_array_equal(a, b)
    assert judged.history["final_judged_classes"] == [1] and protected.history["final_judged_classes"] == []
    nuclei = [(s.labels == 1) | (p.argmax(0) == 1) for s, p in zip(dataset.samples, protected.probabilities)]
    assert not any((n[m] >= 0.5).any() for n, m in zip(protected.noise, nuclei))
    assert all(np.array_equal(c[m], s.labels[m]) for c, m, s in zip(protected.corrected, nuclei, dataset.samples))
    assert sum(int((n[m] >= 0.5).sum()) for n, m in zip(judged.noise, nuclei)) > 0


def test_deterministic_and_previews_do_not_disturb_training(dataset):
    first = fit(dataset, tiny_config(epochs=2))
    log = EventLog()
    second = fit(dataset, tiny_config(epochs=2, preview_every=1, preview_samples=(0, 3)), log)
    for a, b in zip(first.probabilities, second.probabilities):
        np.testing.assert_array_equal(a, b)
    assert first.history["thresholds"] == second.history["thresholds"]
    previews = log.of(PreviewEvent)
    assert len(previews) == second.history["steps"] and previews[-1].sample_indices == [0, 3]
    assert previews[-1].noise[1].shape == (SIZE, SIZE) and previews[-1].corrected[1].dtype == np.int64


def test_stop_returns_a_usable_result(dataset):
    progress = Progress()
    steps = []

    def listen(event):
        if isinstance(event, StepEvent):
            steps.append(event.step)
            if len(steps) == 3:
                progress.request_stop()

    progress.callback = listen
    result = fit(dataset, tiny_config(epochs=50), progress)
    assert result.stopped and result.history["steps"] == 3
    assert len(result.noise) == len(dataset)
    for noise, corrected, sample in zip(result.noise, result.corrected, dataset.samples):
        assert noise.shape == corrected.shape == sample.shape
        assert np.isfinite(noise).all()
    assert np.isfinite(result.sample_reliability).all()


def test_cli_trains_clcs(tmp_path, crops):
    from napari_noisyseg.cli import main

    write_pairs(tmp_path, crops["images"][:2], crops["noisy"][:2])
    out = tmp_path / "run"
    code = main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--method", "clcs", "--epochs", "2", "--patch-size", "64", "--batch-size", "4",
                 "--width", "8", "--depth", "3", "--device", "cpu", "--param", "discrepancy_weight=0.2",
                 "--out", str(out), "--quiet"])
    assert code == 0
    record = json.loads((out / "history.json").read_text())
    assert record["method"] == "clcs"
    assert record["config"]["params"] == {"discrepancy_weight": 0.2}
    assert len(record["history"]["thresholds"]) == 2
    checkpoint = load_checkpoint(out / "model.safetensors")
    assert set(checkpoint.models) == {"branch_transpose", "branch_bilinear"}
    assert checkpoint.models["branch_bilinear"].up_mode == "bilinear"
    noise = io.read_image(out / "noise" / "crop0.tif")[0]
    assert noise.shape == (SIZE, SIZE) and 0 <= noise.min() and noise.max() <= 1
