"""ADELE (METHODS.md §3): onset detection, multi-scale consistency, correction rule, trust, stop, CLI.

Onset detection is tested on synthetic IoU curves whose knee is known in closed
form. Training tests use 128×128 crops of the repository's BBBC039 sample data
(``sample_data/bbbc039``) and a tiny U-Net so the whole file runs in well under
a minute on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from napari_noisyseg._sample_data import load_bbbc
from napari_noisyseg.core import io, metrics
from napari_noisyseg.core.checkpoint import load_checkpoint, save_result
from napari_noisyseg.core.dataset import build_dataset
from napari_noisyseg.engine.events import Progress, StateEvent, StepEvent
from napari_noisyseg.engine.unet import UNet
from napari_noisyseg.methods import (
    REGISTRY, TrainConfig, available_methods, fit, get_method, refit_note, refit_or_fit, warm_start_refusal,
)
from napari_noisyseg.methods.adele import (
    adele_loss,
    consistency_map,
    correct_labels,
    match_class_areas,
    correction_period,
    detect_onset,
    iou_curve_model,
    memorising_classes,
    multiscale_logits,
    onset_analysis,
    scaled_size,
    skip_leading,
)
from napari_noisyseg.pipeline import predict_result

from helpers import write_pairs

CROPS = [(0, 0, 0), (1, 0, 64), (2, 320, 128), (0, 256, 300)]
SIZE = 128
TRUST_BOX = (slice(0, 40), slice(0, 40))


def first_firing(curve, n_epochs):
    """(epoch at which detect_onset first returns an onset, that onset) feeding the curve epoch by epoch."""
    for length in range(1, len(curve) + 1):
        onset = detect_onset(curve[:length], n_epochs)
        if onset is not None:
            return length - 1, onset
    return None


def knee_epoch(b: float, c: float, r: float = 0.9) -> int:
    """Closed form for b = 1: r(t) = 1 − exp(−(t − 1)/c) exceeds r at the first t > 1 + c·ln(1/(1 − r))."""
    assert b == 1.0
    t_first = math.floor(1 + c * math.log(1 / (1 - r))) + 1
    return t_first - 1  # the first IoU (epoch 0) sits at x = 1


# ----------------------------------------------------------------------------- onset detection


def test_onset_fires_at_the_knee_of_a_known_curve():
    x = np.arange(1, 31)
    curve = iou_curve_model(x, 0.8, 1.0, 3.0)
    expected = knee_epoch(1.0, 3.0)
    assert expected == 7
    assert first_firing(curve, 30) == (expected, expected)
    info = onset_analysis(curve[:12], 30)
    np.testing.assert_allclose(info["params"], [0.8, 1.0, 3.0], atol=1e-3)
    # Later epochs keep reporting the same onset; the curve past the knee rises slowly (memorisation).
    creeping = curve + 0.003 * x
    fired = first_firing(creeping, 30)
    assert fired is not None and abs(fired[0] - expected) <= 1


def test_onset_with_noise_and_a_flat_start():
    rng = np.random.default_rng(0)
    x = np.arange(1, 31)
    noisy = iou_curve_model(x, 0.8, 1.0, 3.0) + rng.normal(0, 0.005, x.size)
    fired = first_firing(noisy, 30)
    assert fired is not None and abs(fired[1] - 7) <= 1
    # Four flat epochs before learning takes off: skipped, the onset shifts by them.
    delayed = np.concatenate([np.full(4, 0.02), iou_curve_model(np.arange(1, 27), 0.8, 1.0, 3.0)])
    assert skip_leading(delayed, 0.1) == 3
    assert first_firing(delayed, 30) == (3 + 8, 3 + 8)


def test_onset_never_fires_on_flat_or_still_rising_curves():
    rng = np.random.default_rng(1)
    x = np.arange(1, 31)
    flat = 0.8 + rng.normal(0, 0.005, x.size)
    assert first_firing(flat, 30) is None
    assert "flat" in onset_analysis(flat, 30)["reason"]
    linear = 0.02 * x
    assert first_firing(linear, 30) is None
    slow = iou_curve_model(x, 0.9, 1.0, 30.0)  # still far from its plateau at the end of the run
    assert first_firing(slow, 30) is None
    assert "early learning" in onset_analysis(slow, 30)["reason"]
    assert detect_onset([0.3, 0.6], 30) is None  # too short to fit
    # Epochs where the class was absent (None) carry the previous value forward.
    assert onset_analysis([None, 0.4, None, 0.7, 0.75], 30)["params"] is not None


def test_a_class_not_learnt_yet_never_starts_memorising():
    # A knee at a low plateau (IoU 0.3): the network has not learnt the class.
    x = np.arange(1, 31)
    low = iou_curve_model(x, 0.3, 1.0, 3.0)
    assert first_firing(low, 30) is None
    assert "not learnt" in onset_analysis(low, 30)["reason"]
    assert detect_onset(low[:10], 30, min_iou=0.0) == 7


def test_correction_period_scales_with_the_budget():
    assert correction_period(10, 100) == 10
    assert correction_period(10, 200) == 10
    assert correction_period(10, 30) == 3
    assert correction_period(10, 4) == 1


# ----------------------------------------------------------------------------- multi-scale consistency


def test_scaled_sizes_fit_the_unet():
    for size in (64, 128, 256):
        for scale in (0.7, 1.0, 1.5):
            assert scaled_size(size, scale, 8) % 8 == 0
    assert scaled_size(256, 0.7, 16) == 176 and scaled_size(256, 1.5, 16) == 384
    assert scaled_size(16, 0.7, 16) == 16


def test_multiscale_loss_is_finite_and_kl_vanishes_when_scales_agree():
    torch.manual_seed(0)
    model = UNet(1, 3, width=4, depth=2)
    image = torch.rand(2, 1, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    weights = torch.ones(2, 32, 32)
    weights[:, :, -4:] = 0
    logits = multiscale_logits(model, image, [0.7, 1.0, 1.5], 4)
    assert [tuple(l.shape) for l in logits] == [(2, 3, 32, 32)] * 3
    loss, parts = adele_loss(logits, labels, weights, rho=0.0)
    assert torch.isfinite(loss) and parts["consistency"] > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    same = torch.randn(2, 3, 8, 8)
    kl, confident = consistency_map([same, same.clone(), same.clone()], rho=0.0)
    assert confident.all()
    assert float(kl.abs().max()) < 1e-6
    loss_same, parts_same = adele_loss([same] * 3, labels[:, :8, :8], weights[:, :8, :8], rho=0.0)
    assert parts_same["consistency"] < 1e-6
    single, parts_single = adele_loss([same], labels[:, :8, :8], weights[:, :8, :8])
    assert float(loss_same) == pytest.approx(float(single), rel=1e-5)  # (3·sup + 0) / 3 = sup
    # The KL only applies where the mixture is confident: rho = 1 switches it off.
    other = torch.randn(2, 3, 8, 8)
    _, parts_off = adele_loss([same, other], labels[:, :8, :8], weights[:, :8, :8], rho=1.0)
    assert parts_off["consistency"] == 0.0


# ----------------------------------------------------------------------------- correction rule


def test_correction_rule():
    # 3 classes, 1×6 pixels.
    p = np.array([
        [0.9, 0.1, 0.1, 0.1, 0.5, 0.9],   # background
        [0.05, 0.8, 0.1, 0.8, 0.3, 0.05],  # class 1
        [0.05, 0.1, 0.8, 0.1, 0.2, 0.05],  # class 2
    ], np.float32)[:, None, :]
    current = np.array([[1, 0, 1, 2, 1, 0]])
    frozen = np.array([[False] * 5 + [True]])
    new = correct_labels(p, current, memorising=[1], frozen=frozen)
    # px0: confident bg, label 1 memorising -> 0; px1: confident 1 on bg -> 1;
    # px2: predicted 2 (not memorising) -> kept; px3: label 2 (not memorising) -> kept;
    # px4: not confident -> kept; px5: frozen.
    np.testing.assert_array_equal(new, [[0, 1, 1, 2, 1, 0]])
    new = correct_labels(p, current, memorising=[1, 2], frozen=frozen)
    np.testing.assert_array_equal(new, [[0, 1, 2, 1, 1, 0]])
    # The class constraint: class 2 is not in this sample's source.
    new = correct_labels(p, current, memorising=[1, 2], present={1}, frozen=frozen)
    np.testing.assert_array_equal(new, [[0, 1, 1, 1, 1, 0]])


def test_anchors_bound_the_correction():
    """A pixel enters or leaves class c only where c's onset prediction also chose the new label."""
    p = np.array([
        [0.9, 0.1, 0.9, 0.1],   # background
        [0.1, 0.9, 0.1, 0.9],   # class 1
    ], np.float32)[:, None, :]
    current = np.array([[1, 0, 1, 0]])
    np.testing.assert_array_equal(correct_labels(p, current, memorising=[1]), [[0, 1, 0, 1]])
    anchor = np.array([[0, 1, 1, 0]])  # at onset: px0 background, px1 class 1, px2 class 1, px3 background
    new = correct_labels(p, current, memorising=[1], anchors={1: anchor})
    # px0 and px1 move to what the anchor drew; px2 (anchor kept class 1) and px3 (anchor saw background) stay.
    np.testing.assert_array_equal(new, [[0, 1, 1, 0]])
    # Repeating the correction with the same predictions changes nothing more: no drift past the anchor.
    np.testing.assert_array_equal(correct_labels(p, new, memorising=[1], anchors={1: anchor}), new)


