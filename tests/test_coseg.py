"""Co-Seg (METHODS.md §2) on small crops of the repository's BBBC039 sample data.

Every training here is tiny (96×96 crops, 64-pixel patches, a width-8, depth-3
U-Net, a handful of epochs) so that the whole file runs in well under a minute
on two CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.core.noise import simulate_noise
from napari_noisyseg.methods import REGISTRY, TrainConfig, get_method
from napari_noisyseg.methods import base, coseg

from helpers import foreground_crops, stop_at

CROP = 96
TINY = dict(patch_size=64, batch_size=4, width=8, depth=3, seed=0)


@pytest.fixture(scope="module")
def crops(_bbbc_cached) -> dict:
    """Eight crops: the first four with heavily wrong labels, the last four clean."""
    images, clean = foreground_crops(_bbbc_cached, 8, CROP, low=0.08, high=0.5)
    assert len(images) == 8
    run = simulate_noise(clean[:4], "missing+spurious", fraction=1.0, seed=3, p=0.8)
    noisy = [np.asarray(n, np.int64) for n in run.noisy] + [c.copy() for c in clean[4:]]
    return {"images": images, "clean": clean, "noisy": noisy, "corrupted": np.arange(8) < 4}


def _dataset(crops, trust=None):
    return build_dataset(crops["images"], crops["noisy"], [f"crop{i}" for i in range(8)], trust=trust)


def _config(epochs, **params):
    return TrainConfig(method="coseg", epochs=epochs, params=params, **TINY)


def test_registry_lists_coseg():
    assert "coseg" in REGISTRY
    module = get_method("coseg")
    assert module.SUMMARY
    assert module.NAME == "coseg" and module.fit is coseg.fit
    assert set(module.DEFAULTS) >= {"granularity", "epsilon", "t_k", "lambda_agree", "tau"}
    assert module.DEFAULTS["epsilon"] == coseg.EPSILON_AUTO  # estimated unless set
    with pytest.raises(ValueError, match="granularity"):
        coseg.fit(build_dataset([np.zeros((8, 8))], [np.zeros((8, 8), int)]),
                  _config(1, granularity="voxel"))


def test_schedule_and_split():
    assert coseg.keep_ratio(0, 0.3, 10) == 1.0
    assert coseg.keep_ratio(5, 0.3, 10) == pytest.approx(0.85)
    assert coseg.keep_ratio(50, 0.3, 10) == pytest.approx(0.7)
    assert coseg.effective_t_k(10, 100) == 10 and coseg.effective_t_k(10, 6) == pytest.approx(3.0)
    # An epoch budget is the retraining's; stage 1 comes in front of it.
    assert coseg.stage1_epochs(10, 0.6) == 6 and coseg.stage1_epochs(1, 0.6) == 1
    # A time budget is split in the same proportion, leaving at least one epoch to retrain.
    assert coseg.timed_stage1_epochs(16, 0.6) == 6 and coseg.timed_stage1_epochs(2, 0.9) == 1


def test_selection_keeps_small_scores_and_trusted_pixels():
    scores = torch.tensor([0.9, 0.1, 0.5, 0.3])
    assert coseg.select_samples(scores, 0.5).tolist() == [False, True, False, True]
    # Pixel mode: per class, at most 50 % (the highest scores) are dropped, trusted pixels never.
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    pixel_scores = torch.tensor([[[0.1, 0.9, 0.2, 0.8], [0.3, 0.7, 0.4, 0.6]]])
    weights = torch.ones(1, 2, 4)
    trust = torch.zeros(1, 2, 4, dtype=torch.bool)
    trust[0, 0, 1] = True  # the worst background pixel is trusted
    keep = coseg.select_pixels(pixel_scores, labels, weights, trust, 0.5, 2)[0]
    assert keep[0, 1]  # trusted: kept despite the largest score
    assert keep[0, 0] and keep[1, 0] and not keep[1, 1]  # background: the 2 smallest of 3 untrusted
    assert keep[0, 2] and keep[1, 2] and not keep[0, 3] and not keep[1, 3]  # foreground: 2 of 4


@pytest.fixture(scope="module")
def trained(crops) -> dict:
    """One image-granularity run; the corrupted crops carry a trusted band of wrong labels."""
    trust = []
    for index, labels in enumerate(crops["noisy"]):
        mask = np.zeros(labels.shape, bool)
        if index < 4:
            mask[:, 40:64] = True
        trust.append(mask)
    dataset = _dataset(crops, trust=trust)
    # 8 retraining epochs with 12 stage-1 epochs in front: 20 in all; METHODS.md's fixed ε.
    result = coseg.fit(dataset, _config(8, granularity="image", epsilon=0.3, t_k=4, stage1_ratio=1.5))
    return {"dataset": dataset, "result": result}


def test_selection_record_prefers_clean_samples(crops, trained):
    result = trained["result"]
    selection = np.asarray(result.history["selection_fraction"])
    corrupted = crops["corrupted"]
    assert selection[~corrupted].mean() > selection[corrupted].mean() + 0.1
    assert result.sample_reliability[~corrupted].mean() > result.sample_reliability[corrupted].mean()
    reliable = set(result.history["reliable_samples"])
    assert len(reliable & {f"crop{i}" for i in range(4, 8)}) > len(reliable & {f"crop{i}" for i in range(4)})


def test_history_explains_the_run(trained):
    history = trained["result"].history
    assert history["stage"] == [1] * 12 + [4] * 8
    assert history["keep_ratio"][0] == 1.0 and history["keep_ratio"][2] == pytest.approx(0.85)
    assert history["keep_ratio"][11] == pytest.approx(0.7) and history["keep_ratio"][12:] == [None] * 8
    assert history["score_kept"][11] < history["score_dropped"][11]
    assert 0.6 < history["selected_f"][11] < 0.9
    assert history["final_from"] == "final" and trained["result"].final_model == "final"
    assert len(history["loss"]) == 20 and history["stage1_epochs"] == 12
    assert history["n_corrected_pixels"] >= 0


def test_trusted_pixels_never_change(trained):
    result, dataset = trained["result"], trained["dataset"]
    changed = 0
    for sample, noise, corrected in zip(dataset.samples, result.noise, result.corrected):
        assert np.array_equal(corrected[sample.trust], sample.labels[sample.trust])
        assert np.all(noise[sample.trust] == 0)
        changed += int((corrected != sample.labels).sum())
    assert changed > 0  # it does propose changes elsewhere


def test_corrections_and_noise_find_the_wrong_labels(crops, trained):
    from napari_noisyseg.core.metrics import mean_foreground_dice, noise_detection_scores

    result = trained["result"]
    corrupted = np.flatnonzero(crops["corrupted"])
    before = np.mean([mean_foreground_dice(crops["noisy"][i], crops["clean"][i], 2) for i in corrupted])
    after = np.mean([mean_foreground_dice(result.corrected[i], crops["clean"][i], 2) for i in corrupted])
    assert after > before + 0.2
    truth = np.concatenate([(n != c).ravel() for n, c in zip(crops["noisy"], crops["clean"])])
    trusted = np.concatenate([s.trust.ravel() for s in trained["dataset"].samples])  # wrong but trusted: noise 0
    scores = noise_detection_scores(np.concatenate([n.ravel() for n in result.noise]), truth, ignore=trusted)
    # AP against the share of wrong pixels (≈ 0.11 here; the learning-free boundary prior reaches
    # AP 0.07 on this missing + spurious noise). An absolute AP > 0.8 sat inside what the same
    # tiny run gives on other CPUs or thread counts (0.765 on an AMD EPYC with one thread, 0.844
    # with two).
    assert scores["auroc"] > 0.95 and scores["ap"] > 5 * scores["prevalence"]


def test_minutes_budget_returns_a_result(crops):
    dataset = _dataset(crops).subset([0, 4])
    config = TrainConfig(method="coseg", epochs=None, minutes=0.03, **TINY)
    result = coseg.fit(dataset, config)
    assert len(result.history["epoch"]) >= 1 and result.history["stage"][0] == 1
    assert all(n.shape == s.shape for n, s in zip(result.noise, dataset.samples))


def test_correction_rule_leaves_frozen_pixels():
    prob_f = np.zeros((2, 4, 4), np.float32)
    prob_f[1] = 0.95
    prob_f[0] = 0.05
    prob_g = prob_f.copy()
    prob_g[:, 0, 0] = (0.9, 0.1)  # g disagrees on one pixel
    labels = np.zeros((4, 4), np.int64)
    frozen = np.zeros((4, 4), bool)
    frozen[3, 3] = True
    corrected, confident, dice = coseg.correct_sample(prob_f, prob_g, labels, frozen, 0.8)
    assert corrected[0, 0] == 0 and not confident[0, 0]  # disagreement: unchanged
    assert corrected[3, 3] == 0 and not confident[3, 3]  # frozen: unchanged
    assert corrected[1, 1] == 1 and confident[1, 1]
    assert dice == pytest.approx(2 * 15 / 31)


@pytest.mark.parametrize("stop_epoch, final_from", [(1, "f+g"), (2, "f+g"), (3, "final")])
def test_stop_returns_a_usable_result(crops, stop_epoch, final_from):
    dataset = _dataset(crops)
    # 2 + 2 epochs: stage 1 is epochs 0-1, stage 4 epochs 2-3 (stopping in epoch 2 leaves the
    # final network less than an epoch of training, so f and g predict).
    progress = stop_at(lambda event: event.epoch == stop_epoch)
    result = coseg.fit(dataset, _config(2, stage1_ratio=1.0), progress)
    assert result.stopped
    assert result.history["final_from"] == final_from
    assert result.history["stage"][-1] == (1 if stop_epoch < 2 else 4)
    for sample, probs, noise, corrected in zip(dataset.samples, result.probabilities, result.noise,
                                               result.corrected):
        assert probs.shape == (2,) + sample.shape and np.allclose(probs.sum(0), 1, atol=1e-3)
        assert noise.shape == sample.shape and noise.dtype == np.float32
        assert 0 <= noise.min() and noise.max() <= 1
        assert corrected.shape == sample.shape
    assert result.sample_reliability.shape == (8,)
    assert result.final_model in result.models


def test_deterministic_with_seed_and_pixel_mode_keeps_trust(crops):
    trust = [np.zeros(labels.shape, bool) for labels in crops["noisy"]]
    trust[0][:, 40:64] = True
    dataset = _dataset(crops, trust=trust).subset([0, 4])
    first = coseg.fit(dataset, _config(2, granularity="pixel"))
    second = coseg.fit(dataset, _config(2, granularity="pixel"))
    sample = dataset.samples[0]
    assert np.array_equal(first.corrected[0][sample.trust], sample.labels[sample.trust])
    assert np.all(first.noise[0][sample.trust] == 0) and first.noise[0].max() > 0
    for a, b in zip(first.noise, second.noise):
        assert np.array_equal(a, b)
    for a, b in zip(first.corrected, second.corrected):
        assert np.array_equal(a, b)
    assert np.array_equal(first.sample_reliability, second.sample_reliability)


def test_match_area_reweights_each_network_and_keeps_trust(crops):
    trust = [np.zeros(labels.shape, bool) for labels in crops["noisy"]]
    trust[0][:, 40:64] = True
    dataset = _dataset(crops, trust=trust).subset([0, 1, 4, 5])
    result = coseg.fit(dataset, _config(2, match_area=True))
    weights = result.history["area_weights"]
    for name in ("f", "g"):  # one weight per class, the largest 1 (only ratios matter)
        assert len(weights[name]) == dataset.n_classes and max(weights[name]) == pytest.approx(1.0)
        assert min(weights[name]) > 0
    sample = dataset.samples[0]
    assert np.array_equal(result.corrected[0][sample.trust], sample.labels[sample.trust])
    assert coseg.fit(dataset, _config(1)).history["area_weights"] is None  # off by default
    with pytest.raises(ValueError, match="match_area"):
        coseg.check_params(dict(coseg.DEFAULTS, match_area="argmax"))


def test_refit_warm_starts(crops):
    dataset = _dataset(crops).subset([0, 1, 4, 5])
    first = coseg.fit(dataset, _config(2))
    trust = [np.zeros(s.shape, bool) for s in dataset.samples]
    trust[0][:32] = True
    second = coseg.refit(dataset.with_trust(trust), _config(1), first)
    assert second.history["keep_ratio"][0] == pytest.approx(0.7)  # no second warm-up
    assert np.array_equal(second.corrected[0][:32], dataset.samples[0].labels[:32])


def test_cli_train_coseg(crops, tmp_path):
    from napari_noisyseg.cli import main
    from napari_noisyseg.core import io

    images, labels = tmp_path / "images", tmp_path / "labels"
    for index in (0, 4):
        io.write_array(images / f"crop{index}.tif", crops["images"][index])
        io.write_labels(labels / f"crop{index}.png", crops["noisy"][index].astype(np.uint8))
    out = tmp_path / "run"
    code = main(["train", "--images", str(images), "--labels", str(labels), "--method", "coseg",
                 "--epochs", "1", "--patch-size", "64", "--batch-size", "4", "--width", "8", "--depth", "3",
                 "--param", "granularity=\"image\"", "--out", str(out), "--quiet"])
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "history.json").is_file()
    noise = io.read_array(out / "noise" / "crop0.tif")[0]
    assert noise.shape == (CROP, CROP) and 0 <= noise.min() and noise.max() <= 1


def test_collapsed_classes_flags_a_lost_class_only():
    """The final network lost class 2 (f and g still find it); class 1 merely shrank."""
    from types import SimpleNamespace

    labels = np.zeros((10, 10), np.int64)
    labels[:4, :4] = 1
    labels[6:, 6:] = 2
    sample = SimpleNamespace(labels=labels, ignore=np.zeros_like(labels, bool))
    dataset = SimpleNamespace(samples=[sample], n_classes=3)

    def onehot(mask):
        return np.stack([mask == k for k in range(3)]).astype(np.float32)

    pair = onehot(labels)
    final = labels.copy()
    final[final == 2] = 0
    final[:4, 2:4] = 0  # half of class 1 left: not a collapse
    assert coseg.collapsed_classes([onehot(final)], [pair], dataset) == [2]
    assert coseg.collapsed_classes([pair], [pair], dataset) == []
    # Lost by both: nothing to fall back to, so not flagged.
    assert coseg.collapsed_classes([onehot(final)], [onehot(final)], dataset) == []


def test_background_only_patches_and_learnt_classes():
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    labels[1, 0, 0] = 1  # a labelled object
    prob = torch.zeros(3, 2, 4, 4)
    prob[:, 0] = 1.0
    prob_g = prob.clone()
    prob_g[2, :, 1, 1] = torch.tensor([0.2, 0.8])  # g sees an object nobody labelled
    weights = torch.ones(3, 4, 4)
    assert coseg.background_only(labels, prob, prob_g, weights).tolist() == [True, False, False]
    # Background-only patches are kept outside the quota; the drop applies to the rest.
    scores = torch.tensor([0.0, 0.9, 0.1])
    empty = coseg.background_only(labels, prob, prob_g, weights)
    keep = coseg.select_samples(scores, 0.5, ~empty) | empty
    assert keep.tolist() == [True, False, True]

    assert coseg.stage4_start("auto", np.array([True, True])) == "fresh"
    assert coseg.stage4_start("auto", np.array([True, False, True])) == "f"
    assert coseg.stage4_start("fresh", np.array([True, False])) == "fresh"


def test_unlearnt_class_keeps_its_given_labels():
    """f and g confidently predict background everywhere: class 1 (IoU 0) is neither corrected nor masked."""
    from types import SimpleNamespace

    labels = np.zeros((8, 8), np.int64)
    labels[2:5, 2:5] = 1
    sample = SimpleNamespace(labels=labels, ignore=np.zeros((8, 8), bool), trust=np.zeros((8, 8), bool))
    dataset = SimpleNamespace(samples=[sample], n_classes=2)
    prob = np.zeros((2, 8, 8), np.float32)
    prob[0] = 0.95
    prob[1] = 0.05
    iou = base.class_iou([(prob + prob).argmax(0)], dataset)
    assert iou[1] == 0.0 and iou[0] == pytest.approx(55 / 64)
    learnt = base.learnt_classes(iou, 0.5)
    protected = base.unlearnt_pixels(learnt, labels, (prob + prob).argmax(0))
    corrected, confident, _ = coseg.correct_sample(prob, prob, labels, protected, 0.8)
    assert np.array_equal(corrected, labels)  # the object survives
    assert not confident[labels == 1].any() and confident[labels == 0].all()


def test_class_iou_on_a_subset_and_pair_agreement():
    from types import SimpleNamespace

    good = np.zeros((4, 4), np.int64)
    good[:2] = 1
    wrong = np.zeros((4, 4), np.int64)  # the object is missing from this sample's labels
    prob = np.zeros((2, 4, 4), np.float32)
    prob[1, :2] = 1.0
    prob[0, 2:] = 1.0
    samples = [SimpleNamespace(labels=y, ignore=np.zeros((4, 4), bool)) for y in (good, wrong)]
    dataset = SimpleNamespace(samples=samples, n_classes=2)
    predicted = [prob.argmax(0), prob.argmax(0)]
    assert base.class_iou(predicted, dataset)[1] == pytest.approx(0.5)
    assert base.class_iou(predicted, dataset, [True, False])[1] == pytest.approx(1.0)
    other = prob.copy()
    other[:, 0] = other[::-1, 0]  # g moves the first row to background
    assert coseg.pair_class_dice([prob], [other], SimpleNamespace(samples=samples[:1], n_classes=2))[1] == \
        pytest.approx(2 * 4 / (8 + 4))


def test_stage4_target_masks_uncertain_pixels_of_unjoined_samples():
    given = np.array([[0, 1, 1, 0]])
    corrected = np.array([[0, 1, 0, 0]])  # f and g confidently remove the third pixel
    confident = np.array([[True, False, True, False]])
    frozen = np.array([[False, False, False, True]])  # e.g. trusted
    base_params = dict(coseg.DEFAULTS)

    labels, mask = coseg.stage4_target(given, corrected, confident, frozen, True, False, base_params)
    assert np.array_equal(labels, given) and mask.tolist() == [[1, 1, 1, 1]]  # the paper: reliable as given
    labels, mask = coseg.stage4_target(given, corrected, confident, frozen, False, False, base_params)
    assert np.array_equal(labels, corrected) and mask.tolist() == [[1, 0, 1, 1]]  # uncertain ignored, frozen kept
    labels, mask = coseg.stage4_target(given, corrected, confident, frozen, False, True, base_params)
    assert mask.tolist() == [[1, 1, 1, 1]]  # joined: trained like a reliable sample

    labels, mask = coseg.stage4_target(given, corrected, confident, frozen, True, False,
                                       dict(base_params, correct_reliable=True))
    assert np.array_equal(labels, corrected) and mask.tolist() == [[1, 1, 1, 1]]
    assert labels.dtype == np.int64 and mask.dtype == np.float32

    with pytest.raises(ValueError, match="join_dice"):
        coseg.check_params(dict(base_params, join_dice=-1))
    coseg.check_params(dict(base_params, join_dice=None))  # None: corrected samples never join


def test_cosine_schedule_restarts_for_the_stage4_network(crops):
    """With lr_schedule="cosine" stage 1's pair and stage 4's fresh network each get a
    whole cosine: the rate decays through stage 1, jumps back up, decays again."""
    dataset = _dataset(crops).subset([0, 1, 4, 5])
    result = coseg.fit(dataset, TrainConfig(method="coseg", epochs=4, lr_schedule="cosine", **TINY))
    stages, rates = result.history["stage"], result.history["learning_rate"]
    first = [r for s, r in zip(stages, rates) if s == 1]
    final = [r for s, r in zip(stages, rates) if s == 4]
    assert len(first) >= 2 and len(final) >= 2
    assert all(a > b for a, b in zip(first, first[1:])) and all(a > b for a, b in zip(final, final[1:]))
    assert final[0] > first[-1] and max(first[-1], final[-1]) < 0.2e-3


def test_sample_loss_ce_leaves_out_the_size_dependent_dice():
    """"ce" scores a sample by its mean pixel CE alone; "ce_dice" adds each sample's soft Dice."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 8, 8, generator=generator)
    labels = torch.zeros(3, 8, 8, dtype=torch.long)
    labels[0, 2:6, 2:6] = 1
    labels[1, :, :6] = 1
    weights = torch.ones(3, 8, 8)
    ce = coseg.sample_loss(logits, labels, weights, "ce")
    expected = torch.stack([F.cross_entropy(logits[i:i + 1], labels[i:i + 1]) for i in range(3)])
    assert torch.allclose(ce, expected, atol=1e-5)
    both = coseg.sample_loss(logits, labels, weights, "ce_dice")
    assert both.shape == (3,) and bool((both > ce).all())
    with pytest.raises(ValueError, match="sample_loss"):
        coseg.check_params(dict(coseg.DEFAULTS, sample_loss="dice"))


