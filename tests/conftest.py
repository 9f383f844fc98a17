"""Shared test fixtures and the GUI-test policy.

Sample data
-----------
``bbbc_sample`` and ``hippo_sample`` load the repository's ``sample_data/`` (the
files the plugin's sample-data menu opens) as numpy arrays. Each test gets its own
writable copies; the files are read once per session.

GUI tests
---------
Tests that use napari's ``make_napari_viewer`` fixture (napari ships it as a
pytest plugin, ``napari.utils._testsupport``) or are marked ``gui`` need a real X
display: Qt's offscreen platform cannot draw napari's OpenGL canvas. They are
marked ``gui`` automatically and skipped with a clear reason when there is no
display. Run them headless with ``xvfb-run -a python -m pytest`` (``make test``
does this). Tests that only need Qt widgets (``qtbot``/``qapp``, no viewer) also run
without a display when ``QT_QPA_PLATFORM=offscreen`` is set explicitly.

Qt binding: qtpy (napari) and pytest-qt must use the same one. With only PyQt6
installed they agree by themselves; if several bindings are installed and none is
chosen, PyQt6 is chosen for both.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO_ROOT / "sample_data"

VIEWER_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy"}
QT_FIXTURES = {"qtbot", "qapp"}


# ----------------------------------------------------------------------------- Qt setup


def _pick_qt_binding() -> None:
    if os.environ.get("QT_API") or os.environ.get("PYTEST_QT_API"):
        return
    installed = [
        name for name in ("PyQt6", "PySide6", "PyQt5", "PySide2")
        if importlib.util.find_spec(name) is not None
    ]
    if len(installed) > 1 and "PyQt6" in installed:
        os.environ["QT_API"] = "pyqt6"
        os.environ["PYTEST_QT_API"] = "pyqt6"


_pick_qt_binding()


def has_display() -> bool:
    """True where a real window can be opened (always, off Linux)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _offscreen_qt() -> bool:
    return os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal")


NO_DISPLAY_REASON = (
    "needs a display for a real napari window (DISPLAY is not set); run the tests "
    "under `xvfb-run -a` (`make test` does this when xvfb-run is installed; "
    "`.ci/run` installs it)"
)


# Quality checks of methods still being tuned (issues 5 and 6 stay open until they
# pass). They run and report; a pass is shown as XPASS. Remove an entry once fixed.
KNOWN_FAILING: dict[str, str] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = KNOWN_FAILING.get(item.nodeid)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=False))
    display = has_display()
    skip_gui = pytest.mark.skip(reason=NO_DISPLAY_REASON)
    skip_qt = pytest.mark.skip(
        reason="needs a display or QT_QPA_PLATFORM=offscreen to create a QApplication; "
        + NO_DISPLAY_REASON.split("; ", 1)[1]
    )
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & VIEWER_FIXTURES and item.get_closest_marker("gui") is None:
            item.add_marker(pytest.mark.gui)
        if display:
            continue
        if item.get_closest_marker("gui") is not None:
            item.add_marker(skip_gui)
        elif fixtures & QT_FIXTURES and not _offscreen_qt():
            item.add_marker(skip_qt)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tests' networks are tiny: intra-op threads gain nothing, and on a busy
    2-core machine two spinning threads per step made training tests 5–20× slower.
    Restored after each module (GUI workers pick their own count)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def requires_display():
    """Skip the test when no real window can be opened."""
    if not has_display():
        pytest.skip(NO_DISPLAY_REASON)


# ----------------------------------------------------------------------------- sample data


def _frozen(value):
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    return value


def _copies(sample: dict) -> dict:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sample.items()}


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The repository's ``sample_data/`` folder."""
    if not (SAMPLE_DATA / "bbbc039").is_dir():
        pytest.fail(
            f"{SAMPLE_DATA} is missing; regenerate it with "
            "`python sample_data/make_sample_data.py`"
        )
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def _bbbc_cached(sample_data_dir) -> dict:
    from napari_noisyseg._sample_data import load_bbbc

    return {k: _frozen(v) for k, v in load_bbbc().items()}


@pytest.fixture(scope="session")
def _hippo_cached(sample_data_dir) -> dict:
    from napari_noisyseg._sample_data import load_hippocampus

    return {k: _frozen(v) for k, v in load_hippocampus(0).items()}


@pytest.fixture
def bbbc_sample(_bbbc_cached) -> dict:
    """The BBBC039 sample data, stacked along axis 0 (one 2D sample per slice).

    Keys: ``image`` float32 (N, 520, 696); ``clean`` and ``noisy`` int32 (N, 520, 696)
    in {0, 1}; ``noise_mask`` bool (noisy != clean); ``names`` (file stems, the last
    one's clean labels are empty: a real BBBC039 image without nuclei);
    ``folder`` (Path). Writable copies, private to the test.
    """
    return _copies(_bbbc_cached)


@pytest.fixture
def hippo_sample(_hippo_cached) -> dict:
    """One hippocampus MRI volume from the sample data (the file's axis order).

    Keys: ``image`` float32 (X, Y, Z); ``clean`` and ``noisy`` int32 in {0, 1, 2};
    ``noise_mask`` bool; ``spacing`` (3 floats, mm); ``affine`` (4, 4); ``name``;
    ``paths`` (dict: images / labels_clean / labels_noisy -> Path). Writable copies.
    """
    return _copies(_hippo_cached)