def test_matched_areas_undo_a_size_bias_and_keep_the_shape():
    """A network that draws a disc too small: reweighting restores the labelled area, not the pixel order."""
    yy, xx = np.mgrid[:64, :64]
    distance = np.hypot(yy - 32, xx - 32)
    labels = (distance <= 12).astype(np.int64)
    p1 = 1.0 / (1.0 + np.exp(distance - 9.0))  # under-confident: p(class 1) = 0.5 at radius 9, not 12
    probabilities = [np.stack([1.0 - p1, p1]).astype(np.float32)] * 2
    targets = np.bincount(labels.ravel(), minlength=2) * 2
    masks = [np.ones(labels.shape, bool)] * 2
    matched, weights = match_class_areas(probabilities, targets, masks)
    np.testing.assert_allclose(sum(m[1].sum() for m in matched), targets[1], rtol=2e-3)
    assert weights[1] > weights[0]
    argmax_area = (matched[0].argmax(0) == 1).sum()
    assert (probabilities[0].argmax(0) == 1).sum() < 0.7 * labels.sum() and abs(argmax_area / labels.sum() - 1) < 0.1
    # Monotone in the original probability: the reweighting moves the boundary, not the shape.
    order = np.argsort(p1.ravel())
    assert np.all(np.diff(matched[0][1].ravel()[order]) >= -1e-6)
    # By argmax counts: the class wins as many pixels as it is labelled with.
    matched, _ = match_class_areas(probabilities, targets, masks, tolerance=1e-2, area="argmax")
    assert abs((matched[0].argmax(0) == 1).sum() / labels.sum() - 1) < 0.03