def test_noisy_fraction_from_two_loss_groups():
    rng = np.random.default_rng(0)
    clean, noisy = rng.normal(0.2, 0.02, 30), rng.normal(0.8, 0.05, 10)
    estimate = coseg.estimate_noisy_fraction(np.concatenate([clean, noisy, [np.nan]]))
    assert estimate["source"] == "two groups" and estimate["n"] == 40
    assert estimate["epsilon"] == pytest.approx(0.25, abs=0.01)
    assert estimate["means"][0] == pytest.approx(0.2, abs=0.02) and estimate["means"][1] == pytest.approx(0.8, abs=0.05)
    assert estimate["n_high"] == 10 and estimate["stds"][1] == pytest.approx(0.05, abs=0.02)
    assert len(estimate["losses"]) == 41 and estimate["losses"][-1] is None  # kept in order, NaN as None
    # More noisy than clean samples: capped, small-loss sifting needs a clean majority.
    assert coseg.estimate_noisy_fraction(np.concatenate([clean[:10], noisy, noisy + 0.01]))["epsilon"] == 0.5
    # One group (every image equally noisy, or none): nothing to sift.
    single = coseg.estimate_noisy_fraction(rng.normal(0.5, 0.05, 40))
    assert single["source"] == "one group" and single["epsilon"] == 0.0
    few = coseg.estimate_noisy_fraction([0.1, 0.9, 0.2])
    assert few["source"] == "too few samples" and few["epsilon"] == coseg.FALLBACK_EPSILON == 0.3


