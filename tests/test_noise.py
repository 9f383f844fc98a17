"""Tests for napari_noisyseg.core.noise (METHODS.md §8 noise simulators)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_noisyseg.core import noise
from napari_noisyseg.core.noise import (
    PROTOCOLS,
    NoiseRun,
    corrupt_sample,
    describe_protocols,
    register_protocol,
    simulate_noise,
)

BBBC_LABELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "bbbc039" / "labels"
BUILTIN = [
    "erode_dilate", "area_target", "affine", "markov_boundary", "missing", "spurious",
    "pixel_flip", "class_flip", "minority_erode",
]
MULTICLASS_ONLY = {"class_flip"}


# --------------------------------------------------------------------------- fixtures


def _discs_2d(multiclass: bool, shape=(128, 128)) -> np.ndarray:
    """Nine separated discs of radius 6..12 on a 3x3 grid; classes alternate 1/2."""
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    radii = [6, 8, 10, 12, 7, 9, 11, 8, 10]
    for i, r in enumerate(radii):
        cy, cx = 22 + 42 * (i // 3), 22 + 42 * (i % 3)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (i % 2) + 1 if multiclass else 1
    return labels


def _balls_3d(multiclass: bool, shape=(32, 64, 64)) -> np.ndarray:
    """Four separated balls of radius 6..9; classes alternate 1/2."""
    labels = np.zeros(shape, np.uint8)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for i, (r, cy, cx) in enumerate([(9, 16, 16), (7, 16, 48), (8, 48, 16), (6, 48, 48)]):
        inside = (zz - 16) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[inside] = (i % 2) + 1 if multiclass else 1
    return labels


LABEL_SETS = {
    "2d_binary": _discs_2d(False),
    "2d_multi": _discs_2d(True),
    "3d_binary": _balls_3d(False),
    "3d_multi": _balls_3d(True),
}


def _cases():
    for protocol in BUILTIN:
        for key in LABEL_SETS:
            if protocol in MULTICLASS_ONLY and "binary" in key:
                continue
            yield pytest.param(protocol, key, id=f"{protocol}-{key}")


def _n_objects(labels: np.ndarray) -> int:
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    return sum(ndimage.label(labels == c, structure)[1] for c in np.unique(labels) if c)


def _bbbc_label() -> np.ndarray:
    files = sorted(BBBC_LABELS.glob("*.png")) if BBBC_LABELS.is_dir() else []
    if not files:
        pytest.skip("BBBC039 labels not available")
    from skimage.io import imread

    for f in files:  # first one with nuclei (two images have none)
        lab = imread(f)
        if lab.any():
            return (lab > 0).astype(np.uint8)
    pytest.skip("no BBBC039 label with nuclei")


def _many_nuclei(shape=(520, 696), n=200, seed=0) -> np.ndarray:
    """Synthetic BBBC039-sized image with about n small nuclei."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        cy, cx, r = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(5, 12)
        y0, y1, x0, x1 = max(0, cy - r), cy + r + 1, max(0, cx - r), cx + r + 1
        disc = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        labels[y0:y1, x0:x1][disc] = 1
    return labels


# --------------------------------------------------------------------------- every protocol


def test_registry_has_every_builtin_protocol():
    assert set(BUILTIN) <= set(PROTOCOLS)
    help_lines = describe_protocols()
    for name in BUILTIN:
        assert isinstance(help_lines[name], str) and help_lines[name]
        assert "\n" not in help_lines[name]


@pytest.mark.parametrize("protocol, key", list(_cases()))
def test_protocol_shape_dtype_change_and_determinism(protocol, key):
    clean = LABEL_SETS[key]
    before = clean.copy()
    noisy = PROTOCOLS[protocol](clean, np.random.default_rng(0), 1.0)
    assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
    np.testing.assert_array_equal(clean, before)  # input untouched
    assert (noisy != clean).any()
    assert noisy.max() <= 2  # no new class values appear
    again = PROTOCOLS[protocol](clean, np.random.default_rng(0), 1.0)
    np.testing.assert_array_equal(noisy, again)
    # different seeds differ (a few tries: small objects' radii hit the size cap)
    others = [PROTOCOLS[protocol](clean, np.random.default_rng(s), 1.0) for s in (1, 2, 3)]
    assert any((other != noisy).any() for other in others)


