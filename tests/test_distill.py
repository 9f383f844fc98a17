"""Distilling effective supervision (METHODS.md §4) and the EMA teacher.

The maths is tested on constructed arrays; the training runs use small crops of
the repository's BBBC039 sample data (128×128 crops, 64-pixel patches, a width-8,
depth-3 U-Net, a few epochs) so the file runs well under a minute on two cores.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.core.metrics import noise_detection_scores
from napari_noisyseg.core.noise import simulate_noise
from napari_noisyseg.engine.ema import EMATeacher
from napari_noisyseg.engine.losses import soft_ce_map, ce_map
from napari_noisyseg.methods import REGISTRY, TrainConfig, get_method
from napari_noisyseg.methods import distill

from helpers import foreground_crops, stop_at

CROP = 128
TINY = dict(patch_size=64, batch_size=4, width=8, depth=3, seed=0)
# A short run needs a teacher that follows the student more closely than 0.99.
FAST = dict(ema_decay=0.9, warmup_fraction=0.5, refresh_every=1, mc_samples=4)


@pytest.fixture(scope="module")
def crops(_bbbc_cached) -> dict:
    """Six crops: the first has every nucleus removed from its labels, the others are clean."""
    images, clean = foreground_crops(_bbbc_cached, 6, CROP, low=0.1, high=0.5)
    assert len(images) == 6
    run = simulate_noise(clean[:1], "missing", fraction=1.0, seed=0, p=1.0)
    noisy = [np.asarray(run.noisy[0], np.int64)] + [c.copy() for c in clean[1:]]
    assert noisy[0].max() == 0
    return {"images": images, "clean": clean, "noisy": noisy}


def _dataset(crops, trust=None):
    return build_dataset(crops["images"], crops["noisy"], [f"crop{i}" for i in range(6)], trust=trust)


def _config(epochs, **params):
    return TrainConfig(method="distill", epochs=epochs, params={**FAST, **params}, **TINY)


@pytest.fixture(scope="module")
def trained(crops):
    """One run with the top-left 40×40 of a clean crop trusted (a person confirmed it)."""
    trust = [np.zeros((CROP, CROP), bool) for _ in range(6)]
    trust[1][:40, :40] = True
    dataset = _dataset(crops, trust)
    return dataset, distill.fit(dataset, _config(8))


# ----------------------------------------------------------------------------- EMA
def test_ema_follows_the_student_with_ramp():
    """d = min(decay, (1 + t) / (10 + t)); batch-norm statistics averaged, counters copied."""
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMATeacher(student, decay=0.99)
    assert not any(p.requires_grad for p in ema.model.parameters())
    assert ema.current_decay() == pytest.approx(0.1)
    target = [p.detach().clone() + 1.0 for p in student.parameters()]
    with torch.no_grad():
        for p, t in zip(student.parameters(), target):
            p.copy_(t)
        student[1].running_mean.fill_(2.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(student)
    for b, a, t in zip(before, ema.model.parameters(), target):
        assert torch.allclose(a, 0.1 * b + 0.9 * t)
    assert torch.allclose(ema.model[1].running_mean, torch.full((2,), 1.8))
    assert int(ema.model[1].num_batches_tracked) == int(student[1].num_batches_tracked)
    assert ema.current_decay() == pytest.approx(2 / 11)
    for _ in range(1000):
        ema.update(student)
    assert ema.current_decay() == pytest.approx(0.99)
    for a, t in zip(ema.model.parameters(), target):
        assert torch.allclose(a, t, atol=1e-3)
    with pytest.raises(ValueError):
        EMATeacher(student, decay=1.0)


# ----------------------------------------------------------------------------- maths
def test_pixel_noise_formula():
    labels = np.array([[0, 0, 0, 1]])
    mean = np.array([[[0.999, 0.001, 0.5, 0.9]], [[0.001, 0.999, 0.5, 0.1]]])
    noise, uncertainty = distill.pixel_noise(mean, labels)
    assert noise.dtype == np.float32 and noise.shape == (1, 4)
    assert noise[0, 0] < 0.02  # confident and agreeing: clean
    assert noise[0, 1] > 0.98  # confident and disagreeing: noisy
    assert noise[0, 2] == pytest.approx(1.0) and uncertainty[0, 2] == pytest.approx(1.0)
    h = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    assert uncertainty[0, 3] == pytest.approx(h, rel=1e-5)
    assert noise[0, 3] == pytest.approx(h + (1 - h) * 0.9, rel=1e-5)


def test_robust_target_is_the_weighted_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    labels = torch.randint(0, 3, (2, 5, 5))
    pseudo = torch.randint(0, 3, (2, 5, 5))
    n = torch.rand(2, 5, 5)
    target = distill.robust_target(labels, pseudo, n, 3)
    assert torch.allclose(target.sum(1), torch.ones(2, 5, 5))
    expected = (1 - n) * ce_map(logits, labels) + n * ce_map(logits, pseudo)
    assert torch.allclose(soft_ce_map(logits, target), expected, atol=1e-5)


def test_given_label_dice_leaves_out_replaced_pixels():
    """With dice_target="given", pixels the pseudo label fully replaces (λ = 1) do not enter the Dice."""
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1
    pseudo = torch.zeros_like(labels)  # the teacher erases the object
    logits = torch.stack([-(labels.float() * 20 - 10), labels.float() * 20 - 10], 1)  # predicts the labels
    weights = torch.ones(1, 8, 8)
    replaced = (labels == 1).float()  # λ = 1 on the object
    target = distill.robust_target(labels, pseudo, replaced, 2)
    given = distill.robust_dice(logits, target, labels, replaced, weights, "given")
    against_target = distill.robust_dice(logits, target, labels, replaced, weights, "target")
    kept = distill.robust_dice(logits, target, labels, torch.zeros_like(replaced), weights, "given")
    assert float(kept) < 0.01  # λ = 0: plain Dice against the labels, which the logits match
    assert float(against_target) > 0.4  # the target has no object left: large Dice loss
    assert float(given) < float(against_target)


def test_image_scores_rank_a_corrupted_image_first():
    """Constructed teacher: right on the clean truth; image 0 lost all its objects."""
    rng = np.random.default_rng(0)
    givens, means = [], []
    for index in range(5):
        truth = np.zeros((64, 64), np.int64)
        for _ in range(4):
            y, x = rng.integers(8, 56, size=2)
            truth[y - 5 : y + 5, x - 5 : x + 5] = 1
        givens.append(np.zeros_like(truth) if index == 0 else truth.copy())
        means.append(np.where(truth[None] == np.arange(2)[:, None, None], 0.97, 0.03).astype(np.float32))
    run = SimpleNamespace(dataset=build_dataset([np.zeros((64, 64), np.float32)] * 5, givens))
    maps = distill.teacher_maps(run, means, band=3)
    scores = maps["scores"]
    assert np.argmax(scores) == 0 and scores[0] > 0.7 and max(scores[1:]) < 0.3
    assert np.allclose(maps["weight"][0], maps["noise"][0] * (1 - distill.pixel_noise(means[0], givens[0])[1]))
    chosen = distill.select_noisy_images(scores, 0.3)
    assert chosen[0] and chosen.sum() == 2  # round(0.3 * 5) = 2 (half up)
    assert distill.select_noisy_images(scores, 0.1).tolist() == [True, False, False, False, False]
    assert distill.select_noisy_images(scores, 0.0).sum() == 0
    assert distill.select_noisy_images([0.2, 0.2, 0.1], 0.2).tolist() == [True, False, False]
    # "outliers": only the corrupted image stands out; evenly noisy images select none.
    assert distill.select_noisy_images(scores, 0.3, "outliers").tolist() == [True, False, False, False, False]
    even = np.random.default_rng(0).normal(0.3, 0.02, 40)
    assert distill.select_noisy_images(even, 0.3, "outliers").sum() == 0
    assert distill.select_noisy_images(even, 0.3, "fraction").sum() == 12


def constructed_teacher(n_samples: int):
    """Given labels with classes 1 and 2 on 32² samples, and a teacher's p̄ that reproduces
    all of class 1 but two disputed rows (recall 0.8) and 20 % of class 2.

    Returns given (N, 32, 32) int64, the teacher's classes (same), p̄ per sample and a run.
    """
    given = np.zeros((n_samples, 32, 32), np.int64)
    given[:, 4:14, 4:14] = 1
    given[:, 18:28, 18:28] = 2
    teacher_class = given.copy()
    teacher_class[:, 18:28, 18:26] = 0
    teacher_class[:, 4:6, 4:14] = 0
    means = [np.where(t[None] == np.arange(3)[:, None, None], 0.94, 0.03).astype(np.float32)
             for t in teacher_class]
    images = [np.zeros((32, 32), np.float32)] * n_samples
    run = SimpleNamespace(dataset=build_dataset(images, list(given), n_classes=3))
    return given, teacher_class, means, run


def test_classes_the_teacher_has_not_learnt_keep_their_given_labels():
    """Constructed teacher that misses most of class 2: its pixels get λ = 0 under the guard."""
    given, teacher_class, means, run = constructed_teacher(2)
    guarded = distill.teacher_maps(run, means, band=3, learnt_recall=0.5)
    unguarded = distill.teacher_maps(run, means, band=3)
    assert guarded["class_recall"][1:] == pytest.approx([0.8, 0.2])
    assert guarded["learnt"].tolist() == [True, True, False]
    class2 = given[0] == 2
    assert np.all(guarded["weight"][0][class2] == 0) and np.all(guarded["protected"][0][class2])
    assert unguarded["weight"][0][class2 & (teacher_class[0] == 0)].min() > 0.5
    # The learnt class is still corrected where the teacher disputes it; the noise map is unchanged.
    disputed = (given[0] == 1) & (teacher_class[0] == 0)
    assert guarded["weight"][0][disputed].min() > 0.5
    np.testing.assert_array_equal(guarded["noise"][0], unguarded["noise"][0])
    weights = distill.training_weights(run, guarded, np.array([True, False]))
    assert np.all(weights[0][class2] == 0) and np.all(weights[0][~guarded["protected"][0]] == 1)


def test_output_guard_keeps_the_labels_of_an_unlearnt_class():
    """Same constructed teacher: its corrections of class 2 (recall 0.2) are withheld, its
    noise there halved below the correction bar; class 1's disputed rows are still corrected."""
    given, teacher_class, means, run = constructed_teacher(1)
    unguarded = distill.teacher_maps(run, means, band=3)
    noise_open, corrected_open = distill.curation_outputs(run, means, unguarded, 0.5)
    noise, corrected = distill.curation_outputs(run, means, distill.teacher_maps(run, means, 3, 0.5), 0.5)
    assert np.array_equal(distill.curation_outputs(run, means, unguarded, 0.5, "noise")[1][0], corrected_open[0])
    missed = (given[0] == 2) & (teacher_class[0] == 0)
    disputed = (given[0] == 1) & (teacher_class[0] == 0)
    assert np.all(corrected_open[0][missed] == 0) and noise_open[0][missed].min() > 0.5
    np.testing.assert_array_equal(corrected[0][given[0] == 2], 2)
    np.testing.assert_allclose(noise[0][missed], 0.5 * noise_open[0][missed], rtol=1e-6)
    assert noise[0][missed].max() <= 0.5
    assert np.all(corrected[0][disputed] == 0)
    np.testing.assert_array_equal(noise[0][given[0] != 2], noise_open[0][given[0] != 2])


