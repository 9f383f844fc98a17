"""Deep Self-Cleansing (METHODS.md §5): the loss mixture, both modules, training.

The GMM and the modules are tested on constructed arrays; the training runs use
small crops of the repository's BBBC039 sample data (128×128 crops, 64-pixel
patches, a width-8, depth-3 U-Net, a few epochs) so the file runs well under a
minute on two cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.core.metrics import noise_detection_scores
from napari_noisyseg.core.noise import simulate_noise
from napari_noisyseg.engine.device import numeric_path
from napari_noisyseg.engine.infer import predict_many
from napari_noisyseg.methods import REGISTRY, TrainConfig, get_method
from napari_noisyseg.methods import base, cleansing

from helpers import foreground_crops, stop_at

CROP = 128
TINY = dict(patch_size=64, batch_size=4, width=8, depth=3, seed=0)
FAST = dict(ema_decay=0.9, warmup_fraction=0.5)


@pytest.fixture(scope="module")
def crops(_bbbc_cached) -> dict:
    """Six crops whose labels lost half of their nuclei."""
    images, clean = foreground_crops(_bbbc_cached, 6, CROP, low=0.1, high=0.5)
    assert len(images) == 6
    run = simulate_noise(clean, "missing", fraction=1.0, seed=1, p=0.5)
    noisy = [np.asarray(n, np.int64) for n in run.noisy]
    return {"images": images, "clean": clean, "noisy": noisy, "masks": run.noise_masks}


def _dataset(crops, trust=None):
    return build_dataset(crops["images"], crops["noisy"], [f"crop{i}" for i in range(6)], trust=trust)


def _config(epochs, **params):
    return TrainConfig(method="cleansing", epochs=epochs, params={**FAST, **params}, **TINY)


@pytest.fixture(scope="module")
def trained(crops):
    """One run with the top half of crop 0 trusted."""
    trust = [np.zeros((CROP, CROP), bool) for _ in range(6)]
    trust[0][:64] = True
    dataset = _dataset(crops, trust)
    return dataset, cleansing.fit(dataset, _config(8))


# ----------------------------------------------------------------------------- the mixture
def test_gmm_separates_a_bimodal_loss_distribution():
    rng = np.random.default_rng(0)
    clean = np.abs(rng.normal(0.5, 0.15, 80_000))
    noisy = rng.normal(4.0, 0.5, 20_000)
    losses = np.concatenate([clean, noisy])
    mixture = cleansing.fit_loss_mixture(losses, max_samples=50_000, seed=0)
    assert mixture.n_fit == 50_000 and not mixture.degenerate
    span = mixture.high - mixture.low
    means = [mixture.low + m * span for m in mixture.means]
    stds = [np.sqrt(v) * span for v in mixture.variances]
    assert means[0] == pytest.approx(0.5, abs=0.05) and means[1] == pytest.approx(4.0, abs=0.1)
    # Each variance carries the regulariser (in normalised units).
    expected = [np.sqrt(sd**2 + cleansing.REG_COVAR * span**2) for sd in (0.15, 0.5)]
    assert stds[0] == pytest.approx(expected[0], abs=0.03) and stds[1] == pytest.approx(expected[1], abs=0.05)
    assert mixture.weights[0] == pytest.approx(0.8, abs=0.02)
    w_clean, w_noisy = mixture.clean_probability(clean), mixture.clean_probability(noisy)
    assert w_clean.dtype == np.float32 and w_clean.shape == clean.shape
    assert np.median(w_clean) > 0.999 and w_clean.mean() > 0.99
    assert np.median(w_noisy) < 0.001 and w_noisy.mean() < 0.01
    grid = np.linspace(-1.0, 10.0, 500)  # beyond both ends of the fitted range too
    w = mixture.clean_probability(grid)
    assert np.all(np.diff(w) <= 1e-7) and w[0] > 0.999 and w[-1] < 0.001
    record = mixture.to_dict()
    assert set(record) >= {"means", "variances", "weights"} and len(record["means"]) == 2


def test_gmm_degenerate_inputs_are_all_clean():
    assert cleansing.fit_loss_mixture(np.full(1000, 0.3)).degenerate
    assert cleansing.fit_loss_mixture(np.arange(5.0)).degenerate
    assert np.all(cleansing.fit_loss_mixture(np.zeros(0)).clean_probability(np.array([0.0, 9.0])) == 1)


def test_gmm_is_deterministic():
    losses = np.random.default_rng(3).gamma(1.0, 1.0, 300_000)
    a = cleansing.fit_loss_mixture(losses, 20_000, seed=5)
    b = cleansing.fit_loss_mixture(losses, 20_000, seed=5)
    assert a.to_dict() == b.to_dict()


# ----------------------------------------------------------------------------- the modules
def test_filter_and_cleanse_respect_trust():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40), np.int64)
    labels[10:30, 10:30] = 1
    trust = np.zeros_like(labels, bool)
    trust[:5] = True
    losses = np.abs(rng.normal(0.1, 0.05, labels.shape)).astype(np.float32)
    wrong = np.zeros_like(trust)
    wrong[:10, :] = True  # rows 0-9 look mislabelled (rows 0-4 are trusted)
    losses[wrong] = rng.normal(5.0, 0.3, int(wrong.sum()))
    dataset = build_dataset([np.zeros((40, 40), np.float32)], [labels], trust=[trust])
    mixtures, clean = cleansing.filter_labels(dataset, [losses], 10_000, 0)
    assert len(mixtures) == 2 and mixtures[0].means[1] > 0.8  # background's noisy mode
    w = clean[0]
    assert np.all(w[trust] == 1)
    assert w[5:10].max() < 0.05 and np.median(w[10:]) > 0.95
    teacher = np.stack([np.full(labels.shape, 0.1), np.full(labels.shape, 0.9)]).astype(np.float32)
    target = cleansing.cleansed_targets(labels, w, teacher, 0.5)
    assert target.shape == (2, 40, 40) and np.allclose(target.sum(0), 1)
    assert np.all(target[1][trust] == 0)  # trusted background stays background
    expected = w[5:10] * 0 + (1 - w[5:10]) * 0.9
    assert np.allclose(target[1, 5:10], expected, atol=1e-6)
    keep = w >= 0.5
    assert np.all(target.argmax(0)[keep] == labels[keep])


def test_pixels_the_network_reproduces_are_never_filtered():
    """With ``agreeing`` "keep", w < 0.5 filters a pixel only where the student's argmax
    differs from its label."""
    labels = np.zeros((4, 4), np.int64)
    labels[:2] = 1
    w = np.full((4, 4), 0.9, np.float32)
    w[0, :2] = 0.1  # the mixture calls these wrong ...
    w[3, :2] = 0.2
    predicted = labels.copy()
    predicted[3, :2] = 1  # ... and the network disagrees only here
    kept = cleansing.keep_agreeing(w, predicted, labels, 0.5)
    assert kept.dtype == np.float32
    assert np.allclose(kept[0, :2], 0.55) and np.allclose(kept[3, :2], 0.2)
    assert np.allclose(kept[1:3], 0.95)  # reproduced: noise halved, ranking kept
    assert kept.min() == pytest.approx(0.2) and (kept >= 0.5).sum() == 14
    assert np.array_equal(kept < 0.5, (w < 0.5) & (predicted != labels))  # the filtered pixels
    teacher = np.stack([np.zeros((4, 4)), np.ones((4, 4))]).astype(np.float32)
    target = cleansing.cleansed_targets(labels, kept, teacher, 0.5)
    assert np.array_equal(target.argmax(0)[0], labels[0])  # reproduced: not cleansed
    assert np.all(target.argmax(0)[3, :2] == 1)  # disagreed and flagged: cleansed
    # Background only (the default): the reproduced object pixels may still be filtered.
    only_background = cleansing.keep_agreeing(w, predicted, labels, 0.5, classes=(0,))
    assert np.allclose(only_background[0, :2], 0.1) and np.allclose(only_background[3, :2], 0.2)
    assert np.allclose(only_background[1], 0.9)  # reproduced object pixels keep their w
    w[2, 0] = 0.3  # reproduced background, flagged by the mixture
    assert cleansing.keep_agreeing(w, predicted, labels, 0.5, classes=(0,))[2, 0] == pytest.approx(0.65)


def test_unlearnt_class_is_never_filtered():
    """A class the network has not learnt keeps w = 1 and stays out of the fits."""
    rng = np.random.default_rng(1)
    labels = np.zeros((40, 40), np.int64)
    labels[10:30, 10:30] = 1
    losses = np.abs(rng.normal(0.1, 0.05, labels.shape)).astype(np.float32)
    losses[labels == 1] = rng.gamma(2.0, 1.0, int((labels == 1).sum()))  # every object pixel looks wrong
    losses[:3] = 6.0  # a strip of mislabelled background
    dataset = build_dataset([np.zeros((40, 40), np.float32)], [labels])
    predicted = np.zeros_like(labels)  # the network predicts no object yet
    recall = base.class_recall([predicted], dataset)
    assert recall == [1.0, 0.0]
    learnt = base.learnt_classes(recall, 0.5)
    protected = base.unlearnt_pixels(learnt, labels, predicted)
    assert np.array_equal(protected, labels == 1)
    mixtures, clean = cleansing.filter_labels(dataset, [losses], 10_000, 0, [protected])
    assert np.all(clean[0][labels == 1] == 1)
    assert mixtures[1].degenerate  # nothing left to fit for the object class
    assert clean[0][:3].max() < 0.05 and np.median(clean[0][3:10]) > 0.95


def test_recall_ignores_objects_the_labels_miss():
    """Finding unlabelled objects lowers IoU with the labels but not recall: the class is learnt."""
    labels = np.zeros((20, 20), np.int64)
    labels[2:6, 2:6] = 1
    predicted = labels.copy()
    predicted[10:18, 10:18] = 1  # a nucleus the annotator missed
    dataset = build_dataset([np.zeros((20, 20), np.float32)], [labels])
    assert base.class_iou([predicted], dataset)[1] == pytest.approx(16 / 80)
    assert base.class_recall([predicted], dataset)[1] == 1.0
    assert base.learnt_classes(base.class_recall([predicted], dataset), 0.5).all()


# ----------------------------------------------------------------------------- training
def test_registry_and_params():
    assert REGISTRY["cleansing"] == "napari_noisyseg.methods.cleansing"
    module = get_method("cleansing")
    assert module.NAME == "cleansing" and module.SUMMARY and module.fit is cleansing.fit
    assert module.DEFAULTS["ema_decay"] == 0.99
    tiny = build_dataset([np.zeros((16, 16))], [np.zeros((16, 16), int)])
    with pytest.raises(ValueError, match="Unknown parameters"):
        cleansing.fit(tiny, _config(1, gmm_components=3))


def test_real_run_finds_the_missing_nuclei(trained, crops):
    dataset, result = trained
    history = result.history
    assert history["stage"] == ["warmup"] * 4 + ["cleansing"] * 4
    assert history["gmm_means"][0] is None and len(history["gmm_means"][-1]) == 2
    for means, variances, weights in zip(history["gmm_means"][4:], history["gmm_variances"][4:],
                                         history["gmm_weights"][4:]):
        for k in range(2):
            assert means[k][0] < means[k][1] and min(variances[k]) > 0
            assert sum(weights[k]) == pytest.approx(1.0)
    assert all(0 <= f <= 1 for f in history["filtered_fraction"][-1])
    truth = np.concatenate([m.ravel() for m in crops["masks"]])[None]
    noise = np.concatenate([n.ravel() for n in result.noise])[None]
    trusted = np.concatenate([s.trust.ravel() for s in dataset.samples])[None]  # noise 0 by definition
    scores = noise_detection_scores(noise, truth, ignore=trusted)
    assert scores["auroc"] > 0.8
    # Filtered labels move towards the truth: more of the missing nuclei are restored.
    restored = sum(np.count_nonzero((c == 1) & (m & ~s.trust)) for c, m, s in
                   zip(result.corrected, crops["masks"], dataset.samples))
    assert restored > 0.2 * sum(np.count_nonzero(m) for m in crops["masks"])


def test_final_filter_judge_changes_outputs_only(trained):
    """The default final filter is judged by the teacher; ``"student"`` changes the judge only."""
    dataset, result = trained
    # The judge sees one unflipped forward pass (result.probabilities are flip-averaged p̂).
    def recall_of(model):
        images = [s.image for s in dataset.samples]
        probabilities = predict_many(model, images, numeric_path(torch.device("cpu")), tile=512, min_size=64)
        return base.class_recall([p.argmax(0) for p in probabilities], dataset)

    assert result.history["final_class_recall"] == pytest.approx(recall_of(result.models["teacher"]), abs=0.02)
    judged = cleansing.fit(dataset, _config(8, final_judge="student"))
    for a, b in zip(judged.probabilities, result.probabilities):
        np.testing.assert_array_equal(a, b)  # training and final model unchanged
    assert judged.history["final_class_recall"] == pytest.approx(recall_of(judged.models["student"]), abs=0.02)
    assert all(np.all(n[s.trust] == 0) for n, s in zip(judged.noise, dataset.samples))
    with pytest.raises(ValueError, match="final_judge"):
        cleansing.fit(dataset, _config(1, final_judge="ensemble"))


def test_trusted_pixels_never_change(trained):
    dataset, result = trained
    sample = dataset.samples[0]
    assert np.all(result.noise[0][sample.trust] == 0)
    assert np.array_equal(result.corrected[0][sample.trust], sample.labels[sample.trust])


@pytest.mark.parametrize("stop_epoch", [0, 3])
def test_stop_returns_a_usable_result(crops, stop_epoch):
    dataset = _dataset(crops).subset([0, 1, 2])
    progress = stop_at(lambda event: event.epoch == stop_epoch)
    result = cleansing.fit(dataset, _config(6, warmup_fraction=0.4), progress)
    assert result.stopped and result.history["stopped"]
    assert result.history["epoch"][-1] <= stop_epoch
    for sample, probs, noise, corrected in zip(dataset.samples, result.probabilities, result.noise,
                                               result.corrected):
        assert probs.shape == (2,) + sample.shape and np.allclose(probs.sum(0), 1, atol=1e-3)
        assert noise.shape == sample.shape and noise.dtype == np.float32
        assert 0 <= noise.min() and noise.max() <= 1
        assert corrected.shape == sample.shape
    assert result.final_model == "teacher" and set(result.models) == {"teacher", "student"}
    assert len(result.history["final_gmm"]) == 2


def test_deterministic_with_seed(crops):
    dataset = _dataset(crops).subset([0, 1])
    first = cleansing.fit(dataset, _config(2))
    second = cleansing.fit(dataset, _config(2))
    for a, b in zip(first.noise, second.noise):
        assert np.array_equal(a, b)
    for a, b in zip(first.corrected, second.corrected):
        assert np.array_equal(a, b)


def test_cli_train_cleansing(crops, tmp_path):
    from napari_noisyseg.cli import main
    from napari_noisyseg.core import io

    images, labels = tmp_path / "images", tmp_path / "labels"
    for index in (0, 1):
        io.write_array(images / f"crop{index}.tif", crops["images"][index])
        io.write_labels(labels / f"crop{index}.png", crops["noisy"][index].astype(np.uint8))
    out = tmp_path / "run"
    code = main(["train", "--images", str(images), "--labels", str(labels), "--method", "cleansing",
                 "--epochs", "2", "--patch-size", "64", "--batch-size", "4", "--width", "8", "--depth", "3",
                 "--param", "warmup_fraction=0.5", "--out", str(out), "--quiet"])
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "history.json").is_file()
    noise = io.read_array(out / "noise" / "crop0.tif")[0]
    assert noise.shape == (CROP, CROP) and 0 <= noise.min() and noise.max() <= 1


def test_iou_plateau_rule():
    assert not cleansing.iou_plateaued([[0.9, 0.5]], 0.02)  # one epoch: nothing to compare
    assert not cleansing.iou_plateaued([[0.9, 0.50], [0.95, 0.60]], 0.02)  # the foreground still rises
    assert cleansing.iou_plateaued([[0.9, 0.60], [0.91, 0.61]], 0.02)
    assert cleansing.iou_plateaued([[0.9, None], [0.9, 0.3]], 0.02)  # a class without a value is skipped
    assert not cleansing.iou_plateaued([[None, None], [0.9, 0.3]], 0.02)


def test_plateau_warmup_ends_before_the_cap(crops):
    """With a gain no IoU can reach, the warm-up ends after two epochs instead of the cap's five."""
    dataset = _dataset(crops).subset([0, 1, 2])
    plateau = cleansing.fit(dataset, _config(6, warmup_fraction=0.9, warmup="plateau", warmup_gain=1.0))
    fixed = cleansing.fit(dataset, _config(6, warmup_fraction=0.9))
    assert plateau.history["warmup_epochs"] == 2
    assert plateau.history["stage"] == ["warmup"] * 2 + ["cleansing"] * 4
    assert fixed.history["warmup_epochs"] == 5 and fixed.history["stage"][:5] == ["warmup"] * 5
    with pytest.raises(ValueError, match="warmup"):
        cleansing.fit(dataset, _config(1, warmup="adaptive"))