# ----------------------------------------------------------------------------- training


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(method="adele", epochs=10, patch_size=64, batch_size=4, width=8, depth=3, seed=0,
                    device="cpu")
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def crops():
    data = load_bbbc()
    window = lambda a, y, x: np.ascontiguousarray(a[y : y + SIZE, x : x + SIZE])
    images = [window(data["image"][i], y, x) for i, y, x in CROPS]
    clean = [window(data["clean"][i], y, x).astype(np.int64) for i, y, x in CROPS]
    noisy = [window(data["noisy"][i], y, x).astype(np.int64) for i, y, x in CROPS]
    noisy[0][TRUST_BOX] = 1 - clean[0][TRUST_BOX]  # trusted and deliberately inverted
    trust = [np.zeros((SIZE, SIZE), bool) for _ in CROPS]
    trust[0][TRUST_BOX] = True
    assert sum(int((n != c).sum()) for n, c in zip(noisy, clean)) > 1000
    return {"images": images, "clean": clean, "noisy": noisy, "trust": trust}


@pytest.fixture(scope="module")
def dataset(crops):
    return build_dataset(crops["images"], crops["noisy"], [f"crop{i}" for i in range(len(CROPS))],
                         modes="2d", trust=crops["trust"])


@pytest.fixture(scope="module")
def trained(dataset):
    events = []
    # r = 0.5 ends early learning sooner so that a 10-epoch run corrects at least once.
    result = fit(dataset, tiny_config(params={"r": 0.5}), events.append)
    return result, events