def test_unsure_disagreement_is_corrected_only_by_the_noise_rule():
    """The teacher prefers class 1 on a class-2 pixel but is unsure (0.45 / 0.40): n > 0.5
    (METHODS.md's rule corrects it), λ = n·(1 − u) < 0.5 (the default keeps the label);
    a sure disagreement (0.94 against 0.03) is corrected by both."""
    given = np.full((1, 8, 8), 2, np.int64)
    mean = np.zeros((3, 8, 8), np.float32)
    mean[:, :4] = np.array([0.15, 0.45, 0.40])[:, None, None]
    mean[:, 4:] = np.array([0.03, 0.94, 0.03])[:, None, None]
    run = SimpleNamespace(dataset=build_dataset([np.zeros((8, 8), np.float32)], list(given), n_classes=3))
    maps = distill.teacher_maps(run, [mean], band=3)
    assert maps["noise"][0][:4].min() > 0.5 and maps["weight"][0][:4].max() < 0.5
    _, by_weight = distill.curation_outputs(run, [mean], maps, 0.5)
    _, by_noise = distill.curation_outputs(run, [mean], maps, 0.5, "noise")
    np.testing.assert_array_equal(by_weight[0][:4], 2)
    np.testing.assert_array_equal(by_noise[0][:4], 1)
    np.testing.assert_array_equal(by_weight[0][4:], 1)
    np.testing.assert_array_equal(by_noise[0][4:], 1)


