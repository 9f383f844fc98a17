"""The model_noise protocol (core/model_noise.py): labels from a weak network's predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_noisyseg.core import io
from napari_noisyseg.core.model_noise import (
    DEFAULTS,
    STEPS_AT_S1,
    _choose_training_sources,
    resolve_model_noise_params,
    simulate_model_noise,
)
from napari_noisyseg.core.noise import PROTOCOLS, describe_protocols, simulate_noise

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
FAST = dict(patch_size=64, depth=2, width=8, batch_size=4)


@pytest.fixture(scope="module")
def crops():
    """Four 128 x 128 BBBC039 crops with nuclei: images (uint16) and clean labels (uint8)."""
    images, labels = [], []
    for image_path in io.list_files(SAMPLE / "bbbc039" / "images"):
        stem = io.split_stem(image_path)[0]
        clean, _ = io.read_array(SAMPLE / "bbbc039" / "labels_clean" / f"{stem}.png")
        if not clean.any():
            continue
        image, _ = io.read_array(image_path)
        for top, left in ((100, 100), (300, 400)):
            if clean[top : top + 128, left : left + 128].any() and len(images) < 4:
                images.append(image[top : top + 128, left : left + 128].copy())
                labels.append(clean[top : top + 128, left : left + 128].copy())
    assert len(images) == 4
    return images, labels


def _boundary_band(labels: np.ndarray, width: int = 3) -> np.ndarray:
    foreground = labels > 0
    return ndimage.binary_dilation(foreground, iterations=width) & ~ndimage.binary_erosion(
        foreground, iterations=width
    )


def test_registered_stub_asks_for_images():
    assert "model_noise" in describe_protocols()
    assert "--images" in describe_protocols()["model_noise"]
    labels = np.zeros((16, 16), np.uint8)
    labels[4:8, 4:8] = 1
    with pytest.raises(ValueError, match="needs them.*--images.*simulate_model_noise"):
        simulate_noise([labels], "model_noise")
    with pytest.raises(ValueError, match="--images"):
        simulate_noise([labels], "missing+model_noise", fraction=0.0)
    with pytest.raises(ValueError, match="--images"):
        PROTOCOLS["model_noise"](labels, 0)


def test_severity_sets_the_training_budget():
    assert resolve_model_noise_params(1.0)["steps"] == STEPS_AT_S1 == 20
    assert resolve_model_noise_params(2.0)["steps"] == 10
    assert resolve_model_noise_params(0.5)["steps"] == 40
    assert resolve_model_noise_params(100.0)["steps"] == 1
    assert resolve_model_noise_params(1.0, steps=7)["steps"] == 7
    by_epochs = resolve_model_noise_params(1.0, epochs=3)
    assert by_epochs["epochs"] == 3 and by_epochs["steps"] is None
    resolved = resolve_model_noise_params(1.0)
    assert set(resolved) == set(DEFAULTS) and resolved["device"] == "cpu" and resolved["precision"] == "fp32"
    json.dumps(resolved)
    with pytest.raises(ValueError, match="steps or epochs, not both"):
        resolve_model_noise_params(1.0, steps=3, epochs=2)
    with pytest.raises(ValueError, match="no parameter.*radius.*accepts.*n_train_images"):
        resolve_model_noise_params(1.0, radius=3)
    with pytest.raises(ValueError, match="n_train_images must be a positive integer"):
        resolve_model_noise_params(1.0, n_train_images=0)
    with pytest.raises(ValueError, match="severity"):
        resolve_model_noise_params(0.0)


@pytest.fixture(scope="module")
def moderate_and_weak(crops):
    """Half of the crops corrupted by a model trained 40 steps (S = 0.5) and one trained 10 (S = 2)."""
    images, labels = crops
    before = [a.copy() for a in images + labels]
    moderate = simulate_model_noise(images, labels, fraction=0.5, severity=0.5, seed=0,
                                    names=["a", "b", "c", "d"], **FAST)
    weak = simulate_model_noise(images, labels, fraction=0.5, severity=2.0, seed=0, **FAST)
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, images + labels))
    return moderate, weak, unchanged


def test_weak_model_labels_replace_the_chosen_samples(crops, moderate_and_weak):
    _, labels = crops
    run, _, unchanged = moderate_and_weak
    assert unchanged  # the caller's images and labels are never modified
    assert sum(run.corrupted) == 2
    chosen = run.params["corrupted_indices"]
    assert chosen == [i for i, c in enumerate(run.corrupted) if c]
    # The weak model trained on the two images that are not corrupted.
    assert sorted(run.params["train_indices"]) == sorted(set(range(4)) - set(chosen))
    assert run.params["train_names"] == [["a", "b", "c", "d"][i] for i in run.params["train_indices"]]
    assert run.params["steps"][0]["params"]["steps"] == 40
    assert run.params["training"]["steps_done"] == 40 and run.params["training"]["final_loss"] > 0
    assert run.params["training"]["numeric_path"] == "cpu-fp32"
    json.dumps(run.to_json_dict())
    for index, (clean, noisy, mask) in enumerate(zip(labels, run.noisy, run.noise_masks)):
        assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
        np.testing.assert_array_equal(mask, noisy != clean)
        if index in chosen:
            assert 0.001 < mask.mean() < 0.25  # a weak model, not a random one
            assert set(np.unique(noisy)) <= {0, 1}
            # Its errors follow the objects: mostly on a 3-px band around the true boundaries.
            band = _boundary_band(clean)
            assert (mask & band).sum() / mask.sum() > 0.5 and band.mean() < 0.5
        else:
            np.testing.assert_array_equal(noisy, clean)
            assert noisy is not clean


def test_less_training_means_more_noise(moderate_and_weak):
    moderate, weak, _ = moderate_and_weak
    assert weak.params["training"]["steps_done"] == 10
    assert weak.params["corrupted_indices"] == moderate.params["corrupted_indices"]
    chosen = moderate.params["corrupted_indices"]
    noisier = np.mean([weak.noise_masks[i].mean() for i in chosen])
    cleaner = np.mean([moderate.noise_masks[i].mean() for i in chosen])
    assert noisier > 1.5 * cleaner


def test_training_images_fall_back_to_corrupted_ones():
    labels = [np.zeros((16, 16), np.uint8) for _ in range(3)]
    labels[0][2:6, 2:6] = 1
    labels[2][8:12, 8:12] = 1
    corrupted = np.array([True, False, True])
    # Uncorrupted images with foreground first; here none, so corrupted ones with foreground.
    assert _choose_training_sources(labels, corrupted, 2, seed=0) == [0, 2]
    assert _choose_training_sources(labels, np.array([False, False, True]), 1, seed=0) == [0]
    assert len(_choose_training_sources(labels, corrupted, 5, seed=0)) == 3


def test_reproducible_by_seed(crops):
    images, labels = crops
    images, labels = images[:3], labels[:3]
    first = simulate_model_noise(images, labels, fraction=0.67, seed=5, steps=4, **FAST)
    again = simulate_model_noise(images, labels, fraction=0.67, seed=5, steps=4, **FAST)
    other = simulate_model_noise(images, labels, fraction=0.67, seed=6, steps=4, **FAST)
    assert first.params == again.params
    for a, b in zip(first.noisy, again.noisy):
        np.testing.assert_array_equal(a, b)
    assert first.params["corrupted_indices"] != other.params["corrupted_indices"] or any(
        not np.array_equal(a, c) for a, c in zip(first.noisy, other.noisy)
    )
    # The same samples as every other protocol picks with this seed.
    morph = simulate_noise(labels, "missing", fraction=0.67, seed=5)
    assert morph.params["corrupted_indices"] == first.params["corrupted_indices"]


def test_3d_volumes_are_predicted_slice_wise():
    images, labels = [], []
    for stem in ("hippocampus_148", "hippocampus_165"):
        image, _ = io.read_array(SAMPLE / "hippocampus" / "images" / f"{stem}.nii.gz")
        label, _ = io.read_array(SAMPLE / "hippocampus" / "labels_clean" / f"{stem}.nii.gz")
        images.append(image[10:20])
        labels.append(label[10:20])
    run = simulate_model_noise(images, labels, fraction=0.5, seed=0, steps=4, n_train_images=1, **FAST)
    (chosen,) = run.params["corrupted_indices"]
    assert run.params["train_indices"] == [1 - chosen]
    assert [n.shape for n in run.noisy] == [lab.shape for lab in labels]
    assert run.noise_masks[chosen].any() and not run.noise_masks[1 - chosen].any()
    assert set(np.unique(run.noisy[chosen])) <= {0, 1, 2}
    assert run.params["training"]["n_classes"] == 3


def test_nothing_to_corrupt_trains_nothing(crops):
    images, labels = crops
    run = simulate_model_noise(images[:2], labels[:2], fraction=0.0, seed=0)
    assert run.corrupted == [False, False] and run.params["training"] == {}
    assert not any(m.any() for m in run.noise_masks)


def test_bad_inputs_are_refused(crops):
    images, labels = crops
    with pytest.raises(ValueError, match="2 images but 1 label"):
        simulate_model_noise(images[:2], labels[:1])
    with pytest.raises(ValueError, match="labels b.*\\(128, 100\\)"):
        simulate_model_noise(images[:2], [labels[0], labels[1][:, :100]], names=["a", "b"])
    with pytest.raises(ValueError, match="fraction"):
        simulate_model_noise(images[:1], labels[:1], fraction=1.5)
    with pytest.raises(ValueError, match="seed"):
        simulate_model_noise(images[:1], labels[:1], seed=-1)
    with pytest.raises(TypeError, match="lists"):
        simulate_model_noise(images[0], labels[0])