def test_registered_and_params_checked(dataset):
    assert REGISTRY["adele"] == "napari_noisyseg.methods.adele"
    assert get_method("adele").NAME == "adele"
    assert "adele" in available_methods()
    with pytest.raises(ValueError, match="Unknown parameters"):
        fit(dataset, tiny_config(params={"tau": 0.5}))
    with pytest.raises(ValueError, match="include 1.0"):
        fit(dataset, tiny_config(params={"scales": [0.7, 1.5]}))


def test_training_corrects_and_keeps_trust(trained, dataset, crops):
    result, events = trained
    history = result.history
    assert len(history["iou_curves"]["1"]) == 10
    assert history["planned_epochs"] == [10] * 10  # an epoch budget: the horizon never moves
    assert history["onset_epoch"]["1"] is not None
    fit_record = history["curve_fits"]["1"]
    assert fit_record["fired"] and len(fit_record["params"]) == 3
    assert history["correction_epochs"] and history["correction_epochs"][0] == history["onset_epoch"]["1"]
    assert sum(history["pixels_changed"]) > 0
    assert any(isinstance(e, StateEvent) and e.state == "correcting" for e in events)
    assert len(history["consistency"]) == 10 and all(np.isfinite(history["consistency"]))
    changed = sum(int((c != s.labels).sum()) for c, s in zip(result.corrected, dataset.samples))
    assert changed == history["corrections"][-1]["pixels_differing_from_given"] > 0
    # Trusted pixels: never corrected, zero noise.
    np.testing.assert_array_equal(result.corrected[0][TRUST_BOX], crops["noisy"][0][TRUST_BOX])
    assert (result.noise[0][TRUST_BOX] == 0).all()
    for noise, corrected, sample in zip(result.noise, result.corrected, dataset.samples):
        assert noise.shape == corrected.shape == sample.shape and noise.dtype == np.float32
        assert 0 <= noise.min() and noise.max() <= 1
    json.dumps(history)  # serialisable as is


def test_retrain_on_decided_labels_corrects_only_at_the_end(trained, dataset, crops, tmp_path):
    """The viewer's Retrain after ADELE: every proposal accepted and trusted, then ADELE's refit
    trains on those labels as they stand and proposes once, from its final model."""
    result, _ = trained
    assert warm_start_refusal("adele", result, dataset.n_classes) == ""
    assert refit_note("adele").startswith("afresh") and "baseline" in refit_note("adele") and refit_note("coseg") == ""
    cleaned = [c.copy() for c in result.corrected]
    trust = [(c != s.labels) | s.trust for c, s in zip(cleaned, dataset.samples)]
    decided = build_dataset(crops["images"], cleaned, [f"crop{i}" for i in range(len(CROPS))], modes="2d",
                            trust=trust)
    events = []
    again = refit_or_fit(decided, tiny_config(params={"r": 0.5}), result, events.append)
    history = again.history
    assert memorising_classes(result.history) == [1] and history["carried_memorising"] == [1]
    assert memorising_classes(history) == [1]  # a third round corrects the same classes
    # No onset analysis and no correction while training (the first run corrected in training).
    assert all(epoch is None for epoch in history["onset_epoch"].values())
    assert history["correction_epochs"] == ["final"]
    assert not any(isinstance(e, StateEvent) and e.state == "correcting" for e in events)
    assert len(history["iou_curves"]["1"]) == 10
    # Its proposals are the final correction's, on untrusted pixels only.
    changed = [c != s.labels for c, s in zip(again.corrected, decided.samples)]
    assert sum(int(m.sum()) for m in changed) == history["corrections"][-1]["pixels_differing_from_given"]
    for mask, noise, sample in zip(changed, again.noise, decided.samples):
        assert not (mask & sample.trust).any() and (noise[sample.trust] == 0).all()
    # A run whose onset never fired has no class to correct: its retrain proposes nothing.
    assert memorising_classes({"onset_epoch": {"1": None}}) == [] == memorising_classes({})
    assert result.history["refit_state"] == {"memorising_classes": [1]} == history["refit_state"]
    # A model saved and loaded again keeps the classes to correct, so its retrain is this one too.
    path = save_result(tmp_path / "adele.safetensors", result)
    loaded = predict_result(load_checkpoint(path), decided)
    assert loaded.history == {"loaded": True, "refit_state": {"memorising_classes": [1]}}
    assert warm_start_refusal("adele", loaded, dataset.n_classes) == "" and memorising_classes(loaded.history) == [1]
    # A model file saved before it kept them: the retrain is a first run, and says why.
    older = dataclasses.replace(result, history={"loaded": True})
    assert "not in this model file" in warm_start_refusal("adele", older, dataset.n_classes)