def test_image_losses_rank_wrong_labels_higher():
    labels = np.zeros((16, 16), np.int64)
    labels[4:12, 4:12] = 1
    right = np.stack([labels == 0, labels == 1]).astype(np.float32) * 0.9 + 0.05
    shifted = np.roll(right, 4, axis=2)
    empty = np.stack([np.full((16, 16), 0.95), np.full((16, 16), 0.05)]).astype(np.float32)
    dataset = build_dataset([np.zeros((16, 16))] * 3, [labels, labels, np.zeros((16, 16), np.int64)])
    losses = coseg.image_losses([right, shifted, empty], dataset)
    assert losses[0] < losses[1]
    assert np.isnan(losses[2])  # background in labels and prediction: never sifted, left out


def test_auto_epsilon_is_estimated_after_the_warm_up(crops):
    dataset = _dataset(crops)
    result = coseg.fit(dataset, _config(2, epsilon="auto", t_k=2, stage1_ratio=2.0))
    history = result.history
    estimate = history["epsilon_estimate"]
    assert estimate["n"] == 8 and estimate["source"] in ("two groups", "one group")
    epsilon = history["epsilon"]
    assert epsilon == estimate["epsilon"] and 0.0 <= epsilon <= coseg.MAX_AUTO_EPSILON
    assert history["keep_ratio"][:4] == pytest.approx([coseg.keep_ratio(t, epsilon, 2.0) for t in range(4)])
    again = coseg.refit(dataset, _config(1, epsilon="auto"), result)
    assert again.history["epsilon"] == epsilon and again.history["epsilon_estimate"] is None
    with pytest.raises(ValueError, match="epsilon"):
        coseg.fit(dataset, _config(1, epsilon="guess"))