@pytest.mark.parametrize("protocol", BUILTIN)
def test_per_slice_on_3d(protocol):
    clean = LABEL_SETS["3d_multi"]
    noisy = PROTOCOLS[protocol](clean, np.random.default_rng(0), 1.0, per_slice=True)
    assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
    changed = [(noisy[z] != clean[z]).any() for z in range(clean.shape[0])]
    assert sum(changed) >= 3
    again = PROTOCOLS[protocol](clean, np.random.default_rng(0), 1.0, per_slice=True)
    np.testing.assert_array_equal(noisy, again)


def test_per_slice_needs_3d():
    with pytest.raises(ValueError, match="3D"):
        PROTOCOLS["missing"](LABEL_SETS["2d_binary"], np.random.default_rng(0), per_slice=True)


def test_per_slice_erode_shrinks_every_slice_with_objects():
    clean = LABEL_SETS["3d_binary"]
    noisy = PROTOCOLS["erode_dilate"](clean, 0, mode="erode", per_slice=True)
    for z in range(clean.shape[0]):
        if clean[z].sum() > 30:
            assert noisy[z].sum() < clean[z].sum()
        assert not (noisy[z] & ~clean[z]).any()


def test_bool_input_keeps_bool_dtype():
    clean = LABEL_SETS["2d_binary"].astype(bool)
    for protocol in ("erode_dilate", "pixel_flip", "spurious", "markov_boundary"):
        noisy = PROTOCOLS[protocol](clean, np.random.default_rng(0))
        assert noisy.dtype == bool and noisy.shape == clean.shape


def test_real_bbbc039_label_every_binary_protocol():
    clean = _bbbc_label()
    for protocol in BUILTIN:
        if protocol in MULTICLASS_ONLY:
            continue
        noisy = PROTOCOLS[protocol](clean, np.random.default_rng(0))
        assert noisy.shape == clean.shape and noisy.dtype == clean.dtype
        assert (noisy != clean).any(), protocol
        assert set(np.unique(noisy)) <= {0, 1}


# --------------------------------------------------------------------------- per protocol behaviour


@pytest.mark.parametrize("key", list(LABEL_SETS))
def test_erode_shrinks_dilate_grows_without_overwriting(key):
    clean = LABEL_SETS[key]
    fg = clean != 0
    eroded = PROTOCOLS["erode_dilate"](clean, 0, mode="erode")
    assert eroded.sum() < clean.sum()
    assert not (eroded[~fg]).any()  # erosion never adds foreground
    np.testing.assert_array_equal(eroded[eroded != 0], clean[eroded != 0])
    assert _n_objects(eroded) == _n_objects(clean)  # capped radius: no object vanishes
    dilated = PROTOCOLS["erode_dilate"](clean, 0, mode="dilate")
    assert (dilated != 0).sum() > fg.sum()
    np.testing.assert_array_equal(dilated[fg], clean[fg])  # no foreground overwritten


def test_erode_dilate_explicit_radius_matches_disc_geometry():
    clean = np.zeros((80, 80), np.uint8)
    yy, xx = np.mgrid[:80, :80]
    clean[(yy - 40) ** 2 + (xx - 40) ** 2 <= 20**2] = 1
    eroded = PROTOCOLS["erode_dilate"](clean, 0, radius=5, mode="erode")
    assert abs(eroded.sum() / (np.pi * 15**2) - 1) < 0.05
    dilated = PROTOCOLS["erode_dilate"](clean, 0, radius=(5, 5), mode="dilate")
    assert abs(dilated.sum() / (np.pi * 25**2) - 1) < 0.05
    # The size cap (0.5 x inscribed radius 20 = 10) limits an explicit radius of 15.
    capped = PROTOCOLS["erode_dilate"](clean, 0, radius=15, mode="erode")
    assert abs(capped.sum() / (np.pi * 10**2) - 1) < 0.06
    uncapped = PROTOCOLS["erode_dilate"](clean, 0, radius=15, mode="erode", max_radius_fraction=None)
    assert uncapped.sum() < capped.sum()


def test_severity_scales_erosion():
    clean = _discs_2d(False, shape=(128, 128))
    mild = PROTOCOLS["erode_dilate"](clean, 0, 0.1, mode="erode", max_radius_fraction=None)
    strong = PROTOCOLS["erode_dilate"](clean, 0, 1.0, mode="erode", max_radius_fraction=None)
    assert (mild != clean).sum() < (strong != clean).sum()
    assert noise.resolve_params("erode_dilate", 0.5)["radius"] == [2, 6]


