"""The dataset model (core/dataset.py) and the patch sampler (core/patches.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_noisyseg.core.dataset import build_dataset, normalize_percentile
from napari_noisyseg.core.patches import (
    PatchSampler,
    PatchSpec,
    crop,
    effective_patch_size,
    patches_per_sample,
    valid_mask,
)


@pytest.fixture
def bbbc_crops(bbbc_sample):
    """Three 96 x 128 crops of BBBC039 images that contain nuclei, with their clean labels."""
    keep = [i for i in range(len(bbbc_sample["names"])) if bbbc_sample["clean"][i].any()][:3]
    images = [bbbc_sample["image"][i, 100:196, 200:328].copy() for i in keep]
    labels = [bbbc_sample["clean"][i, 100:196, 200:328].copy() for i in keep]
    return images, labels, [bbbc_sample["names"][i] for i in keep]


def test_normalize_percentile_maps_to_unit_range_and_handles_constant_images():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, (64, 64)).astype(np.float64)
    out = normalize_percentile(image)
    assert out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.mean(out == 1.0) == pytest.approx(0.002, abs=0.002)  # above the 99.8th percentile
    constant = normalize_percentile(np.full((8, 8), 7.0))
    assert constant.dtype == np.float32 and not constant.any()


def test_2d_images_one_sample_each(bbbc_crops):
    images, labels, names = bbbc_crops
    dataset = build_dataset(images, labels, names)
    assert len(dataset) == 3 and dataset.in_channels == 1 and dataset.n_classes == 2
    for sample, image, label, name in zip(dataset.samples, images, labels, names):
        assert sample.image.shape == (1, 96, 128) and sample.image.dtype == np.float32
        assert sample.labels.shape == (96, 128) and sample.labels.dtype == np.int64
        np.testing.assert_array_equal(sample.labels, label)
        np.testing.assert_allclose(sample.image[0], normalize_percentile(image))
        assert sample.name == name and sample.position == ()
        assert sample.trust.shape == sample.ignore.shape == (96, 128)
        assert not sample.trust.any() and not sample.ignore.any()
    assert [s.mode for s in dataset.sources] == ["2d"] * 3
    assert [s.sample_indices for s in dataset.sources] == [[0], [1], [2]]


def test_stack_is_normalised_per_slice_and_volume_per_volume():
    rng = np.random.default_rng(1)
    # Slice 0 is dim, slice 1 bright: per-slice normalisation stretches both to 0..1,
    # per-volume normalisation keeps slice 0 dim.
    volume = np.stack([rng.uniform(0, 10, (32, 40)), rng.uniform(100, 1000, (32, 40))]).astype(np.float32)
    labels = np.zeros((2, 32, 40), np.int32)
    labels[:, 8:20, 10:30] = 1
    stack = build_dataset([volume], [labels], ["v"], modes="stack", intensity_floor=0.0)
    assert len(stack) == 2 and stack.sources[0].mode == "stack"
    for z, sample in enumerate(stack.samples):
        assert sample.position == (z,) and sample.name == f"v[{z}]"
        assert sample.image.shape == (1, 32, 40)
        assert sample.image.max() == pytest.approx(1.0) and sample.image.min() == pytest.approx(0.0)
        np.testing.assert_allclose(sample.image[0], normalize_percentile(volume[z]))
    whole = build_dataset([volume], [labels], ["v"])  # auto: 3D -> volume
    assert whole.sources[0].mode == "volume" and len(whole) == 2
    expected = normalize_percentile(volume)
    for z, sample in enumerate(whole.samples):
        np.testing.assert_allclose(sample.image[0], expected[z])
    assert whole.samples[0].image.max() < 0.05  # the dim slice stays dim
    np.testing.assert_array_equal(whole.samples[1].labels, labels[1])


def test_intensity_floor_keeps_an_empty_field_dark():
    rng = np.random.default_rng(3)
    # Three slices with bright objects on a dim background, one with background noise only.
    slices = []
    for z in range(4):
        image = rng.normal(130, 5, (48, 48))
        if z != 3:
            image[10:30, 10:30] += 900
        slices.append(image.astype(np.float32))
    labels = np.zeros((4, 48, 48), np.int32)
    labels[:3, 10:30, 10:30] = 1
    dataset = build_dataset([np.stack(slices)], [labels], ["v"], modes="stack")
    assert dataset.intensity_floor > 100  # a quarter of the typical span (~900)
    # Without the floor the noise-only slice would be stretched to 0..1.
    assert normalize_percentile(slices[3]).max() == pytest.approx(1.0)
    assert dataset.samples[3].image.max() < 0.2
    for z in range(3):
        assert dataset.samples[z].image.max() == pytest.approx(1.0)
    # Predicting on the empty slice alone reuses the training floor.
    alone = build_dataset([slices[3]], [labels[3]], intensity_floor=dataset.intensity_floor)
    np.testing.assert_allclose(alone.samples[0].image, dataset.samples[3].image)


def test_rgb_channels_last_becomes_three_channels():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((40, 48, 1), 255, np.uint8)], axis=-1)
    labels = np.zeros((40, 48), np.int32)
    labels[5:15, 5:25] = 1
    for image in (rgb, rgba):
        dataset = build_dataset([image], [labels])
        assert dataset.in_channels == 3
        sample = dataset.samples[0]
        assert sample.image.shape == (3, 40, 48)
        np.testing.assert_allclose(sample.image, normalize_percentile(np.moveaxis(rgb, -1, 0)))
    volume = rng.integers(0, 255, (4, 40, 48, 3)).astype(np.uint8)
    dataset = build_dataset([volume], [np.zeros((4, 40, 48), np.int32)])
    assert dataset.in_channels == 3 and len(dataset) == 4
    assert dataset.samples[2].image.shape == (3, 40, 48)
    with pytest.raises(ValueError, match="channels"):
        build_dataset([rgb, rgb[..., 0]], [labels, labels], ["colour", "grey"])


def test_reassemble_round_trip_mixed_sources():
    rng = np.random.default_rng(3)
    image2d = rng.random((30, 20))
    labels2d = rng.integers(0, 3, (30, 20))
    volume = rng.random((5, 16, 24))
    labels3d = rng.integers(0, 2, (5, 16, 24))
    dataset = build_dataset([image2d, volume], [labels2d, labels3d], ["flat", "vol"])
    assert len(dataset) == 6 and dataset.n_classes == 3
    back = dataset.reassemble([s.labels for s in dataset.samples])
    np.testing.assert_array_equal(back[0], labels2d)
    np.testing.assert_array_equal(back[1], labels3d)
    assert [s.labels_shape for s in dataset.sources] == [(30, 20), (5, 16, 24)]
    # Any per-sample map goes back to the source's layout.
    maps = dataset.reassemble([np.full(s.shape, i, np.float32) for i, s in enumerate(dataset.samples)])
    assert maps[0].shape == (30, 20) and np.all(maps[0] == 0)
    assert maps[1].shape == (5, 16, 24) and list(maps[1][:, 0, 0]) == [1, 2, 3, 4, 5]
    sub = dataset.subset([0, 3, 4])
    assert len(sub) == 3 and [s.sample_indices for s in sub.sources] == [[0], [1, 2]]
    np.testing.assert_array_equal(sub.samples[1].labels, labels3d[2])


def test_n_classes_inference_and_override():
    image = np.random.default_rng(4).random((16, 16))
    assert build_dataset([image], [np.zeros((16, 16), int)]).n_classes == 2  # at least 2
    labels = np.zeros((16, 16), int)
    labels[0, 0] = 4
    assert build_dataset([image], [labels]).n_classes == 5
    assert build_dataset([image], [labels], n_classes=7).n_classes == 7
    with pytest.raises(ValueError, match="class 4"):
        build_dataset([image], [labels], n_classes=3)


def test_trust_and_ignore_are_carried_per_slice():
    rng = np.random.default_rng(5)
    volume = rng.random((3, 12, 14))
    labels = rng.integers(0, 2, (3, 12, 14))
    trust = np.zeros((3, 12, 14), bool)
    trust[1, 2:5, 3:7] = True
    ignore = np.zeros((3, 12, 14), bool)
    ignore[2, :, :4] = True
    dataset = build_dataset([volume], [labels], trust=[trust], ignore=[ignore])
    for z, sample in enumerate(dataset.samples):
        np.testing.assert_array_equal(sample.trust, trust[z])
        np.testing.assert_array_equal(sample.ignore, ignore[z])
    # A private copy: changing the caller's mask later does not change the dataset.
    trust[:] = True
    assert dataset.samples[1].trust.sum() == 12
    with pytest.raises(ValueError, match="trust mask shape"):
        build_dataset([volume], [labels], ["vol"], trust=[np.zeros((12, 14), bool)])
    retrusted = dataset.with_trust([np.ones((12, 14), bool)] * 3)
    assert all(s.trust.all() for s in retrusted.samples)
    assert not dataset.samples[0].trust.any()


def test_given_labels_read_only_and_caller_arrays_untouched():
    rng = np.random.default_rng(6)
    image = (rng.random((20, 20)) * 1000).astype(np.uint16)
    labels = rng.integers(0, 2, (20, 20)).astype(np.uint8)
    volume = rng.random((2, 20, 20)).astype(np.float32)
    labels3d = rng.integers(0, 2, (2, 20, 20)).astype(np.int32)
    before = [a.copy() for a in (image, labels, volume, labels3d)]
    dataset = build_dataset([image, volume], [labels, labels3d])
    for sample in dataset.samples:
        assert not sample.labels.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            sample.labels[0, 0] = 1
        sample.image[:] = -1.0  # a method scribbling on its sample never reaches the caller
    for original, now in zip(before, (image, labels, volume, labels3d)):
        np.testing.assert_array_equal(original, now)
        assert now.flags.writeable
    assert not np.shares_memory(dataset.samples[0].labels, labels)


def test_bad_inputs_are_refused_with_messages():
    image = np.zeros((8, 8))
    with pytest.raises(ValueError, match="2 images but 1 label"):
        build_dataset([image, image], [np.zeros((8, 8), int)])
    with pytest.raises(ValueError, match="no image/label pairs"):
        build_dataset([], [])
    with pytest.raises(ValueError, match="does not match labels shape"):
        build_dataset([np.zeros((8, 9))], [np.zeros((8, 8), int)])
    with pytest.raises(ValueError, match="needs 3D labels"):
        build_dataset([image], [np.zeros((8, 8), int)], modes="volume")
    with pytest.raises(ValueError, match="mode must be one of"):
        build_dataset([image], [np.zeros((8, 8), int)], modes="4d")


# ----------------------------------------------------------------------------- patches


def test_crop_pads_samples_smaller_than_the_patch():
    array = np.arange(1, 13, dtype=np.int64).reshape(3, 4)
    spec = PatchSpec(0, top=-2, left=-1, size=8)
    out = crop(array, spec, pad_value=-7)
    assert out.shape == (8, 8)
    np.testing.assert_array_equal(out[2:5, 1:5], array)
    assert (out == -7).sum() == 64 - 12
    mask = valid_mask((3, 4), spec)
    assert mask.dtype == np.float32 and mask.sum() == 12 and np.all(mask[2:5, 1:5] == 1)
    # Leading axes (channels, soft targets) are carried along.
    stacked = crop(np.stack([array, 10 * array]), spec, 0)
    assert stacked.shape == (2, 8, 8)
    np.testing.assert_array_equal(stacked[1, 2:5, 1:5], 10 * array)


def test_small_samples_always_fit_inside_the_patch():
    sampler = PatchSampler([(20, 30)], patch_size=32, batch_size=4, seed=0)
    for batch in sampler.epoch() * 50:
        for spec in batch:
            assert 20 - 32 <= spec.top <= 0 and 30 - 32 <= spec.left <= 0
            assert valid_mask((20, 30), spec).sum() == 20 * 30
    assert effective_patch_size([(20, 30), (18, 50)], 256, 16) == 64
    assert effective_patch_size([(300, 400)], 256, 16) == 256
    assert effective_patch_size([(40, 33)], 256, 8) == 40


@pytest.mark.parametrize("flip_y,flip_x,rot90", [(True, False, 0), (False, True, 1), (True, True, 3), (False, False, 2)])
def test_augmentation_is_identical_for_image_and_labels(flip_y, flip_x, rot90):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, (10, 12))
    image = np.stack([labels * 10.0, labels * -1.0]).astype(np.float32)  # image encodes the labels
    spec = PatchSpec(0, top=-1, left=1, size=11, flip_y=flip_y, flip_x=flip_x, rot90=rot90)
    cropped_image = crop(image, spec, 0.0)
    cropped_labels = crop(labels, spec, 0)
    np.testing.assert_array_equal(cropped_image[0], cropped_labels * 10.0)
    np.testing.assert_array_equal(cropped_image[1], cropped_labels * -1.0)
    # Against a hand-made reference: pad, crop, then flip and rotate.
    padded = np.zeros((12, 12), labels.dtype)
    padded[1:11, :11] = labels[:, 1:12]
    reference = padded[:11, :11]
    if flip_y:
        reference = reference[::-1]
    if flip_x:
        reference = reference[:, ::-1]
    np.testing.assert_array_equal(cropped_labels, np.rot90(reference, rot90))


def test_every_epoch_covers_every_sample_and_is_seeded():
    shapes = [(64, 64), (20, 20), (130, 70), (64, 200)]
    sampler = PatchSampler(shapes, patch_size=64, batch_size=3, seed=11)
    expected = sorted(s for s, shape in enumerate(shapes) for _ in range(patches_per_sample(shape, 64)))
    assert patches_per_sample((20, 20), 64) == 1 and patches_per_sample((64, 200), 64) == 3
    augmentations = set()
    for _ in range(5):
        batches = sampler.epoch()
        assert all(1 <= len(batch) <= 3 for batch in batches)
        drawn = sorted(spec.sample for batch in batches for spec in batch)
        assert drawn == expected
        augmentations |= {(s.flip_y, s.flip_x, s.rot90) for batch in batches for s in batch}
    assert len(augmentations) > 4  # flips and rotations are actually drawn
    subset = sorted(spec.sample for batch in sampler.epoch([1, 3]) for spec in batch)
    assert subset == [1, 3, 3, 3]
    first = PatchSampler(shapes, 64, 3, seed=5).epoch()
    again = PatchSampler(shapes, 64, 3, seed=5).epoch()
    other = PatchSampler(shapes, 64, 3, seed=6).epoch()
    assert first == again and first != other
    plain = PatchSampler(shapes, 64, 3, seed=5, augment=False).epoch()
    assert all(not (s.flip_y or s.flip_x or s.rot90) for batch in plain for s in batch)