def test_noise_ranks_wrong_pixels_higher(trained, crops):
    """The noise map finds the wrong pixels better (AP) than the learning-free boundary prior."""
    result, _ = trained
    flat = lambda arrays: np.concatenate([a.ravel() for a in arrays])
    wrong = flat([n != c for n, c in zip(crops["noisy"], crops["clean"])])
    trusted = flat(crops["trust"])
    ours = metrics.noise_detection_scores(flat(result.noise), wrong, ignore=trusted)
    prior = metrics.noise_detection_scores(flat([metrics.boundary_prior(n) for n in crops["noisy"]]), wrong,
                                           ignore=trusted)
    assert ours["ap"] > prior["ap"] + 0.1
    assert ours["auroc"] > 0.85


def test_deterministic(dataset):
    config = tiny_config(epochs=3, params={"r": 0.2})
    first, second = fit(dataset, config), fit(dataset, config)
    for a, b in zip(first.probabilities, second.probabilities):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first.corrected, second.corrected):
        np.testing.assert_array_equal(a, b)
    assert first.history["iou_curves"] == second.history["iou_curves"]


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
    for noise, corrected, sample in zip(result.noise, result.corrected, dataset.samples):
        assert noise.shape == corrected.shape == sample.shape
        assert np.isfinite(noise).all()
    np.testing.assert_array_equal(result.corrected[0], dataset.samples[0].labels)  # nothing fired yet
    assert np.isfinite(result.sample_reliability).all()


def test_cli_trains_adele(tmp_path, crops, capsys):
    from napari_noisyseg.cli import main

    write_pairs(tmp_path, crops["images"][:2], crops["noisy"][:2])
    out = tmp_path / "run"
    code = main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                 "--method", "adele", "--epochs", "2", "--patch-size", "64", "--batch-size", "4",
                 "--width", "8", "--depth", "3", "--device", "cpu", "--param", "scales=[1.0, 1.5]",
                 "--out", str(out), "--quiet"])
    assert code == 0
    record = json.loads((out / "history.json").read_text())
    assert record["method"] == "adele"
    assert record["history"]["scales"] == [1.0, 1.5]
    assert len(record["history"]["iou_curves"]["1"]) == 2
    noise = io.read_image(out / "noise" / "crop0.tif")[0]
    assert noise.shape == (SIZE, SIZE) and 0 <= noise.min() and noise.max() <= 1
    # Retrain from that run (`noisyseg train --from`, the viewer's Retrain): says how ADELE trains.
    code = main(["train", "--images", str(tmp_path / "images"), "--labels", str(out / "corrected"),
                 "--method", "adele", "--epochs", "1", "--patch-size", "64", "--batch-size", "4",
                 "--width", "8", "--depth", "3", "--device", "cpu", "--param", "scales=[1.0]",
                 "--from", str(out), "--out", str(tmp_path / "again"), "--quiet"])
    assert code == 0
    assert f"after {out}: adele trains afresh on the decided labels" in capsys.readouterr().out
    again = json.loads((tmp_path / "again" / "history.json").read_text())["history"]
    assert again["carried_memorising"] == memorising_classes(record["history"])
