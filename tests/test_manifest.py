"""The npe2 manifest, its packaging, the sample data in a real viewer, and the demo."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import napari_noisyseg

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-noisyseg"
ROOT_MANIFEST = REPO_ROOT / "napari.yaml"
PACKAGED_MANIFEST = Path(napari_noisyseg.__file__).resolve().parent / "napari.yaml"


@pytest.fixture(scope="module")
def manifest():
    import npe2

    return npe2.PluginManifest.from_file(ROOT_MANIFEST)


# ----------------------------------------------------------------------------- manifest


def test_manifest_validates(manifest):
    assert manifest.name == PLUGIN
    assert manifest.display_name == "NoisySeg"
    # Every contribution refers to a declared command.
    commands = {c.id for c in manifest.contributions.commands}
    contribs = manifest.contributions
    used = [r.command for r in contribs.readers or []]
    used += [w.command for w in contribs.writers or []]
    used += [s.command for s in contribs.sample_data or []]
    used += [w.command for w in contribs.widgets or []]
    assert set(used) <= commands


def test_every_python_name_resolves(manifest):
    """napari imports these lazily, so a typo or a module that does not exist yet
    would only fail when a person clicks: import each one here."""
    for command in manifest.contributions.commands:
        assert command.python_name, f"{command.id} has no python_name"
        module_name, _, attr = command.python_name.partition(":")
        assert importlib.util.find_spec(module_name) is not None, (
            f"{command.id}: module {module_name} does not exist"
        )
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr, None)), f"{command.id}: {command.python_name}"


def test_readers_writers_and_samples_declared(manifest):
    contribs = manifest.contributions
    (reader,) = contribs.readers
    assert sorted(reader.filename_patterns) == sorted(
        ["*.tif", "*.tiff", "*.png", "*.nii", "*.nii.gz", "*.npy"]
    )
    assert reader.accepts_directories is False
    python = {c.id: c.python_name for c in contribs.commands}
    assert python[reader.command] == "napari_noisyseg._reader:get_reader"

    writers = {python[w.command]: w for w in contribs.writers}
    labels = writers["napari_noisyseg._writer:write_labels_layer"]
    image = writers["napari_noisyseg._writer:write_image_layer"]
    assert [str(t) for t in labels.layer_types] == ["labels"]
    assert [str(t) for t in image.layer_types] == ["image"]
    assert labels.filename_extensions == [".tif", ".tiff", ".png", ".nii", ".nii.gz", ".npy"]
    assert image.filename_extensions == [".tif", ".tiff", ".nii", ".nii.gz", ".npy"]

    samples = {s.key: s for s in contribs.sample_data}
    assert set(samples) == {"nuclei_2d", "hippocampus_3d"}
    assert python[samples["nuclei_2d"].command] == "napari_noisyseg._sample_data:nuclei_2d"
    assert python[samples["hippocampus_3d"].command] == (
        "napari_noisyseg._sample_data:hippocampus_3d"
    )


def test_packaged_manifest_is_the_root_manifest():
    assert PACKAGED_MANIFEST.is_file()
    assert PACKAGED_MANIFEST.read_bytes() == ROOT_MANIFEST.read_bytes()
    from importlib.resources import files

    assert (files("napari_noisyseg") / "napari.yaml").read_bytes() == ROOT_MANIFEST.read_bytes()


def test_plugin_manager_discovers_installed_plugin(manifest):
    import npe2

    if importlib.util.find_spec("napari_noisyseg") is None or not _is_installed():
        pytest.skip("napari-noisyseg is not installed (pip install -e .)")
    pm = npe2.PluginManager.instance()
    pm.discover()
    found = pm.get_manifest(PLUGIN)
    assert found.display_name == "NoisySeg"
    assert {s.key for s in found.contributions.sample_data} == {"nuclei_2d", "hippocampus_3d"}
    assert found.contributions.commands == manifest.contributions.commands


def _is_installed() -> bool:
    from importlib.metadata import PackageNotFoundError, entry_points, version

    try:
        version(PLUGIN)
    except PackageNotFoundError:
        return False
    return any(ep.name == PLUGIN for ep in entry_points(group="napari.manifest"))


def test_wheel_contains_manifest(tmp_path):
    """Build a wheel from a copy of the sources: napari.yaml must be inside as a
    regular file (the package's napari.yaml is a symlink to the root one)."""
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels by itself
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "napari.yaml", "README.md", "LICENSE"):
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(
        REPO_ROOT / "napari_noisyseg", src / "napari_noisyseg", symlinks=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    assert (src / "napari_noisyseg" / "napari.yaml").is_symlink()
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("napari_noisyseg-*.whl")
    with zipfile.ZipFile(wheel) as z:
        info = z.getinfo("napari_noisyseg/napari.yaml")
        mode = info.external_attr >> 16
        assert mode == 0 or (mode & 0o170000) == 0o100000, f"not a regular file: {oct(mode)}"
        assert z.read(info) == ROOT_MANIFEST.read_bytes()
        entry_points = next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = z.read(entry_points).decode()
    assert "[napari.manifest]" in text
    assert "napari-noisyseg = napari_noisyseg:napari.yaml" in text


# ----------------------------------------------------------------------------- sample data


def test_sample_data_functions_without_viewer(bbbc_sample, hippo_sample):
    from napari_noisyseg._sample_data import hippocampus_3d, nuclei_2d

    layers = nuclei_2d()
    assert [t for _, _, t in layers] == ["image", "labels", "labels"]
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["nuclei image", "nuclei clean (reference)", "nuclei labels"]
    assert layers[1][1]["visible"] is False
    np.testing.assert_array_equal(layers[2][0], bbbc_sample["noisy"])
    np.testing.assert_array_equal(layers[1][0], bbbc_sample["clean"])

    layers = hippocampus_3d()
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["hippocampus image", "hippocampus clean (reference)", "hippocampus labels"]
    for _, kwargs, _ in layers:
        assert tuple(kwargs["scale"]) == tuple(hippo_sample["spacing"])
    np.testing.assert_array_equal(layers[2][0], hippo_sample["noisy"])


def test_sample_data_content(bbbc_sample, hippo_sample):
    # BBBC: 4 samples, one without nuclei, binary labels, noise everywhere simulated.
    n = len(bbbc_sample["names"])
    assert bbbc_sample["image"].shape == (n, 520, 696) and n == 4
    assert set(np.unique(bbbc_sample["clean"])) <= {0, 1}
    assert set(np.unique(bbbc_sample["noisy"])) <= {0, 1}
    empty = [i for i in range(n) if not bbbc_sample["clean"][i].any()]
    assert len(empty) == 1, "one of BBBC039's images without nuclei is kept as an edge case"
    for i in range(n):
        assert bbbc_sample["noise_mask"][i].any(), "every sample was corrupted (fraction 1)"
    # Hippocampus: 3 classes, noisy differs from clean.
    assert hippo_sample["image"].ndim == 3
    assert set(np.unique(hippo_sample["clean"])) == {0, 1, 2}
    assert set(np.unique(hippo_sample["noisy"])) <= {0, 1, 2}
    assert hippo_sample["noise_mask"].any()


def test_sample_noise_matches_simulator_record(sample_data_dir):
    """The stored noisy labels are what the recorded simulate_noise run gives."""
    import json

    from napari_noisyseg.core.io import read_labels
    from napari_noisyseg.core.noise import simulate_noise

    record = json.loads((sample_data_dir / "hippocampus" / "simulate.json").read_text())
    params = record["params"]
    clean, stored = [], []
    for name in record["samples"]:
        clean.append(read_labels(sample_data_dir / "hippocampus" / "labels_clean" / f"{name}.nii.gz")[0])
        stored.append(read_labels(sample_data_dir / "hippocampus" / "labels_noisy" / f"{name}.nii.gz")[0])
    (step,) = params["steps"]
    run = simulate_noise(
        clean, params["protocols"], fraction=params["fraction"], severity=params["severity"],
        seed=params["seed"], per_slice=params["per_slice"], **step["params"],
    )
    for got, want in zip(run.noisy, stored):
        np.testing.assert_array_equal(got, want)


def test_sample_data_is_small_and_attributed(sample_data_dir):
    total = sum(f.stat().st_size for f in sample_data_dir.rglob("*") if f.is_file())
    assert total < 6e6, f"sample_data/ is {total / 1e6:.1f} MB; keep it under 6 MB"
    attribution = (sample_data_dir / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for needle in ("CC0 1.0", "CC-BY-SA 4.0", "Caicedo", "Ljosa", "Simpson", "Antonelli"):
        assert needle in attribution


def test_sample_data_missing_gives_clear_error(monkeypatch, tmp_path):
    from napari_noisyseg import _sample_data

    fake = tmp_path / "site-packages" / "napari_noisyseg" / "_sample_data.py"
    monkeypatch.setattr(_sample_data, "__file__", str(fake))
    with pytest.raises(FileNotFoundError, match="source checkout"):
        _sample_data.nuclei_2d()
    with pytest.raises(FileNotFoundError, match="source checkout"):
        _sample_data.hippocampus_3d()


def _check_opened(viewer, prefix: str, classes: set[int]):
    by_type = {}
    for layer in viewer.layers:
        by_type.setdefault(layer._type_string, []).append(layer)
    assert len(by_type.get("image", [])) == 1
    assert len(by_type.get("labels", [])) == 2
    image = by_type["image"][0]
    labels = {layer.name: layer for layer in by_type["labels"]}
    assert image.name == f"{prefix} image"
    assert set(labels) == {f"{prefix} labels", f"{prefix} clean (reference)"}
    assert labels[f"{prefix} clean (reference)"].visible is False
    assert labels[f"{prefix} labels"].visible is True
    for layer in labels.values():
        data = np.asarray(layer.data)
        assert data.shape == image.data.shape
        assert np.issubdtype(data.dtype, np.integer)
        assert set(np.unique(data).tolist()) <= classes
    return image, labels


def test_open_nuclei_sample_in_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei_2d")
    image, labels = _check_opened(viewer, "nuclei", {0, 1})
    assert image.data.ndim == 3  # a stack of 2D samples
    assert image.data.shape[0] == 4


def test_open_hippocampus_sample_in_viewer(make_napari_viewer, hippo_sample):
    from napari_noisyseg.core.io import read_array

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "hippocampus_3d")
    image, labels = _check_opened(viewer, "hippocampus", {0, 1, 2})
    assert image.data.ndim == 3
    _, meta = read_array(hippo_sample["paths"]["images"])
    for layer in [image, *labels.values()]:
        np.testing.assert_allclose(layer.scale, meta.spacing)
        np.testing.assert_allclose(layer.metadata["affine"], meta.affine)


# ----------------------------------------------------------------------------- demo


@pytest.mark.gui  # skipped without a display (see conftest.py)
@pytest.mark.parametrize("sample", ["nuclei_2d", "hippocampus_3d"])
def test_demo_screenshot(tmp_path, sample):
    target = tmp_path / f"{sample}.png"
    env = dict(os.environ)
    env.pop("QT_QPA_PLATFORM", None)  # a real window, on the current DISPLAY
    env["NAPARI_CONFIG"] = str(tmp_path / "settings.yaml")  # napari saves its window here, not the user's
    proc = subprocess.run(
        [sys.executable, "-m", "napari_noisyseg.demo", "--sample", sample,
         "--screenshot", str(target)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert target.is_file()
    import imageio.v3 as iio

    shot = np.asarray(iio.imread(target))
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.shape[1] > 300
    rgb = shot[..., :3].reshape(-1, 3)
    assert rgb.std() > 10, "the screenshot is blank"
    assert len(np.unique(rgb, axis=0)) > 50, "the screenshot has almost no detail"


@pytest.mark.gui  # skipped without a display (see conftest.py)
def test_demo_docks_two_tabbed_groups(qtbot):
    """The demo stacks two docks: Train with Compare as its tab, Review with Export as its
    tab, the first of each in front."""
    from qtpy.QtWidgets import QDockWidget

    from napari_noisyseg.demo import build_viewer

    viewer = build_viewer(show=True)
    try:
        widgets = {name.split(" (")[0]: widget for name, widget in viewer.window.dock_widgets.items()}
        assert set(widgets) == {"Train", "Review", "Export", "Compare methods"}

        def dock_of(widget):
            while not isinstance(widget, QDockWidget):
                widget = widget.parentWidget()
            return widget

        docks = {name: dock_of(widget) for name, widget in widgets.items()}
        window = viewer.window._qt_window
        qtbot.waitUntil(lambda: docks["Compare methods"] in window.tabifiedDockWidgets(docks["Train"]), timeout=5000)
        assert docks["Export"] in window.tabifiedDockWidgets(docks["Review"])
        assert docks["Review"] not in window.tabifiedDockWidgets(docks["Train"])
        for front, behind in (("Train", "Compare methods"), ("Review", "Export")):
            qtbot.waitUntil(lambda: not widgets[front].visibleRegion().isEmpty(), timeout=5000)
            assert widgets[behind].visibleRegion().isEmpty()
    finally:
        viewer.close()


@pytest.mark.gui  # skipped without a display (see conftest.py)
def test_demo_docks_are_as_wide_as_their_content(qtbot):
    """Resized after the docks are added, as ``make demo`` does, every plugin dock ends up at least as wide as
    its content's minimum: the Review table and its "pending only" box are not cut off (they
    were in about half of the demo's screenshots)."""
    from qtpy.QtWidgets import QApplication, QWidget

    from napari_noisyseg.demo import build_viewer
    from napari_noisyseg.widgets.controls import ScrollingPanel

    viewer = build_viewer(show=True)
    try:
        window = viewer.window._qt_window
        window.setGeometry(0, 0, 1280, 1024)  # the size of `make demo`'s virtual screen
        widgets = {name.split(" (")[0]: widget for name, widget in viewer.window.dock_widgets.items()}

        def fits(name):
            panel = widgets[name].findChild(ScrollingPanel)
            content = panel.widget()
            return panel.viewport().width() >= content.minimumSizeHint().width()

        qtbot.wait(1000)  # the style sheet and the window's resize arrive after the docks
        QApplication.processEvents()
        for name in ("Train", "Review"):
            qtbot.waitUntil(lambda: fits(name), timeout=5000)
            assert not widgets[name].findChild(ScrollingPanel).horizontalScrollBar().isVisible()
        review = widgets["Review"]
        box = review.pending_only
        right_edge = box.mapTo(review, box.rect().topRight()).x()
        assert right_edge < QWidget.width(review), "the pending-only box is cut off"
    finally:
        viewer.close()