# ----------------------------------------------------------------------------- training
def test_registry_and_params():
    assert REGISTRY["distill"] == "napari_noisyseg.methods.distill"
    module = get_method("distill")
    assert module.NAME == "distill" and module.SUMMARY and module.fit is distill.fit
    assert module.DEFAULTS["ema_decay"] == 0.99 and module.DEFAULTS["mc_samples"] == 8
    tiny = build_dataset([np.zeros((16, 16))], [np.zeros((16, 16), int)])
    with pytest.raises(ValueError, match="dropout"):
        distill.fit(tiny, _config(1, dropout=0.0))
    with pytest.raises(ValueError, match="Unknown parameters"):
        distill.fit(tiny, _config(1, epsilon=0.3))
    with pytest.raises(ValueError, match="image_select"):
        distill.fit(tiny, _config(1, image_select="top"))


def test_real_run_ranks_the_corrupted_crop_and_flags_its_nuclei(trained, crops):
    dataset, result = trained
    reliability = result.sample_reliability
    assert reliability.shape == (6,) and np.all((0 <= reliability) & (reliability <= 1))
    assert np.argmin(reliability) == 0
    assert reliability[0] < min(reliability[1:]) - 0.1
    # The missing nuclei rank above the rest of the crop, if only modestly: this tiny
    # teacher is unsure almost everywhere and the uncertainty term u dominates n
    # (measured 0.61 here; the benchmark measures n after a real run).
    missing = crops["clean"][0] == 1
    assert noise_detection_scores(result.noise[0], missing)["auroc"] > 0.55
    history = result.history
    assert history["stage"][:4] == ["warmup"] * 4 and history["stage"][4:] == ["robust"] * 4
    # Only the corrupted crop lies above Tukey's fence of the image scores (the default
    # image rule); a fixed ε = 0.3 would hand a clean crop to the teacher as well.
    assert len(history["image_scores"][-1]) == 6 and history["down_weighted_images"][-1] == [0]
    assert history["down_weighted_fraction"][-1] == pytest.approx(1 / 6)
    assert all(0 <= v <= 1 for v in history["mean_noise"][4:])