@pytest.mark.parametrize("key", list(LABEL_SETS))
@pytest.mark.parametrize("mode, beta", [("erode", 0.5), ("erode", 0.7), ("dilate", 0.5), ("dilate", 0.7)])
def test_area_target_hits_target(key, mode, beta):
    clean = LABEL_SETS[key]
    fg = clean != 0
    noisy = PROTOCOLS["area_target"](clean, 0, beta=beta, mode=mode)
    target = beta * fg.sum() if mode == "erode" else fg.sum() / beta
    assert abs((noisy != 0).sum() / target - 1) < 0.02
    if mode == "erode":
        assert not noisy[~fg].any()
    else:
        np.testing.assert_array_equal(noisy[fg], clean[fg])


def test_area_target_severity_maps_to_beta():
    assert noise.resolve_params("area_target", 1.0)["beta"] == 0.5
    assert noise.resolve_params("area_target", 0.6)["beta"] == pytest.approx(0.7)
    assert noise.resolve_params("area_target", 1.0, beta=0.9)["beta"] == 0.9


def _centroids(labels):
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    comps, n = ndimage.label(labels != 0, structure)
    return np.array(ndimage.center_of_mass(labels != 0, comps, range(1, n + 1)))


@pytest.mark.parametrize("key", list(LABEL_SETS))
def test_affine_moves_objects_and_keeps_them(key):
    clean = LABEL_SETS[key]
    noisy = PROTOCOLS["affine"](clean, 0, theta=30, shift=0.2)
    assert abs(_n_objects(noisy) - _n_objects(clean)) <= 1
    assert abs((noisy != 0).sum() / (clean != 0).sum() - 1) < 0.15
    before, after = _centroids(clean), _centroids(noisy)
    if len(before) == len(after):
        # nearest-centroid displacement: objects moved, but not far
        dist = np.linalg.norm(before[:, None] - after[None], axis=-1).min(axis=1)
        assert dist.mean() > 0.5 and dist.max() < 10
    assert set(np.unique(noisy[noisy != 0])) <= set(np.unique(clean[clean != 0]))
    identity = PROTOCOLS["affine"](clean, 0, theta=0, shift=0)
    np.testing.assert_array_equal(identity, clean)


def test_markov_boundary_direction_follows_theta1():
    clean = _discs_2d(False)
    grown = PROTOCOLS["markov_boundary"](clean, 0, steps=60, theta1=1.0, theta3=0.0, sigma=0)
    shrunk = PROTOCOLS["markov_boundary"](clean, 0, steps=60, theta1=0.0, theta3=0.0, sigma=0)
    assert grown.sum() > clean.sum() > shrunk.sum()
    assert not shrunk[clean == 0].any()
    assert grown[clean != 0].all()
    # changes stay near the boundary: far background / deep interior untouched
    far = ndimage.distance_transform_edt(clean == 0) > 10
    deep = ndimage.distance_transform_edt(clean != 0) > 10
    assert not grown[far].any()
    assert shrunk[deep].all()


def test_markov_boundary_is_fast_on_bbbc_sized_image():
    clean = _many_nuclei()
    assert _n_objects(clean) > 100
    start = time.perf_counter()
    noisy = PROTOCOLS["markov_boundary"](clean, 0, 1.0)  # T = 200 steps
    assert time.perf_counter() - start < 2.0
    assert (noisy != clean).any()


@pytest.mark.parametrize("key", list(LABEL_SETS))
def test_missing_drops_whole_objects_only(key):
    clean = LABEL_SETS[key]
    noisy = PROTOCOLS["missing"](clean, 0, p=0.4)
    assert _n_objects(noisy) < _n_objects(clean)
    assert not noisy[clean == 0].any()  # never adds foreground
    kept = noisy != 0
    np.testing.assert_array_equal(noisy[kept], clean[kept])
    structure = ndimage.generate_binary_structure(clean.ndim, clean.ndim)
    comps, n = ndimage.label(clean != 0, structure)
    for i in range(1, n + 1):  # each object kept whole or dropped whole
        assert len(np.unique(kept[comps == i])) == 1


