"""Tests for the npe2 reader and writers on real files (no viewer, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_noisyseg._reader import get_reader, looks_like_labels_path
from napari_noisyseg._writer import write_image_layer, write_labels_layer
from napari_noisyseg.core.io import ImageMeta, InputError, read_array, write_array, write_labels

AFFINE = np.array(
    [[0.5, 0.0, 0.0, 1.0], [0.0, 0.75, 0.0, 2.0], [0.0, 0.0, 2.0, 3.0], [0.0, 0.0, 0.0, 1.0]]
)


def mask(shape=(12, 14), top=2) -> np.ndarray:
    labels = (np.indices(shape).sum(axis=0) % (top + 1)).astype(np.uint8)
    labels[..., :2] = 0
    return labels


def read(path):
    reader = get_reader(str(path))
    assert reader is not None
    return reader(str(path))


def test_get_reader_accepts_supported_paths_only(tmp_path):
    assert get_reader(str(tmp_path / "a.tif")) is not None
    assert get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.png")]) is not None
    assert get_reader(str(tmp_path / "a.jpg")) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.csv")]) is None
    assert get_reader([]) is None
    assert get_reader(str(tmp_path)) is None


def test_labels_folder_png_is_labels_layer(tmp_path):
    labels = mask()
    path = write_labels(tmp_path / "labels" / "cell_01.png", labels)
    [(data, kwargs, layer_type)] = read(path)
    assert layer_type == "labels"
    assert np.issubdtype(data.dtype, np.integer)
    np.testing.assert_array_equal(data, labels)
    assert kwargs["name"] == "cell_01"
    assert kwargs["metadata"]["source_path"] == str(path)


def test_float_tif_is_image_layer(tmp_path):
    image = np.random.default_rng(0).random((12, 14)).astype(np.float32)
    path = write_array(tmp_path / "scan.tif", image)
    [(data, kwargs, layer_type)] = read(path)
    assert layer_type == "image"
    np.testing.assert_array_equal(data, image)
    assert "scale" not in kwargs


@pytest.mark.parametrize("name", ["a_mask.tif", "a_labels.npy", "a_seg.png", "masks/a.tif"])
def test_label_names(tmp_path, name):
    assert looks_like_labels_path(tmp_path / name)
    path = write_labels(tmp_path / name, mask())
    assert read(path)[0][2] == "labels"


def test_few_integer_values_is_labels_many_is_image(tmp_path):
    few = write_labels(tmp_path / "few.tif", mask(top=5))
    many = write_array(tmp_path / "many.tif", np.arange(12 * 14, dtype=np.uint16).reshape(12, 14))
    assert read(few)[0][2] == "labels"
    assert read(many)[0][2] == "image"


def test_labels_folder_with_invalid_labels_opens_as_image(tmp_path):
    # A float noise map saved in a "noisy" folder is still shown, as an image.
    values = np.random.default_rng(1).random((6, 7)).astype(np.float32)
    path = write_array(tmp_path / "noisy" / "noise.tif", values)
    [(data, _, layer_type)] = read(path)
    assert layer_type == "image"
    np.testing.assert_array_equal(data, values)


def test_rgba_mask_png_opens_as_image(tmp_path):
    import imageio.v3 as iio

    rgba = np.zeros((6, 7, 4), np.uint8)
    rgba[1:3, 1:3] = (1, 200, 30, 255)
    rgba[..., 3] = 255
    (tmp_path / "masks").mkdir()
    iio.imwrite(tmp_path / "masks" / "m.png", rgba)  # colour-coded, like BBBC039 masks/
    [(data, _, layer_type)] = read(tmp_path / "masks" / "m.png")
    assert layer_type == "image" and data.shape == (6, 7, 4)


def test_nifti_labels_scale_and_affine(tmp_path):
    labels = mask((4, 5, 6))
    path = write_labels(tmp_path / "masks" / "vol.nii.gz", labels, ImageMeta(affine=AFFINE))
    [(data, kwargs, layer_type)] = read(path)
    assert layer_type == "labels"
    np.testing.assert_array_equal(data, labels)  # file (x, y, z) order, not transposed
    assert kwargs["scale"] == (0.5, 0.75, 2.0)
    np.testing.assert_allclose(kwargs["metadata"]["affine"], AFFINE)


def test_nifti_image_not_rgb(tmp_path):
    volume = np.random.default_rng(2).random((5, 6, 3)).astype(np.float32)
    path = write_array(tmp_path / "t1.nii.gz", volume)
    [(data, kwargs, layer_type)] = read(path)
    assert layer_type == "image" and kwargs["rgb"] is False and data.shape == (5, 6, 3)


def test_reader_list_of_paths(tmp_path):
    a = write_array(tmp_path / "img.tif", np.random.default_rng(3).random((6, 6)))
    b = write_labels(tmp_path / "img_mask.png", mask((6, 6)))
    layers = get_reader([str(a), str(b)])([str(a), str(b)])
    assert [t for _, _, t in layers] == ["image", "labels"]


def test_reader_error_names_file(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"nope")
    with pytest.raises(InputError, match=r"broken\.tif"):
        read(tmp_path / "broken.tif")


@pytest.mark.parametrize("ext", [".tif", ".png", ".npy", ".nii.gz"])
def test_labels_writer_writes_what_it_is_given(tmp_path, ext):
    labels = mask(top=7).astype(np.int32)
    [out] = write_labels_layer(str(tmp_path / f"cleaned{ext}"), labels, {"metadata": {}})
    assert out == str(tmp_path / f"cleaned{ext}")
    np.testing.assert_array_equal(read_array(out)[0], labels)


def test_labels_writer_reuses_affine_for_nifti(tmp_path):
    labels = mask((4, 5, 6))
    attributes = {"metadata": {"affine": AFFINE}, "scale": (9.0, 9.0, 9.0)}
    [out] = write_labels_layer(str(tmp_path / "c.nii.gz"), labels, attributes)
    data, meta = read_array(out)
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_allclose(meta.affine, AFFINE)


def test_writer_uses_scale_without_affine(tmp_path):
    [out] = write_labels_layer(str(tmp_path / "s.nii"), mask((4, 5, 6)), {"scale": (2.0, 1.0, 0.5)})
    assert read_array(out)[1].spacing == (2.0, 1.0, 0.5)


def test_writer_overwrites_after_dialog_but_never_the_source(tmp_path):
    target = tmp_path / "out.tif"
    write_labels(target, mask())
    write_labels_layer(str(target), mask(top=4), {})
    np.testing.assert_array_equal(read_array(target)[0], mask(top=4))
    original = write_labels(tmp_path / "labels" / "orig.png", mask())
    before = original.read_bytes()
    [(data, kwargs, _)] = read(original)
    with pytest.raises(InputError, match=r"orig\.png.*read from.*new name"):
        write_labels_layer(str(original), data, kwargs)
    assert original.read_bytes() == before


def test_image_writer_keeps_dtype_and_adds_tif(tmp_path):
    noise = np.random.default_rng(4).random((3, 6, 7)).astype(np.float32)
    [out] = write_image_layer(str(tmp_path / "noise"), noise, {"metadata": {}})
    assert Path(out).name == "noise.tif"
    data, _ = read_array(out)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, noise)


def test_image_writer_multiscale_writes_level_zero(tmp_path):
    full = np.arange(64, dtype=np.uint16).reshape(8, 8)
    [out] = write_image_layer(str(tmp_path / "m.npy"), [full, full[::2, ::2]], {})
    np.testing.assert_array_equal(np.load(out), full)


def test_image_writer_png_float_refused(tmp_path):
    with pytest.raises(InputError, match=r"x\.png.*float"):
        write_image_layer(str(tmp_path / "x.png"), np.zeros((3, 3), np.float32), {})
    assert list(tmp_path.iterdir()) == []


def test_napari_layers_round_trip(tmp_path):
    layers = pytest.importorskip("napari.layers")
    labels = mask((4, 5, 6), top=3)
    path = write_labels(tmp_path / "masks" / "vol.nii.gz", labels, ImageMeta(affine=AFFINE))
    [layer_data] = read(path)
    layer = layers.Layer.create(*layer_data)
    assert isinstance(layer, layers.Labels)
    np.testing.assert_allclose(layer.scale, (0.5, 0.75, 2.0))
    data, attributes, layer_type = layer.as_layer_data_tuple()
    assert layer_type == "labels"
    [out] = write_labels_layer(str(tmp_path / "cleaned.nii.gz"), data, attributes)
    back, meta = read_array(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(meta.affine, AFFINE)
