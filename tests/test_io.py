"""Tests for napari_noisyseg.core.io on real files in tmp_path (no mocks, no display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_noisyseg.core.io import (
    ImageMeta,
    InputError,
    atomic_write_text,
    list_files,
    pair_files,
    read_array,
    read_image,
    read_labels,
    split_stem,
    validate_image,
    validate_labels,
    validate_pair,
    write_array,
    write_float_map,
    write_labels,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
AFFINE = np.array(
    [[0.5, 0.0, 0.0, -10.25], [0.0, 0.75, 0.0, 3.5], [0.0, 0.0, 2.0, 7.0], [0.0, 0.0, 0.0, 1.0]]
)


def labels_2d(top: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, top + 1, size=(17, 23)).astype(np.int32)
    labels[:4] = 0  # background, whatever the value range
    return labels


def labels_3d(top: int = 3) -> np.ndarray:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, top + 1, size=(5, 17, 23)).astype(np.int32)
    labels[:, :4] = 0  # background, whatever the value range
    return labels


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.nii.gz", ("a", ".nii.gz")),
        ("x/img_01.tif", ("img_01", ".tif")),
        ("a.b.tif", ("a.b", ".tif")),
        ("IMG.TIFF", ("IMG", ".tiff")),
        ("v.nii", ("v", ".nii")),
        ("m.npy", ("m", ".npy")),
        ("notes.txt", ("notes", ".txt")),
    ],
)
def test_split_stem(name, expected):
    assert split_stem(name) == expected


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".tif", ".png", ".npy", ".nii.gz"])
@pytest.mark.parametrize("top", [3, 300])
def test_labels_2d_round_trip(tmp_path, ext, top):
    labels = labels_2d(top)
    out = write_labels(tmp_path / f"l{ext}", labels)
    back, meta = read_labels(out)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    assert meta.extension == ext


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".npy", ".nii.gz", ".nii"])
def test_labels_3d_round_trip(tmp_path, ext):
    labels = labels_3d(70000 if ext != ".nii.gz" else 40000)
    meta = ImageMeta(affine=AFFINE)
    out = write_labels(tmp_path / f"vol{ext}", labels, meta)
    back, back_meta = read_labels(out)
    np.testing.assert_array_equal(back, labels)
    if ext.startswith(".nii"):
        np.testing.assert_allclose(back_meta.affine, AFFINE, atol=1e-6)
        assert back_meta.spacing == (0.5, 0.75, 2.0)


def test_labels_dtype_on_disk(tmp_path):
    small, big = labels_2d(3), labels_2d(300)
    assert read_array(write_labels(tmp_path / "s.png", small))[0].dtype == np.uint8
    assert read_array(write_labels(tmp_path / "b.png", big))[0].dtype == np.uint16
    assert read_array(write_labels(tmp_path / "s.tif", small))[0].dtype == np.uint8
    assert read_array(write_labels(tmp_path / "b.tif", big))[0].dtype == np.int32
    assert read_array(write_labels(tmp_path / "b.npy", big))[0].dtype == np.int32
    assert read_array(write_labels(tmp_path / "s.nii.gz", small))[0].dtype == np.uint8
    assert read_array(write_labels(tmp_path / "b.nii.gz", big))[0].dtype == np.int16
    assert read_array(write_labels(tmp_path / "h.nii.gz", labels_2d(40000)))[0].dtype == np.int32


@pytest.mark.parametrize("ext", [".tif", ".npy", ".nii.gz"])
def test_float_map_round_trip(tmp_path, ext):
    values = np.random.default_rng(2).random((4, 9, 11))
    out = write_float_map(tmp_path / f"noise{ext}", values, ImageMeta(affine=AFFINE))
    back, meta = read_array(out)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, values.astype(np.float32))
    image, _ = read_image(out)
    assert image.dtype == np.float32


def test_nifti_without_meta_uses_spacing_or_identity(tmp_path):
    out = write_array(tmp_path / "a.nii.gz", labels_3d().astype(np.uint8))
    np.testing.assert_array_equal(read_array(out)[1].affine, np.eye(4))
    out = write_array(
        tmp_path / "b.nii.gz", labels_3d().astype(np.uint8), ImageMeta(spacing=(2.0, 1.0, 0.5))
    )
    assert read_array(out)[1].spacing == (2.0, 1.0, 0.5)


def test_nifti_float_whole_number_labels_are_cast(tmp_path):
    # Some hippocampus masks are stored as float32: read_labels must give integers.
    labels = labels_3d(2)
    out = write_array(tmp_path / "m.nii.gz", labels.astype(np.float32), ImageMeta(affine=AFFINE))
    assert read_array(out)[0].dtype == np.float32
    back, meta = read_labels(out)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)
    assert meta.source_dtype == "float32"


def test_png_rgba_read_channels_last_and_grey_rgb_collapsed(tmp_path):
    import imageio.v3 as iio

    rgba = np.zeros((6, 7, 4), np.uint8)
    rgba[..., 0] = 1
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert read_array(tmp_path / "rgba.png")[0].shape == (6, 7, 4)
    grey = labels_2d(3).astype(np.uint8)
    iio.imwrite(tmp_path / "grey_as_rgb.png", np.stack([grey] * 3, axis=-1))
    back, _ = read_labels(tmp_path / "grey_as_rgb.png")
    np.testing.assert_array_equal(back, grey)


def test_palette_png_keeps_indices(tmp_path):
    from PIL import Image

    labels = labels_2d(3).astype(np.uint8)
    img = Image.fromarray(labels, mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    img.save(tmp_path / "pal.png")
    back, _ = read_labels(tmp_path / "pal.png")
    np.testing.assert_array_equal(back, labels)


def test_read_image_casts_to_float32(tmp_path):
    image = (np.arange(6 * 8).reshape(6, 8) * 1000).astype(np.uint16)
    out = write_array(tmp_path / "im.tif", image)
    back, meta = read_image(out)
    assert back.dtype == np.float32 and meta.source_dtype == "uint16"
    np.testing.assert_array_equal(back, image.astype(np.float32))


def test_rgb_tif_round_trip(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 255, (6, 8, 3)).astype(np.uint8)
    back, _ = read_image(write_array(tmp_path / "rgb.tif", rgb))
    assert back.shape == (6, 8, 3)
    np.testing.assert_array_equal(back, rgb)


# ----------------------------------------------------------------------------- bad input


def test_png_refuses_3d(tmp_path):
    with pytest.raises(InputError, match=r"stack\.png.*PNG holds only 2D.*3D \(5, 17, 23\)"):
        write_labels(tmp_path / "stack.png", labels_3d())
    assert list(tmp_path.iterdir()) == []


def test_png_refuses_float(tmp_path):
    with pytest.raises(InputError, match=r"noise\.png.*PNG cannot hold float"):
        write_float_map(tmp_path / "noise.png", np.zeros((4, 4)))
    assert list(tmp_path.iterdir()) == []


def test_unsupported_extension(tmp_path):
    with pytest.raises(InputError, match=r"x\.jpg.*unsupported file type '\.jpg'"):
        write_array(tmp_path / "x.jpg", np.zeros((2, 2)))
    (tmp_path / "y.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match=r"y\.bmp.*unsupported"):
        read_array(tmp_path / "y.bmp")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match=r"gone\.tif.*does not exist"):
        read_array(tmp_path / "gone.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match=r"could not read .*bad\.tif"):
        read_image(tmp_path / "bad.tif")


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(InputError) as err:
        validate_pair(np.zeros((10, 12)), labels_2d(), "cells.tif", "cells_mask.png")
    msg = str(err.value)
    assert "shape mismatch" in msg and "(10, 12)" in msg and "(17, 23)" in msg
    assert "cells.tif" in msg and "cells_mask.png" in msg


def test_2d_labels_on_3d_image():
    image = np.zeros((30, 520, 696), np.float32)
    labels = np.zeros((520, 696), np.int32)
    labels[0, 0] = 1
    with pytest.raises(InputError) as err:
        validate_pair(image, labels, "stack.tif", "mask.png")
    msg = str(err.value)
    assert "labels 'mask.png' are 2D (520, 696) but image 'stack.tif' is 3D (30, 520, 696)" in msg
    assert "one label slice per image slice" in msg


def test_transposed_axes_hint():
    with pytest.raises(InputError, match=r"transposed"):
        validate_pair(np.zeros((5, 17, 23)), labels_3d().transpose(2, 1, 0), "img.nii.gz", "l.tif")


def test_channels_first_hint():
    with pytest.raises(InputError, match=r"channels-first"):
        validate_pair(np.zeros((3, 17, 23)), labels_2d(), "rgb.tif", "l.png")


def test_pair_accepts_grey_and_colour():
    labels = labels_2d()
    image, out = validate_pair(np.ones((17, 23), np.uint16), labels, "i", "l")
    assert image.dtype == np.float32 and out.dtype == np.int32
    validate_pair(np.ones((17, 23, 3), np.uint8), labels, "i", "l")
    validate_pair(np.ones((5, 17, 23, 4), np.uint8), labels_3d(), "i", "l")


def test_non_integer_labels(tmp_path):
    labels = np.zeros((8, 8), np.float32)
    labels[2, 3] = 0.5
    path = write_array(tmp_path / "prob.tif", labels)
    with pytest.raises(InputError, match=r"prob\.tif.*1 non-integer values \(e\.g\. 0\.5\)"):
        read_labels(path)


def test_negative_labels(tmp_path):
    labels = labels_2d()
    labels[0, :3] = -1
    path = write_array(tmp_path / "neg.npy", labels)
    with pytest.raises(InputError, match=r"neg\.npy.*3 negative values \(minimum -1\)"):
        read_labels(path)


def test_nan_labels():
    labels = np.ones((4, 4))
    labels[0, 0] = np.nan
    with pytest.raises(InputError, match=r"'layer one'.*1 NaN/inf"):
        validate_labels(labels, "layer one")


@pytest.mark.parametrize("bad, word", [(np.nan, "2 NaN and 0 inf"), (np.inf, "0 NaN and 2 inf")])
def test_nan_inf_image(tmp_path, bad, word):
    image = np.ones((6, 6), np.float32)
    image[1, 1] = image[2, 2] = bad
    path = write_array(tmp_path / "scan.tif", image)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert "scan.tif" in str(err.value) and f"{word} pixel values (of 36)" in str(err.value)


def test_float64_overflow_is_inf():
    with pytest.raises(InputError, match=r"1 inf"):
        validate_image(np.array([[1e300, 1.0]]), "huge")


def test_rgb_label_image(tmp_path):
    import imageio.v3 as iio

    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)
    rgb[4:, 4:] = (0, 255, 0)
    iio.imwrite(tmp_path / "colour_mask.png", rgb)
    with pytest.raises(InputError) as err:
        read_labels(tmp_path / "colour_mask.png")
    msg = str(err.value)
    assert "colour_mask.png" in msg and "RGB colour image" in msg and "single-channel" in msg


def test_all_foreground_refused_unless_allowed(tmp_path):
    labels = np.ones((5, 5), np.uint8)
    path = write_labels(tmp_path / "full.png", labels)
    with pytest.raises(InputError, match=r"full\.png.*all foreground"):
        read_labels(path)
    with pytest.raises(InputError, match=r"'lbl'.*all foreground.*allow_full=True"):
        validate_pair(np.zeros((5, 5)), labels, "img", "lbl")
    validate_pair(np.zeros((5, 5)), labels, "img", "lbl", allow_full=True)


def test_empty_labels_allowed_by_default():
    empty = np.zeros((5, 5), np.uint8)
    _, out = validate_pair(np.zeros((5, 5)), empty, "img", "lbl")
    assert not out.any()
    with pytest.raises(InputError, match=r"'lbl' are empty"):
        validate_pair(np.zeros((5, 5)), empty, "img", "lbl", allow_empty=False)


def test_wrong_dimensions_and_dtypes():
    with pytest.raises(InputError, match=r"'line' is 1D"):
        validate_image(np.zeros(5), "line")
    with pytest.raises(InputError, match=r"'l4' are 4D"):
        validate_labels(np.zeros((2, 2, 2, 2)), "l4")
    with pytest.raises(InputError, match=r"'txt'.*not real numbers"):
        validate_image(np.array([["a"]]), "txt")
    with pytest.raises(InputError, match=r"'none' have no pixels"):
        validate_labels(np.zeros((0, 4)), "none")


def test_bool_labels_become_int():
    out = validate_labels(np.eye(3, dtype=bool), "b")
    assert out.dtype == np.int32 and out.sum() == 3


# ----------------------------------------------------------------------------- folders


def _touch_pair(images: Path, labels: Path, stem: str, iext: str, lext: str) -> None:
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    write_array(images / f"{stem}{iext}", np.ones((4, 4), np.float32))
    write_labels(labels / f"{stem}{lext}", np.eye(4, dtype=np.uint8))


def test_pair_files_across_extensions(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _touch_pair(images, labels, "b", ".nii.gz", ".nii.gz")
    _touch_pair(images, labels, "a", ".tif", ".png")
    _touch_pair(images, labels, "c.x", ".npy", ".tiff")
    (images / "notes.txt").write_text("ignored")
    (labels / "._a.png").write_bytes(b"macOS resource fork, ignored")
    (labels / "sub").mkdir()
    pairs = pair_files(images, labels)
    assert [(s, i.name, l.name) for s, i, l in pairs] == [
        ("a", "a.tif", "a.png"),
        ("b", "b.nii.gz", "b.nii.gz"),
        ("c.x", "c.x.npy", "c.x.tiff"),
    ]
    assert [p.name for p in list_files(images)] == ["a.tif", "b.nii.gz", "c.x.npy"]


def test_pair_files_unmatched_stems(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _touch_pair(images, labels, "a", ".tif", ".png")
    write_array(images / "only_image.tif", np.ones((2, 2)))
    write_labels(labels / "only_label.png", np.eye(2, dtype=np.uint8))
    with pytest.raises(InputError) as err:
        pair_files(images, labels)
    msg = str(err.value)
    assert "1 image(s)" in msg and "have no label file" in msg and "only_image" in msg
    assert "1 label file(s)" in msg and "have no image" in msg and "only_label" in msg


def test_pair_files_lists_first_few(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _touch_pair(images, labels, "a", ".tif", ".png")
    for i in range(8):
        write_array(images / f"extra_{i}.npy", np.ones((2, 2)))
    with pytest.raises(InputError, match=r"8 image\(s\).*extra_0, .*extra_4 and 3 more"):
        pair_files(images, labels)


def test_pair_files_duplicate_stems(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _touch_pair(images, labels, "a", ".tif", ".png")
    write_labels(labels / "a.nii.gz", np.eye(4, dtype=np.uint8))
    with pytest.raises(InputError) as err:
        pair_files(images, labels)
    msg = str(err.value)
    assert "labels" in msg and "'a'" in msg and "a.nii.gz" in msg and "a.png" in msg
    assert "more than one file" in msg


def test_pair_files_missing_or_empty_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match=r"nope.*not an existing folder"):
        pair_files(tmp_path / "images", tmp_path / "nope")
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError, match=r"images.*holds no image files"):
        pair_files(tmp_path / "images", tmp_path / "labels")


# ----------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("ext", [".tif", ".png", ".npy", ".nii.gz"])
def test_no_overwrite_without_flag(tmp_path, ext):
    path = tmp_path / f"keep{ext}"
    write_labels(path, labels_2d())
    before = path.read_bytes()
    with pytest.raises(FileExistsError) as err:
        write_labels(path, labels_2d(5))
    assert str(path) in str(err.value) and "overwrite=True" in str(err.value)
    assert path.read_bytes() == before
    write_labels(path, labels_2d(5), overwrite=True)
    np.testing.assert_array_equal(read_labels(path)[0], labels_2d(5))
    assert leftovers(tmp_path) == []


def test_no_temp_files_after_failing_write(tmp_path):
    path = tmp_path / "old.png"
    write_labels(path, labels_2d())
    before = path.read_bytes()
    with pytest.raises(InputError, match="PNG holds only 2D"):
        write_labels(path, labels_3d(), overwrite=True)  # refused before any file is made
    with pytest.raises(InputError, match="colour PNG must be uint8"):
        write_array(path, np.zeros((4, 4, 3), np.uint16), overwrite=True)
    with pytest.raises(InputError, match="int32"):
        write_array(tmp_path / "v.nii.gz", np.full((2, 2), 2**40, np.int64))
    # nibabel itself fails here (NIfTI holds at most 7 axes), after the temp file exists.
    with pytest.raises(Exception, match="does not fit"):
        write_array(tmp_path / "eight.nii.gz", np.zeros((1,) * 8, np.uint8))
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_write_creates_parent_dirs_and_text(tmp_path):
    out = write_float_map(tmp_path / "a" / "b" / "noise.tif", np.zeros((3, 3)))
    assert out.exists()
    log = atomic_write_text(tmp_path / "logs" / "log.csv", "region,decision\r\n1,accept\r\n")
    assert log.read_bytes() == b"region,decision\r\n1,accept\r\n"
    with pytest.raises(FileExistsError, match=r"log\.csv.*overwrite=True"):
        atomic_write_text(log, "new")
    assert atomic_write_text(log, "new", overwrite=True).read_text() == "new"
    assert leftovers(log.parent) == []


def test_write_to_a_folder_path_is_refused(tmp_path):
    (tmp_path / "d.tif").mkdir()
    with pytest.raises(InputError, match=r"d\.tif.*is a folder"):
        write_array(tmp_path / "d.tif", np.zeros((2, 2)), overwrite=True)


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (DATA / "bbbc039").is_dir(), reason="shared BBBC039 data not present")
def test_real_bbbc039_pair():
    root = DATA / "bbbc039"
    pairs = pair_files(root / "images", root / "labels")
    assert len(pairs) == 50
    stem, image_path, label_path = pairs[0]
    image, imeta = read_image(image_path)
    labels, _ = read_labels(label_path)
    assert image.shape == (520, 696) and image.dtype == np.float32
    assert imeta.source_dtype == "uint16"
    assert labels.shape == (520, 696) and set(np.unique(labels)) == {0, 1}
    validate_pair(image, labels, str(image_path), str(label_path))
    # The images without nuclei are real: empty labels load, and can be refused on request.
    empty = next(l for s, _, l in pairs if s.startswith("IXMtest_F13_s7"))
    assert not read_labels(empty)[0].any()
    with pytest.raises(InputError, match="empty"):
        read_labels(empty, allow_empty=False)
    # The colour-coded RGBA masks are refused as labels with a clear message.
    rgba = sorted((root / "masks").glob("*.png"))[0]
    with pytest.raises(InputError, match=r"RGBA colour image"):
        read_labels(rgba)


@pytest.mark.skipif(not (DATA / "hippocampus").is_dir(), reason="shared hippocampus data not present")
def test_real_hippocampus_pair(tmp_path):
    root = DATA / "hippocampus"
    stem, image_path, label_path = pair_files(root / "images", root / "masks")[0]
    image, imeta = read_image(image_path)
    labels, lmeta = read_labels(label_path)
    validate_pair(image, labels, str(image_path), str(label_path))
    assert set(np.unique(labels)) <= {0, 1, 2} and imeta.affine.shape == (4, 4)
    out = write_labels(tmp_path / f"{stem}.nii.gz", labels, lmeta)
    back, bmeta = read_labels(out)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(bmeta.affine, lmeta.affine, atol=1e-6)