@pytest.mark.parametrize("key", list(LABEL_SETS))
def test_spurious_adds_blobs_on_background_only(key):
    clean = LABEL_SETS[key]
    fg = clean != 0
    noisy = PROTOCOLS["spurious"](clean, 0, p=0.5)
    np.testing.assert_array_equal(noisy[fg], clean[fg])
    added = (noisy != 0) & ~fg
    assert added.any()
    structure = ndimage.generate_binary_structure(clean.ndim, clean.ndim)
    n_added = ndimage.label(added, structure)[1]
    expected = round(0.5 * _n_objects(clean))
    assert abs(n_added - expected) <= 1
    assert set(np.unique(noisy[added])) <= set(np.unique(clean[fg]))


def test_spurious_on_empty_labels_adds_at_least_one_blob():
    empty = np.zeros((64, 64), np.uint16)
    noisy = PROTOCOLS["spurious"](empty, 0)
    assert noisy.dtype == np.uint16 and _n_objects(noisy) >= 1


@pytest.mark.parametrize("key", list(LABEL_SETS))
def test_pixel_flip_rate(key):
    clean = LABEL_SETS[key]
    noisy = PROTOCOLS["pixel_flip"](clean, 0, p=0.05)
    assert abs((noisy != clean).mean() - 0.05) < 0.01
    assert noisy.max() <= max(1, clean.max())


def test_pixel_flip_uses_every_other_class():
    clean = np.zeros((100, 100), np.uint8)
    clean[:, 50:] = 1
    clean[0, 0] = 3  # n_classes = 4
    noisy = PROTOCOLS["pixel_flip"](clean, 0, p=0.5)
    flipped_from_bg = noisy[(clean == 0) & (noisy != clean)]
    assert set(np.unique(flipped_from_bg)) == {1, 2, 3}


@pytest.mark.parametrize("key", ["2d_multi", "3d_multi"])
def test_class_flip_keeps_foreground_changes_classes(key):
    clean = LABEL_SETS[key]
    noisy = PROTOCOLS["class_flip"](clean, 0, p=0.5)
    np.testing.assert_array_equal(noisy != 0, clean != 0)
    assert (noisy != clean).any()
    structure = ndimage.generate_binary_structure(clean.ndim, clean.ndim)
    comps, n = ndimage.label(clean != 0, structure)
    for i in range(1, n + 1):  # whole objects relabelled
        assert len(np.unique(noisy[comps == i])) == 1


def test_class_flip_refuses_binary_labels():
    with pytest.raises(ValueError, match="multi-class"):
        PROTOCOLS["class_flip"](LABEL_SETS["2d_binary"], 0)
    with pytest.raises(ValueError, match="multi-class"):
        simulate_noise([LABEL_SETS["2d_binary"]], "class_flip")


def test_minority_erode_touches_only_smallest_class():
    clean = LABEL_SETS["2d_multi"]
    areas = {c: (clean == c).sum() for c in (1, 2)}
    minority = min(areas, key=areas.get)
    noisy = PROTOCOLS["minority_erode"](clean, 0)
    changed = noisy != clean
    assert changed.any()
    assert set(np.unique(clean[changed])) == {minority}
    assert (noisy == minority).sum() < areas[minority]
    other = 3 - minority
    np.testing.assert_array_equal(noisy == other, clean == other)
    explicit = PROTOCOLS["minority_erode"](clean, 0, target_class=other, mode="dilate")
    assert (explicit == other).sum() > areas[other]


# --------------------------------------------------------------------------- simulate_noise


def _dataset(n=10):
    base = [_discs_2d(True), _balls_3d(True)]
    return [np.roll(base[i % 2], 3 * i, axis=-1) for i in range(n)]


@pytest.mark.parametrize("fraction, n, expected", [(0.3, 10, 3), (0.5, 5, 3), (0.0, 4, 0), (1.0, 4, 4)])
def test_fraction_picks_round_alpha_n_and_leaves_others(fraction, n, expected):
    clean = _dataset(n)
    run = simulate_noise(clean, "erode_dilate", fraction=fraction, seed=5)
    assert isinstance(run, NoiseRun)
    assert sum(run.corrupted) == expected == len(run.params["corrupted_indices"])
    for lab, noisy, mask, chosen in zip(clean, run.noisy, run.noise_masks, run.corrupted):
        assert noisy.shape == lab.shape and noisy.dtype == lab.dtype
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, noisy != lab)
        assert mask.any() == chosen
        if not chosen:
            np.testing.assert_array_equal(noisy, lab)