def test_trusted_pixels_never_change(trained):
    dataset, result = trained
    sample = dataset.samples[1]
    assert sample.trust.sum() == 1600
    assert np.all(result.noise[1][sample.trust] == 0)
    assert np.array_equal(result.corrected[1][sample.trust], sample.labels[sample.trust])
    # Training side: trusted pixels keep the given label even in a selected image.
    maps = {"weight": [np.full(s.shape, 0.7, np.float32) for s in dataset.samples],
            "protected": [np.zeros(s.shape, bool) for s in dataset.samples]}
    selected = np.zeros(6, bool)
    selected[1] = True
    weights = distill.training_weights(SimpleNamespace(dataset=dataset), maps, selected)
    assert np.all(weights[1][sample.trust] == 0) and np.all(weights[1][~sample.trust] == 1)
    assert np.allclose(weights[0], 0.7)


@pytest.mark.parametrize("stop_epoch", [0, 3])
def test_stop_returns_a_usable_result(crops, stop_epoch):
    dataset = _dataset(crops).subset([0, 1, 2])
    progress = stop_at(lambda event: event.epoch == stop_epoch)
    result = distill.fit(dataset, _config(6, warmup_fraction=0.4), progress)
    assert result.stopped and result.history["stopped"]
    assert result.history["epoch"][-1] <= stop_epoch
    for sample, probs, noise, corrected in zip(dataset.samples, result.probabilities, result.noise,
                                               result.corrected):
        assert probs.shape == (2,) + sample.shape and np.allclose(probs.sum(0), 1, atol=1e-3)
        assert noise.shape == sample.shape and noise.dtype == np.float32
        assert 0 <= noise.min() and noise.max() <= 1
        assert corrected.shape == sample.shape
    assert result.final_model == "teacher" and set(result.models) == {"teacher", "student"}


