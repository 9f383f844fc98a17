"""Metrics against hand-computed values (METHODS.md §9)."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from napari_noisyseg.core.metrics import (
    aggregate_scores,
    boundary_prior,
    correction_dice,
    dice_per_class,
    evaluate_segmentation,
    gap_recovered,
    hd95,
    hd95_per_class,
    iou_per_class,
    mean_foreground_dice,
    noise_detection_scores,
    recall_per_class,
    to_json_safe,
)

# ---------------------------------------------------------------------------------------------
# fixtures: tiny maps whose overlaps are counted by hand in the comments
# ---------------------------------------------------------------------------------------------
# binary: pred has a 2x2 square (4 px), truth a 2x3 rectangle (6 px) containing it.
BINARY_PRED = np.array(
    [[0, 0, 0, 0],
     [0, 1, 1, 0],
     [0, 1, 1, 0],
     [0, 0, 0, 0]], dtype=np.uint8)
BINARY_TRUTH = np.array(
    [[0, 0, 0, 0],
     [0, 1, 1, 1],
     [0, 1, 1, 1],
     [0, 0, 0, 0]], dtype=np.int16)

# multi-class, K = 4, class 3 absent from both:
#   class 1: |P| = 4, |T| = 5, overlap 4  -> dice 8/9,  iou 4/5
#   class 2: |P| = 4, |T| = 4, overlap 3  -> dice 6/8,  iou 3/5
#   class 0: |P| = 8, |T| = 7, overlap 7  -> dice 14/15, iou 7/8
MULTI_PRED = np.array(
    [[1, 1, 2, 2],
     [1, 1, 2, 2],
     [0, 0, 0, 0],
     [0, 0, 0, 0]], dtype=np.int32)
MULTI_TRUTH = np.array(
    [[1, 1, 1, 2],
     [1, 1, 2, 2],
     [0, 0, 0, 2],
     [0, 0, 0, 0]], dtype=np.int64)


def _square(shape=(40, 40), lo=10, hi=30):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(lo, hi) for _ in shape)] = 1
    return mask


# ---------------------------------------------------------------------------------------------
# Dice / IoU
# ---------------------------------------------------------------------------------------------
def test_dice_iou_binary_by_hand():
    dice = dice_per_class(BINARY_PRED, BINARY_TRUTH)
    iou = iou_per_class(BINARY_PRED, BINARY_TRUTH)
    assert dice.dtype == np.float64 and dice.shape == (2,)
    # background: |P| = 12, |T| = 10, overlap 10; foreground: 4, 6, overlap 4
    np.testing.assert_allclose(dice, [20 / 22, 8 / 10])
    np.testing.assert_allclose(iou, [10 / 12, 4 / 6])
    assert mean_foreground_dice(BINARY_PRED, BINARY_TRUTH) == pytest.approx(0.8)
    # recall = overlap / |T|: background 10 / 10, foreground 4 / 6
    np.testing.assert_allclose(recall_per_class(BINARY_PRED, BINARY_TRUTH), [1.0, 4 / 6])
    assert np.isnan(recall_per_class(BINARY_PRED, BINARY_TRUTH, n_classes=3)[2])


def test_dice_iou_multiclass_absent_class_is_nan():
    dice = dice_per_class(MULTI_PRED, MULTI_TRUTH, n_classes=4)
    iou = iou_per_class(MULTI_PRED, MULTI_TRUTH, n_classes=4)
    np.testing.assert_allclose(dice[:3], [14 / 15, 8 / 9, 6 / 8])
    np.testing.assert_allclose(iou[:3], [7 / 8, 4 / 5, 3 / 5])
    assert np.isnan(dice[3]) and np.isnan(iou[3])
    # the mean over foreground skips the absent class instead of counting it as 0 or 1
    assert mean_foreground_dice(MULTI_PRED, MULTI_TRUTH, n_classes=4) == pytest.approx(
        (8 / 9 + 6 / 8) / 2
    )


def test_dice_ignore_mask_excludes_pixels():
    ignore = np.zeros_like(MULTI_PRED, dtype=bool)
    ignore[0, 2] = True  # pred 2, truth 1 there
    dice = dice_per_class(MULTI_PRED, MULTI_TRUTH, ignore=ignore)
    # class 1: |P| = 4, |T| = 4, overlap 4; class 2: |P| = 3, |T| = 4, overlap 3
    np.testing.assert_allclose(dice[1:], [1.0, 6 / 7])


def test_dice_perfect_3d_and_empty_foreground():
    vol = np.zeros((5, 6, 7), dtype=np.uint16)
    vol[1:4, 2:5, 1:3] = 2
    np.testing.assert_allclose(dice_per_class(vol, vol), [1.0, np.nan, 1.0])
    empty = np.zeros((4, 4), dtype=np.int8)
    assert math.isnan(mean_foreground_dice(empty, empty, n_classes=3))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        dice_per_class(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        hd95(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="n_classes"):
        dice_per_class(MULTI_PRED, MULTI_TRUTH, n_classes=2)


# ---------------------------------------------------------------------------------------------
# HD95
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 4])
def test_hd95_shifted_square_equals_shift_and_is_symmetric(k):
    truth = _square()
    pred = np.roll(truth, k, axis=1)
    assert hd95(pred, truth) == pytest.approx(k)
    assert hd95(truth, pred) == pytest.approx(k)


def test_hd95_identical_and_empty():
    truth = _square()
    assert hd95(truth, truth) == 0.0
    empty = np.zeros_like(truth)
    assert hd95(empty, empty) == 0.0
    assert hd95(empty, truth) == math.inf
    assert hd95(truth, empty) == math.inf


def test_hd95_anisotropic_spacing_scales():
    truth = _square()
    # shift of 2 along the last axis, 2.5 units per pixel there -> 5 units
    assert hd95(np.roll(truth, 2, axis=1), truth, spacing=(1.0, 2.5)) == pytest.approx(5.0)
    # shift of 2 along the first axis, 3 units per pixel there -> 6 units
    assert hd95(np.roll(truth, 2, axis=0), truth, spacing=(3.0, 1.0)) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="spacing"):
        hd95(truth, truth, spacing=(1.0, 1.0, 1.0))


def test_hd95_3d_cube_and_per_class():
    truth = _square(shape=(24, 24, 24), lo=6, hi=18)
    pred = np.roll(truth, 3, axis=0)
    assert hd95(pred, truth) == pytest.approx(3.0)
    assert hd95(pred, truth, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)

    pred2 = _square().astype(np.int32)
    truth2 = np.roll(pred2, 2, axis=1)
    pred2[0:3, 0:3] = 3  # class 3 only in the prediction -> inf
    per_class = hd95_per_class(pred2, truth2, n_classes=5)
    assert np.isnan(per_class[0])  # background: not computed
    assert per_class[1] == pytest.approx(2.0)
    assert np.isnan(per_class[2]) and np.isnan(per_class[4])  # absent from both
    assert per_class[3] == math.inf


# ---------------------------------------------------------------------------------------------
# noise detection
# ---------------------------------------------------------------------------------------------
def test_noise_scores_perfect_ranking_and_constant():
    rng = np.random.default_rng(1)
    truth = rng.random((32, 32)) < 0.2
    perfect = truth * 0.5 + rng.random((32, 32)) * 0.4  # every noisy pixel scores higher
    scores = noise_detection_scores(perfect, truth)
    assert scores["auroc"] == pytest.approx(1.0)
    assert scores["ap"] == pytest.approx(1.0)

    constant = noise_detection_scores(np.full((32, 32), 0.3), truth)
    assert constant["auroc"] == pytest.approx(0.5)
    assert constant["ap"] == pytest.approx(truth.mean())
    assert constant["prevalence"] == pytest.approx(truth.mean())
    assert constant["recall"] == 0.0 and math.isnan(constant["precision"])


def test_noise_scores_f1_by_hand():
    truth = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]], dtype=bool)
    scores = np.array([[0.9, 0.5, 0.2, 0.7, 0.6], [0.1, 0.0, 0.3, 0.4, 0.49]])
    # flagged (>= 0.5): (0,0) tp, (0,1) tp, (0,3) fp, (0,4) fp; (0,2) fn
    result = noise_detection_scores(scores, truth, threshold=0.5)
    assert result["precision"] == pytest.approx(2 / 4)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert result["threshold"] == 0.5
    assert result["prevalence"] == pytest.approx(3 / 10)
    assert set(result) == {"auroc", "ap", "f1", "precision", "recall", "threshold", "prevalence"}

    # ignoring the two false positives leaves a perfect operating point
    ignore = np.zeros_like(truth)
    ignore[0, 3:] = True
    ignored = noise_detection_scores(scores, truth, ignore=ignore)
    assert ignored["precision"] == 1.0 and ignored["prevalence"] == pytest.approx(3 / 8)


def test_noise_scores_single_class_truth_gives_nan_without_error():
    scores = np.linspace(0, 1, 16).reshape(4, 4)
    for truth in (np.zeros((4, 4), bool), np.ones((4, 4), bool)):
        result = noise_detection_scores(scores, truth)
        assert math.isnan(result["auroc"]) and math.isnan(result["ap"])


def test_noise_scores_subsample_is_deterministic_and_close():
    rng = np.random.default_rng(2)
    truth = rng.random((200, 200)) < 0.1
    scores = np.clip(truth * 0.3 + rng.random((200, 200)), 0, 1)
    full = noise_detection_scores(scores, truth)
    sub_a = noise_detection_scores(scores, truth, max_pixels=10_000)
    sub_b = noise_detection_scores(scores, truth, max_pixels=10_000)
    assert sub_a == sub_b
    assert sub_a["auroc"] == pytest.approx(full["auroc"], abs=0.03)
    assert sub_a["f1"] == full["f1"]  # thresholded scores always use every pixel


# ---------------------------------------------------------------------------------------------
# boundary prior
# ---------------------------------------------------------------------------------------------
def test_boundary_prior_is_one_on_edge_and_decays():
    labels = np.zeros((21, 21), dtype=np.uint8)
    labels[:, 10:] = 1  # vertical boundary between columns 9 and 10
    prior = boundary_prior(labels, scale=3.0)
    assert prior.dtype == np.float32 and prior.shape == labels.shape
    np.testing.assert_allclose(prior[:, 9], 1.0)  # both sides of the boundary are edge
    np.testing.assert_allclose(prior[:, 10], 1.0)
    np.testing.assert_allclose(prior[:, 13], math.exp(-3 / 3), rtol=1e-6)  # d = 3
    np.testing.assert_allclose(prior[:, 4], math.exp(-5 / 3), rtol=1e-6)  # d = 5
    assert np.all(np.diff(prior[0, 10:]) <= 0)  # decays away from the edge
    assert prior.min() >= 0.0 and prior.max() <= 1.0
    # spacing: 2 units per column -> column 13 is 6 units from the edge
    aniso = boundary_prior(labels, scale=3.0, spacing=(1.0, 2.0))
    np.testing.assert_allclose(aniso[:, 13], math.exp(-6 / 3), rtol=1e-6)


def test_boundary_prior_3d_multiclass_and_uniform():
    labels = np.zeros((6, 8, 12), dtype=np.int64)
    labels[..., 4:8] = 1
    labels[..., 8:] = 2
    prior = boundary_prior(labels)
    for col in (3, 4, 7, 8):
        np.testing.assert_allclose(prior[..., col], 1.0)
    np.testing.assert_allclose(prior[..., 0], math.exp(-3 / 3), rtol=1e-6)
    np.testing.assert_array_equal(boundary_prior(np.ones((5, 5), int)), 0.0)


def test_boundary_prior_auroc_is_high_on_erode_dilate_noise():
    """Erode/dilate noise is a ring along the boundary, so a map that only knows where the
    edges are already ranks it well: AUROC alone flatters boundary noise, AP is the bar."""
    yy, xx = np.mgrid[:64, :64]
    clean = (np.hypot(yy - 32, xx - 32) <= 18).astype(np.uint8)
    dilated = (ndimage.distance_transform_edt(clean == 0) <= 3).astype(np.uint8)
    eroded = (ndimage.distance_transform_edt(clean) > 3).astype(np.uint8)
    for noisy in (dilated, eroded):
        scores = noise_detection_scores(boundary_prior(noisy), noisy != clean)
        assert scores["auroc"] > 0.85
        assert scores["ap"] < scores["auroc"] - 0.2  # the same map is far from a good AP


# ---------------------------------------------------------------------------------------------
# correction, gap, aggregation, evaluation
# ---------------------------------------------------------------------------------------------
def test_correction_dice():
    clean = BINARY_TRUTH
    result = correction_dice(corrected=clean, given=BINARY_PRED, clean=clean)
    assert result["dice_corrected"] == pytest.approx(1.0)
    assert result["dice_given"] == pytest.approx(0.8)
    assert result["improvement"] == pytest.approx(0.2)


def test_gap_recovered_by_hand():
    assert gap_recovered(0.8, 0.6, 0.9) == pytest.approx(2 / 3)
    assert gap_recovered(0.9, 0.6, 0.9) == pytest.approx(1.0)
    assert gap_recovered(0.5, 0.6, 0.9) == pytest.approx(-1 / 3)
    assert math.isnan(gap_recovered(0.8, 0.7, 0.7))
    assert math.isnan(gap_recovered(0.8, 0.7, 0.7 + 1e-8))


def test_aggregate_scores_nan_aware():
    runs = [
        {"auroc": 0.8, "ap": float("nan"), "name": "a", "dice": [1.0, 0.5]},
        {"auroc": 0.9, "ap": 0.4, "name": "b", "dice": [0.0, None]},
        {"auroc": 1.0, "ap": None, "dice": [0.5, 0.7]},
    ]
    agg = aggregate_scores(runs)
    assert "name" not in agg
    assert agg["auroc"]["mean"] == pytest.approx(0.9)
    assert agg["auroc"]["std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert agg["auroc"]["n"] == 3
    assert agg["ap"] == {"mean": pytest.approx(0.4), "std": 0.0, "n": 1}
    np.testing.assert_allclose(agg["dice"]["mean"], [0.5, 0.6])
    assert agg["dice"]["n"] == [3, 2]


def test_evaluate_segmentation_is_json_serialisable():
    square = _square().astype(np.int32)
    shifted = np.roll(square, 2, axis=1)
    preds = [MULTI_PRED, shifted]
    truths = [MULTI_TRUTH, square]
    result = evaluate_segmentation(preds, truths)
    json.dumps(result, allow_nan=False)  # nan/inf must have become None
    assert result["n_samples"] == 2 and result["n_classes"] == 3
    # class 1: (8/9 from the 4x4 maps + dice of the shifted squares) / 2; class 2 only once
    dice_squares = 2 * 20 * 18 / (400 + 400)
    assert result["dice_per_class"][1] == pytest.approx((8 / 9 + dice_squares) / 2)
    assert result["dice_per_class"][2] == pytest.approx(6 / 8)
    assert result["hd95_per_class"][0] is None
    assert result["mean_fg_dice"] == pytest.approx(((8 / 9 + 6 / 8) / 2 + dice_squares) / 2)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        evaluate_segmentation(preds, truths[:1])


def test_to_json_safe():
    out = to_json_safe({"a": np.float32(0.5), "b": np.array([1, np.nan, np.inf]), "c": np.int64(3)})
    assert out == {"a": 0.5, "b": [1.0, None, None], "c": 3}