def test_simulate_noise_is_seeded_and_per_sample_independent():
    clean = _dataset(4)
    a = simulate_noise(clean, "markov_boundary", seed=1, steps=20)
    b = simulate_noise(clean, "markov_boundary", seed=1, steps=20)
    c = simulate_noise(clean, "markov_boundary", seed=2, steps=20)
    for x, y in zip(a.noisy, b.noisy):
        np.testing.assert_array_equal(x, y)
    assert any((x != z).any() for x, z in zip(a.noisy, c.noisy))
    # replacing sample 3 does not change sample 0's noise
    altered = clean[:3] + [np.zeros_like(clean[3])]
    d = simulate_noise(altered, "markov_boundary", seed=1, steps=20)
    np.testing.assert_array_equal(a.noisy[0], d.noisy[0])


def test_protocol_chain_string_and_list_agree():
    clean = _dataset(3)
    run = simulate_noise(clean, "missing+spurious", seed=3)
    same = simulate_noise(clean, ["missing", "spurious"], seed=3)
    for x, y in zip(run.noisy, same.noisy):
        np.testing.assert_array_equal(x, y)
    assert run.params["protocols"] == ["missing", "spurious"]
    assert [s["protocol"] for s in run.params["steps"]] == ["missing", "spurious"]
    single = corrupt_sample(clean[0], "missing+spurious", np.random.default_rng(0))
    assert single.shape == clean[0].shape and (single != clean[0]).any()


def test_params_are_explicit_broadcast_and_json_serialisable():
    clean = _dataset(3)
    run = simulate_noise(
        clean, "missing+spurious+pixel_flip", fraction=0.67, severity=0.5, seed=7, p=0.2,
        protocol_params={"pixel_flip": {"p": 0.01}},
    )
    payload = json.loads(json.dumps(run.to_json_dict()))
    params = payload["params"]
    assert params["fraction"] == 0.67 and params["severity"] == 0.5 and params["seed"] == 7
    assert params["version"]
    steps = {s["protocol"]: s["params"] for s in params["steps"]}
    assert steps["missing"]["p"] == 0.2 and steps["spurious"]["p"] == 0.2
    assert steps["pixel_flip"] == {"p": 0.01, "n_classes": 3}  # dataset-wide class count
    assert payload["corrupted"] == run.corrupted
    assert len(payload["noise_fraction"]) == 3


def test_every_protocol_records_json_params():
    clean = [LABEL_SETS["2d_multi"], LABEL_SETS["3d_multi"]]
    for protocol in BUILTIN:
        run = simulate_noise(clean, protocol, seed=0)
        json.dumps(run.to_json_dict())
        assert run.params["steps"][0]["params"]  # every parameter made explicit


def test_bad_input_gives_clear_errors():
    lab = LABEL_SETS["2d_binary"]
    with pytest.raises(ValueError, match="integers"):
        PROTOCOLS["missing"](lab.astype(np.float32), 0)
    with pytest.raises(ValueError, match=">= 0"):
        PROTOCOLS["missing"](lab.astype(np.int16) - 1, 0)
    with pytest.raises(ValueError, match="2D"):
        PROTOCOLS["missing"](lab[None, None], 0)
    with pytest.raises(ValueError, match="unknown noise protocol"):
        simulate_noise([lab], "blur")
    with pytest.raises(ValueError, match="no parameter"):
        PROTOCOLS["missing"](lab, 0, beta=0.5)
    with pytest.raises(ValueError, match="not accepted"):
        simulate_noise([lab], "missing", beta=0.5)
    with pytest.raises(ValueError, match="severity"):
        simulate_noise([lab], "missing", severity=0)
    with pytest.raises(ValueError, match="fraction"):
        simulate_noise([lab], "missing", fraction=1.5)
    with pytest.raises(TypeError, match="list"):
        simulate_noise(lab, "missing")


def test_register_protocol_extends_registry(monkeypatch):
    monkeypatch.setattr(noise, "_SPECS", dict(noise._SPECS))
    monkeypatch.setattr(noise, "PROTOCOLS", dict(noise.PROTOCOLS))

    def invert(labels, rng, severity, **params):
        """Swap background and foreground (test protocol)."""
        return (labels == 0).astype(labels.dtype)

    register_protocol("invert", invert)
    assert noise.describe_protocols()["invert"].startswith("Swap background")
    run = simulate_noise([LABEL_SETS["2d_binary"]], "missing+invert", seed=0)
    assert run.noisy[0].sum() > LABEL_SETS["2d_binary"].sum()
    with pytest.raises(ValueError, match="already registered"):
        register_protocol("invert", invert)