def test_a_time_budget_keeps_the_time_its_monte_carlo_maps_need(crops):
    """A 6-s budget with 40 dropout passes for the closing maps: far more than the 15 %
    (0.9 s) a budget keeps by default. The run times its predictions, keeps what the
    closing passes need and stops training in time to leave it; passes of a refresh the
    budget interrupted are continued, not redone. That the closing then fits its reserve
    is measured by ``benchmarks/time_budget.py`` (benchmarks/README.md), not here: a
    wall-clock bound failed on a loaded machine (7.1 s against 6.5 in a make test that
    shared the two cores with a benchmark; the fixed 15 % ran this to 7.3 s unloaded)."""
    import time

    config = TrainConfig(method="distill", epochs=None, minutes=0.1, params={**FAST, "mc_samples": 40}, **TINY)
    dataset = _dataset(crops)
    distill.fit(dataset, _config(1))  # warm up the kernels, as the other timed tests do
    start = time.perf_counter()
    result = distill.fit(dataset, config)
    wall = time.perf_counter() - start
    history = result.history
    assert history["closing_reserve_s"] > 0.15 * 6.0
    # Training ended by the budget less the reserve (one step late at most).
    assert history["wall_s"] - history["closing_s"] < 6.0 - history["closing_reserve_s"] + 1.0
    assert wall >= history["wall_s"] and history["closing_passes"]["planned"] >= 40
    assert history["steps"] > 0 and len(result.noise) == 6


def test_deterministic_with_seed(crops):
    dataset = _dataset(crops).subset([0, 1])
    first = distill.fit(dataset, _config(2, mc_samples=2))
    second = distill.fit(dataset, _config(2, mc_samples=2))
    for a, b in zip(first.noise, second.noise):
        assert np.array_equal(a, b)
    assert np.array_equal(first.sample_reliability, second.sample_reliability)


def test_cli_train_distill(crops, tmp_path):
    from napari_noisyseg.cli import main
    from napari_noisyseg.core import io

    images, labels = tmp_path / "images", tmp_path / "labels"
    for index in (0, 1):
        io.write_array(images / f"crop{index}.tif", crops["images"][index])
        io.write_labels(labels / f"crop{index}.png", crops["noisy"][index].astype(np.uint8))
    out = tmp_path / "run"
    code = main(["train", "--images", str(images), "--labels", str(labels), "--method", "distill",
                 "--epochs", "2", "--patch-size", "64", "--batch-size", "4", "--width", "8", "--depth", "3",
                 "--param", "mc_samples=2", "--param", "warmup_fraction=0.5", "--out", str(out), "--quiet"])
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "history.json").is_file()
    noise = io.read_array(out / "noise" / "crop0.tif")[0]
    assert noise.shape == (CROP, CROP) and 0 <= noise.min() and noise.max() <= 1
