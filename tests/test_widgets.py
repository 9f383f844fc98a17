"""The Train / Review / Export widgets in a real napari viewer (Xvfb).

Each test opens the plugin's nuclei sample, crops it to a small stack (training
takes seconds on two cores) and drives the widgets as a person would: buttons,
keys on the canvas, the layer pickers. Outcomes are checked on the data: the
overlay layers, the original layer's hash, the cleaned labels, the curation
log, what the retraining received and the exported files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time

import numpy as np
import pytest

from napari_noisyseg.widgets.layers import camera_of

PLUGIN = "napari-noisyseg"
CROP = (slice(0, 2), slice(0, 96), slice(0, 128))


def _hash(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture
def viewer(make_napari_viewer):
    """The nuclei sample, plus a 2 x 96 x 128 crop of it as "crop image" / "crop labels"."""
    import torch

    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "nuclei_2d")
    image, labels = viewer.layers["nuclei image"], viewer.layers["nuclei labels"]
    viewer.add_image(np.array(image.data[CROP]), name="crop image")
    viewer.add_labels(np.array(labels.data[CROP]), name="crop labels", metadata=dict(labels.metadata))
    for name in ("nuclei image", "nuclei labels", "nuclei clean (reference)"):
        viewer.layers[name].visible = False
    return viewer


def _dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _train_widget(viewer, epochs=2, preview_every=2):
    train = _dock(viewer, "Train")
    train.set_pair(0, "crop image", "crop labels")
    train.method.setCurrentIndex(train.method.findData("baseline"))
    train.epochs.setValue(epochs)
    train.patch_size.setValue(64)
    train.batch_size.setValue(4)
    train.width.setValue(8)
    train.depth.setValue(3)
    train.preview_every.setValue(preview_every)
    return train


def _run(qtbot, train, button=None, timeout=120):
    """Click Train (or ``button``) and wait for the job; return (job, events)."""
    events = []
    train.state.job_started.connect(lambda job: job.event.connect(events.append))
    qtbot.mouseClick(button or train.train_button, _left())
    job = train.state.job
    assert job is not None, train.status.text()
    qtbot.waitUntil(lambda: not train.state.busy, timeout=timeout * 1000)
    assert job.outcome.error is None, job.outcome.error
    return job, events


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def _press(viewer, qtbot, key):
    """A real key press on the canvas (what a person does)."""
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key)


def _trained(viewer, qtbot, epochs=1):
    train = _train_widget(viewer, epochs=epochs, preview_every=0)
    _run(qtbot, train)
    return train


# ----------------------------------------------------------------------------- manifest


def test_widgets_appear_through_the_manifest(make_napari_viewer):
    from napari_noisyseg.widgets.export import ExportWidget
    from napari_noisyseg.widgets.review import ReviewWidget
    from napari_noisyseg.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    widgets = {name: _dock(viewer, name) for name in ("Train", "Review", "Export")}
    assert isinstance(widgets["Train"], TrainWidget)
    assert isinstance(widgets["Review"], ReviewWidget)
    assert isinstance(widgets["Export"], ExportWidget)
    # One shared state per viewer, whatever proxy napari handed each widget.
    assert widgets["Train"].state is widgets["Review"].state is widgets["Export"].state
    train = widgets["Train"]
    methods = [train.method.itemData(i) for i in range(train.method.count())]
    from napari_noisyseg.methods import available_methods

    assert methods == list(available_methods())
    devices = [train.device.itemData(i) for i in range(train.device.count())]
    from napari_noisyseg.engine.device import available_devices

    assert devices == ["auto", *available_devices()]
    if available_devices() == ["cpu"]:
        assert "CPU" in train.device_note.text() and not train.device_note.isHidden()
    assert train.advanced.isHidden()  # advanced settings start collapsed
    assert not train.train_button.isEnabled()  # no layers to pick yet
    # Each method's defaults, shown as the parameters' placeholder, read back as themselves.
    from napari_noisyseg.methods import get_method
    from napari_noisyseg.widgets.train import parse_params

    for index, name in enumerate(methods):
        train.method.setCurrentIndex(index)
        defaults = json.loads(json.dumps(getattr(get_method(name), "DEFAULTS", {}) or {}))
        if defaults:
            assert parse_params(train.params.placeholderText()) == defaults, name


# ----------------------------------------------------------------------------- training


def test_training_makes_three_layers_and_leaves_the_original_alone(viewer, qtbot):
    original = viewer.layers["crop labels"]
    before = _hash(original.data)
    viewer.layers.selection.active = viewer.layers["crop image"]
    camera = camera_of(viewer)
    center, zoom = tuple(camera.center), camera.zoom

    train = _train_widget(viewer, epochs=2, preview_every=2)
    job, events = _run(qtbot, train)

    names = [layer.name for layer in viewer.layers]
    position = names.index("crop labels")
    assert names[position + 1:position + 4] == ["crop labels noise", "crop labels proposals", "crop labels cleaned"]
    noise = viewer.layers["crop labels noise"]
    proposals = viewer.layers["crop labels proposals"]
    cleaned = viewer.layers["crop labels cleaned"]
    assert noise.colormap.name == "magma" and noise.blending == "additive"
    assert tuple(noise.contrast_limits) == (0.0, 1.0)
    assert noise.data.dtype == np.float32 and noise.data.shape == original.data.shape
    assert 0.0 <= float(noise.data.min()) and float(noise.data.max()) <= 1.0
    assert type(proposals).__name__ == "Labels" and type(cleaned).__name__ == "Labels"

    session = train.state.session
    assert cleaned.data is session.cleaned[0]  # painting on the layer edits the session
    assert np.array_equal(proposals.data, session.region_maps[0])
    assert set(proposals.features["status"]) <= {"pending"}
    assert len(proposals.features) == len(session.regions) > 0
    assert np.array_equal(cleaned.data, original.data)

    from napari_noisyseg.engine.events import EpochEvent, PreviewEvent

    assert len([e for e in events if isinstance(e, EpochEvent)]) == 2
    assert any(isinstance(e, PreviewEvent) for e in events)  # live previews arrived
    assert len(train.plot.epochs) == 2 and len(train.plot.iou) == 2
    # The person's view and selection are untouched, the original too.
    assert viewer.layers.selection.active is viewer.layers["crop image"]
    assert tuple(camera.center) == center and camera.zoom == zoom
    assert _hash(original.data) == before
    assert session.original_unchanged()
    assert train.train_button.isEnabled() and not train.stop_button.isEnabled()

    # The n key toggles the noise overlay.
    _press(viewer, qtbot, "n")
    assert not noise.visible
    _press(viewer, qtbot, "n")
    assert noise.visible


def test_stop_ends_training_within_a_second_and_training_again_works(viewer, qtbot):
    from napari_noisyseg.engine.events import StepEvent

    train = _train_widget(viewer, epochs=500, preview_every=0)
    steps = []
    train.state.job_started.connect(lambda job: job.event.connect(
        lambda e: steps.append(e) if isinstance(e, StepEvent) else None))
    qtbot.mouseClick(train.train_button, _left())
    job = train.state.job
    assert train.stop_button.isEnabled() and not train.train_button.isEnabled()
    qtbot.waitUntil(lambda: len(steps) >= 3, timeout=60000)
    ended = []
    job.finished.connect(lambda *_: ended.append(time.perf_counter()))
    clicked = time.perf_counter()
    qtbot.mouseClick(train.stop_button, _left())
    qtbot.waitUntil(lambda: not train.state.busy, timeout=10000)
    shown = time.perf_counter() - clicked
    worker = ended[0] - clicked
    print(f"\nstop: worker ended {worker:.3f} s after the click (its thread: "
          f"{job.outcome.stop_latency_s:.3f} s); result shown, widget usable after {shown:.3f} s")
    assert worker < 1.0, f"the worker took {worker:.2f} s to stop"
    assert shown < 2.0, f"the result took {shown:.2f} s to show after the stop"
    assert job.outcome.stopped and job.outcome.error is None
    assert train.state.result.stopped
    assert "Stopped" in train.status.text()
    assert train.train_button.isEnabled() and not train.stop_button.isEnabled()
    assert "crop labels cleaned" in viewer.layers  # the partial result is usable

    train.epochs.setValue(1)
    second, _ = _run(qtbot, train)
    assert not second.outcome.stopped and train.state.session.round == 2


def test_a_minutes_budget_trains_until_the_time_is_up(viewer, qtbot):
    """The minutes budget: the status gives the epoch plan as an estimate (≈), and the
    run trains until its time is up (less the share kept for the final predictions)."""
    from napari_noisyseg.engine.events import EpochEvent
    from napari_noisyseg.engine.train import PREDICTION_RESERVE

    train = _train_widget(viewer, preview_every=0)
    qtbot.mouseClick(train.by_minutes, _left())
    train.minutes.setValue(0.1)
    assert train.config().minutes == pytest.approx(0.1) and train.config().epochs is None
    statuses = []
    train.state.job_started.connect(lambda job: job.event.connect(
        lambda e: statuses.append(train.status.text()) if isinstance(e, EpochEvent) else None))
    job, events = _run(qtbot, train)
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert len(epochs) >= 2 and statuses[0].startswith("Epoch 1/≈")
    training_time = 0.1 * 60 * (1 - PREDICTION_RESERVE)
    longest = max(np.diff([0.0] + [e.elapsed_s for e in epochs]))
    assert training_time - epochs[-1].elapsed_s <= longest + 0.5
    assert "crop labels cleaned" in viewer.layers


def test_a_short_dock_scrolls_instead_of_squeezing_its_rows(viewer, qtbot):
    """Docks stacked on a small screen get less height than the Train widget needs: its rows
    keep their minimum height (nothing drawn clipped) and the content scrolls."""
    from qtpy.QtWidgets import QApplication, QWidget

    from napari_noisyseg.widgets.controls import ScrollingPanel

    train = _dock(viewer, "Train")
    dock = train.parentWidget()
    while dock is not None and not hasattr(dock, "setFloating"):
        dock = dock.parentWidget()
    dock.setFloating(True)
    dock.resize(QWidget.width(dock), 300)
    qtbot.waitUntil(lambda: QWidget.height(dock) <= 320, timeout=5000)
    QApplication.processEvents()
    panel = train.findChild(ScrollingPanel)
    assert panel.verticalScrollBar().isVisible() and panel.verticalScrollBar().maximum() > 0
    for row in (train.budget, train.method, train.epochs, train.train_button):
        assert QWidget.height(row) >= row.minimumSizeHint().height(), row
    panel.verticalScrollBar().setValue(panel.verticalScrollBar().maximum())  # the user scrolls down
    QApplication.processEvents()
    assert not train.plot.visibleRegion().isEmpty()


def test_a_narrow_panel_scrolls_sideways_instead_of_cutting_controls_off(qtbot):
    """A dock dragged narrower than its content (napari lets a dock shrink to 50 px): the
    content keeps its minimum width and a horizontal scroll bar reaches its right-hand side."""
    from qtpy.QtWidgets import QApplication, QHBoxLayout, QPushButton, QWidget

    from napari_noisyseg.widgets.controls import ScrollingPanel

    content = QWidget()
    row = QHBoxLayout(content)
    buttons = [QPushButton(f"button number {i}") for i in range(5)]
    for button in buttons:
        row.addWidget(button)
    panel = ScrollingPanel(content)
    qtbot.addWidget(panel)
    panel.resize(200, 120)
    panel.show()
    qtbot.waitExposed(panel)
    bar = panel.horizontalScrollBar()
    qtbot.waitUntil(bar.isVisible, timeout=5000)
    assert QWidget.width(content) >= content.minimumSizeHint().width() > panel.viewport().width()
    assert buttons[-1].visibleRegion().isEmpty()
    bar.setValue(bar.maximum())  # the user scrolls right
    QApplication.processEvents()
    assert not buttons[-1].visibleRegion().isEmpty()
    assert panel.minimumSizeHint().width() > content.minimumSizeHint().width()  # asks for room


def test_the_layer_choices_name_the_chosen_layer_in_full(viewer):
    """A long layer name is cut in the narrow box; its tooltip names the chosen layer."""
    viewer.add_labels(np.array(viewer.layers["crop labels"].data), name="a rather long name for the labels to curate")
    train = _dock(viewer, "Train")
    train.set_pair(0, "crop image", "a rather long name for the labels to curate")
    row = train._rows[0]
    assert row.labels.toolTip().endswith(": a rather long name for the labels to curate")
    assert row.image.toolTip() == "Image layer: crop image"


def test_the_status_names_a_class_the_network_has_not_learnt(viewer, qtbot):
    """One epoch on labels with a few pixels of a third class: the status says that class is
    not learnt yet, with its IoU, rather than leaving "0 regions" unexplained."""
    from napari_noisyseg.widgets.train import unlearnt_note

    labels = viewer.layers["crop labels"]
    painted = np.array(labels.data)
    painted[0, :6, :6] = 2
    viewer.add_labels(painted, name="three classes")
    train = _train_widget(viewer, epochs=1, preview_every=0)
    train.set_pair(0, "crop image", "three classes")
    _run(qtbot, train)
    iou = train.state.result.history["iou"][-1]
    assert iou[2] is not None and iou[2] < 0.1
    assert f"class 2 (IoU {iou[2]:.2f})" in train.status.text()
    assert unlearnt_note({"iou": [[0.9, 0.8, 0.5]]}) == ""
    assert unlearnt_note({}) == ""


def test_bad_input_is_a_notification_naming_the_layer(viewer, qtbot):
    from napari.utils.notifications import notification_manager

    viewer.add_labels(np.zeros((2, 50, 50), np.int32), name="wrong shape")
    train = _train_widget(viewer)
    train.set_pair(0, "crop image", "wrong shape")
    qtbot.mouseClick(train.train_button, _left())
    job = train.state.job
    qtbot.waitUntil(lambda: not train.state.busy, timeout=30000)
    assert job.outcome.error is not None
    message = notification_manager.records[-1].message
    assert "wrong shape" in message and "shape" in message
    assert "wrong shape" in train.status.text()
    assert train.train_button.isEnabled() and not train.stop_button.isEnabled()
    assert train.state.session is None


# ----------------------------------------------------------------------------- review


def test_review_accept_reject_undo_by_keys_and_buttons(viewer, qtbot):
    original = viewer.layers["crop labels"]
    before = _hash(original.data)
    train = _trained(viewer, qtbot)
    review = _dock(viewer, "Review")
    session = train.state.session
    assert review.table.rowCount() == len(session.regions) >= 3
    likelihoods = [float(review.table.item(r, 4).text()) for r in range(review.table.rowCount())]
    assert likelihoods == sorted(likelihoods, reverse=True)
    cleaned = viewer.layers["crop labels cleaned"]
    given = session.given[0]

    # Next moves the view to the region: slider on its slice, camera on its centre.
    qtbot.mouseClick(review.next_button, _left())
    first = session.regions[review.current]
    assert review.current == review._order[0]
    assert viewer.dims.point[0] == pytest.approx(first.centroid[0])
    np.testing.assert_allclose(camera_of(viewer).center[-2:], first.centroid[-2:], atol=1e-6)

    # a accepts (exactly the region's pixels change) and moves on to the next pending one.
    _press(viewer, qtbot, "a")
    assert first.status == "accepted"
    mask = session.region_mask(first.id)
    assert np.array_equal(cleaned.data[mask], session.corrected[0][mask])
    assert np.array_equal(cleaned.data[~mask], given[~mask])
    assert session.log[-1]["decision"] == "accept" and session.log[-1]["region"] == first.id
    second = session.regions[review.current]
    assert second.id != first.id and second.status == "pending"

    # r rejects: nothing changes in cleaned; the button does the same as the key.
    qtbot.mouseClick(review.reject_button, _left())
    assert second.status == "rejected"
    assert np.array_equal(cleaned.data[~mask], given[~mask])
    row = review._rows[second.id]
    assert review.table.item(row, 6).text() == "rejected"
    assert review.table.item(row, 6).background().color().name() == "#6a2c2c"

    # u undoes the rejection, then the acceptance: back to the original.
    _press(viewer, qtbot, "u")
    assert second.status == "pending"
    qtbot.mouseClick(review.undo_button, _left())
    assert first.status == "pending"
    assert np.array_equal(cleaned.data, given)
    assert [row["decision"] for row in session.log] == ["accept", "reject", "undo", "undo"]
    assert _hash(original.data) == before

    # Bulk accept with its preview count.
    review.threshold.setValue(0.0)
    n = session.count_above(0.0)
    assert f"Accept {n} regions" in review.bulk_button.text()
    qtbot.mouseClick(review.bulk_button, _left())
    assert session.counts()["accepted"] == n
    assert "Accept 0 regions" in review.bulk_button.text()
    _press(viewer, qtbot, "u")
    assert session.counts()["accepted"] == 0 and np.array_equal(cleaned.data, given)


def test_painting_on_cleaned_is_respected(viewer, qtbot):
    train = _trained(viewer, qtbot)
    review = _dock(viewer, "Review")
    session = train.state.session
    cleaned = viewer.layers["crop labels cleaned"]
    region = session.sorted_regions()[0]
    mask = session.region_mask(region.id)
    # Paint a stroke away from every region, as the brush does (in place on layer.data).
    z = int(round(region.centroid[0]))
    ys, xs = np.nonzero(session.region_maps[0][z] == 0)
    stroke = (np.full(20, z), ys[:20], xs[:20])
    cleaned.data_setitem(stroke, 7)
    assert session.manual_edits(0).sum() == 20
    review.select(region.id)
    review.decide("accept")
    review.decide("undo")
    assert (cleaned.data[stroke] == 7).all()  # decisions never revert a stroke
    assert session.trust_masks()[0][stroke].all()


# ----------------------------------------------------------------------------- retrain and export


def test_retrain_receives_the_trust_mask(viewer, qtbot):
    train = _trained(viewer, qtbot)
    review = _dock(viewer, "Review")
    session = train.state.session
    order = review._order
    review.select(order[0])
    review.decide("accept")
    review.select(order[1])
    review.decide("reject")
    trust = session.trust_masks()[0]
    cleaned = session.cleaned[0].copy()
    assert trust.sum() == session.regions[order[0]].area + session.regions[order[1]].area

    job, _ = _run(qtbot, train, button=train.retrain_button)
    dataset = train.state.job_dataset
    assert [s.position for s in dataset.samples] == [(0,), (1,)]  # the stack: one sample per slice
    for z, sample in enumerate(dataset.samples):
        assert np.array_equal(sample.trust, trust[z])
        assert np.array_equal(sample.labels, cleaned[z])  # trained on the cleaned labels
    assert "from scratch" in train.status.text() or "current models" in train.status.text()
    assert session.round == 2
    assert session.regions[order[0]].status == "accepted"
    assert session.regions[order[1]].status == "rejected"
    new = [r for r in session.regions.values() if r.round == 2]
    assert not any(trust[session.region_mask(r.id)].any() for r in new)


def test_export_writes_what_the_log_says(viewer, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_noisyseg.core import io
    from napari_noisyseg.core.checkpoint import load_checkpoint

    original = viewer.layers["crop labels"]
    before = _hash(original.data)
    train = _trained(viewer, qtbot)
    review = _dock(viewer, "Review")
    export = _dock(viewer, "Export")
    session = train.state.session
    from napari_noisyseg.widgets.review import SAMPLE_COLUMN

    sample = review.table.item(0, SAMPLE_COLUMN)
    assert sample.text().startswith("crop labels[") and sample.toolTip() == sample.text()  # elided when long
    accepted, rejected = review._order[0], review._order[1]
    review.select(accepted)
    review.decide("accept")
    review.select(rejected)
    review.decide("reject")

    export.folder.setText(str(tmp_path / "out"))
    export.format.setCurrentIndex(export.format.findData(".tif"))
    qtbot.mouseClick(export.export_button, _left())
    out = tmp_path / "out"
    cleaned, _ = io.read_labels(out / "crop_labels_cleaned.tif")
    changed = cleaned != original.data
    assert np.array_equal(changed, session.region_mask(accepted) & (session.corrected[0] != original.data))
    rows = list(csv.DictReader((out / "curation_log.csv").open()))
    assert [(int(r["region"]), r["decision"]) for r in rows] == [(accepted, "accept"), (rejected, "reject")]
    noise, _ = io.read_array(out / "crop_labels_noise.tif")
    np.testing.assert_array_equal(noise, session.noise[0])
    assert load_checkpoint(out / "model.safetensors").method == "baseline"

    # Replaying the exported log on the original reproduces the export.
    from napari_noisyseg.core.curation import CurationSession

    replay = CurationSession([original.data], ["crop labels"], ["stack"], min_area=session.min_area)
    replay.set_proposals(session.noise, session.corrected, session.reliability)
    replay.apply_decisions(out / "curation_log.csv")
    assert np.array_equal(replay.cleaned[0], cleaned)

    # No silent overwrite: a second export is refused and changes nothing.
    stamp = (out / "curation_log.csv").read_bytes()
    review.decide("undo")
    qtbot.mouseClick(export.export_button, _left())
    assert "exist" in notification_manager.records[-1].message
    assert (out / "curation_log.csv").read_bytes() == stamp
    export.overwrite.setChecked(True)
    qtbot.mouseClick(export.export_button, _left())
    assert (out / "curation_log.csv").read_bytes() != stamp
    assert _hash(original.data) == before


def test_export_of_labels_opened_from_a_file_is_named_after_the_file(viewer, qtbot, tmp_path):
    """An image and its labels saved under one name in two folders (the Decathlon / nnU-Net
    layout) open as "crop_01" and "crop_01 [1]"; the export is crop_01_cleaned.tif."""
    from napari_noisyseg.core import io

    crop = viewer.layers["crop image"].data[0], viewer.layers["crop labels"].data[0]
    image_path = io.write_array(tmp_path / "images" / "crop_01.tif", np.asarray(crop[0], np.float32))
    labels_path = io.write_labels(tmp_path / "labels" / "crop_01.tif", np.asarray(crop[1]))
    viewer.open(str(image_path), plugin=PLUGIN)
    viewer.open(str(labels_path), plugin=PLUGIN)
    assert "crop_01" in viewer.layers and "crop_01 [1]" in viewer.layers
    train = _train_widget(viewer, epochs=1, preview_every=0)
    train.set_pair(0, "crop_01", "crop_01 [1]")
    _run(qtbot, train)
    export = _dock(viewer, "Export")
    export._update()
    assert "crop_01_cleaned.tif" in export.preview.text()
    written = export.export(folder=tmp_path / "out", labels_format=".tif", include=("cleaned", "noise"))
    assert sorted(p.name for p in written) == ["crop_01_cleaned.tif", "crop_01_noise.tif"]
    cleaned, _ = io.read_labels(tmp_path / "out" / "crop_01_cleaned.tif")
    np.testing.assert_array_equal(cleaned, train.state.session.cleaned[0])


def test_save_and_load_model(viewer, qtbot, tmp_path):
    from napari.utils.notifications import notification_manager

    train = _trained(viewer, qtbot)
    corrected = train.state.session.corrected[0].copy()
    path = train.save_model(tmp_path / "model.safetensors")
    assert path.is_file()
    assert train.save_model(tmp_path / "model.safetensors") is None  # no silent overwrite
    assert "exists" in notification_manager.records[-1].message

    job = train.load_model(path)
    qtbot.waitUntil(lambda: not train.state.busy, timeout=60000)
    assert job.outcome.error is None
    assert train.state.result.history.get("loaded")
    np.testing.assert_array_equal(train.state.session.corrected[0], corrected)

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    job = train.load_model(broken)
    qtbot.waitUntil(lambda: not train.state.busy, timeout=30000)
    assert "broken.safetensors" in notification_manager.records[-1].message
    assert train.load_button.isEnabled()


# ----------------------------------------------------------------------------- 3D and Co-Seg


def test_volume_review_moves_the_slider_and_nifti_keeps_the_affine(make_napari_viewer, qtbot, tmp_path):
    """The hippocampus sample: a 3D volume with 3 classes, its own spacing and NIfTI affine."""
    import torch

    from napari_noisyseg.core import io

    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "hippocampus_3d")
    original = viewer.layers["hippocampus labels"]
    before = _hash(original.data)
    train = _dock(viewer, "Train")
    train.set_pair(0, "hippocampus image", "hippocampus labels")
    train.method.setCurrentIndex(train.method.findData("baseline"))
    for spin, value in ((train.epochs, 1), (train.patch_size, 32), (train.batch_size, 8),
                        (train.width, 8), (train.depth, 3), (train.preview_every, 0)):
        spin.setValue(value)
    _run(qtbot, train)
    session = train.state.session
    assert session.modes == ["volume"]
    review = _dock(viewer, "Review")
    assert review._order, "no proposals on the volume"
    region = session.regions[review._order[-1]]
    review.select(region.id)
    z, y, x = session.focus_point(region.id)
    assert viewer.dims.point[0] == pytest.approx(original.data_to_world((z, y, x))[0])
    assert session.region_mask(region.id)[int(z)].any()  # the slider shows the region
    np.testing.assert_allclose(camera_of(viewer).center[-2:], original.data_to_world((z, y, x))[1:], atol=1e-6)
    review.decide("accept")
    mask = session.region_mask(region.id)  # the NIfTI labels are Fortran-ordered: the accept must still land
    np.testing.assert_array_equal(session.cleaned[0][mask], session.corrected[0][mask])
    assert (session.cleaned[0][mask] != original.data[mask]).all()
    np.testing.assert_array_equal(viewer.layers["hippocampus labels cleaned"].data, session.cleaned[0])

    export = _dock(viewer, "Export")
    export.export(folder=tmp_path, labels_format=".nii.gz", include=("cleaned", "noise"))
    stem = io.split_stem(original.metadata["source_path"])[0]  # the sample's file, e.g. hippocampus_148
    labels, meta = io.read_labels(tmp_path / f"{stem}_cleaned.nii.gz")
    np.testing.assert_allclose(meta.affine, original.metadata["affine"])
    assert np.array_equal(labels, session.cleaned[0])
    assert set(np.unique(labels)) <= {0, 1, 2}
    noise, meta = io.read_array(tmp_path / f"{stem}_noise.nii.gz")
    np.testing.assert_allclose(meta.affine, original.metadata["affine"])
    assert _hash(original.data) == before


def test_coseg_retrain_starts_from_the_current_models(viewer, qtbot):
    from napari_noisyseg.methods import REGISTRY

    if "coseg" not in REGISTRY or not callable(getattr(__import__(REGISTRY["coseg"], fromlist=["x"]), "refit", None)):
        pytest.skip("Co-Seg with refit is not registered")
    train = _train_widget(viewer, epochs=2, preview_every=0)
    train.method.setCurrentIndex(train.method.findData("coseg"))
    _run(qtbot, train)
    review = _dock(viewer, "Review")
    if review._order:  # a short Co-Seg run may propose nothing above its confidence threshold
        review.select(review._order[0])
        review.decide("reject")
    cleaned = viewer.layers["crop labels cleaned"]
    cleaned.data_setitem((np.array([0, 0]), np.array([0, 0]), np.array([0, 1])), 1)  # a hand edit
    trust = train.state.session.trust_masks()[0]
    assert trust.any()
    _run(qtbot, train, button=train.retrain_button)
    assert "from the current models" in train.status.text()
    for z, sample in enumerate(train.state.job_dataset.samples):
        assert np.array_equal(sample.trust, trust[z])
    assert train.state.result.method == "coseg"


def test_adele_retrain_trains_on_the_decisions_also_after_load_model(viewer, qtbot, tmp_path):
    """Retrain after ADELE: afresh on the decided labels with no onset during training, the
    earlier run's memorising classes carried; a saved and loaded ADELE model keeps those
    classes, so its Retrain is the same."""
    train = _train_widget(viewer, epochs=2, preview_every=0)
    train.method.setCurrentIndex(train.method.findData("adele"))
    _run(qtbot, train)
    first = train.state.result.history
    _run(qtbot, train, button=train.retrain_button)
    assert "Retraining adele afresh on the decided labels" in train.status.text()
    history = train.state.result.history
    assert history["carried_memorising"] == sorted(int(c) for c, e in first["onset_epoch"].items() if e is not None)
    assert all(epoch is None for epoch in history["onset_epoch"].values())
    job = train.load_model(train.save_model(tmp_path / "adele.safetensors"))
    qtbot.waitUntil(lambda: not train.state.busy, timeout=60000)
    assert job.outcome.error is None
    assert train.state.result.history["refit_state"] == {"memorising_classes": history["carried_memorising"]}
    _run(qtbot, train, button=train.retrain_button)
    assert "Retraining adele afresh on the decided labels" in train.status.text()
    assert train.state.result.history["carried_memorising"] == history["carried_memorising"]


def test_a_loaded_coseg_model_retrains_warm_and_a_new_class_trains_afresh(viewer, qtbot, tmp_path):
    """Yesterday's saved Co-Seg model, loaded today, is what Retrain continues; a class its
    models lack (painted on cleaned) makes Retrain start afresh, and its note says so first."""
    train = _train_widget(viewer, epochs=2, preview_every=0)
    train.method.setCurrentIndex(train.method.findData("coseg"))
    _run(qtbot, train)
    path = train.save_model(tmp_path / "coseg.safetensors")
    job = train.load_model(path)
    qtbot.waitUntil(lambda: not train.state.busy, timeout=60000)
    assert job.outcome.error is None and train.state.result.history.get("loaded")
    _run(qtbot, train, button=train.retrain_button)
    assert "Retraining coseg from the current models" in train.status.text()
    assert train.state.result.history["stage4_start"] == "previous"

    cleaned = viewer.layers["crop labels cleaned"]
    cleaned.data_setitem((np.array([0, 0]), np.array([0, 0]), np.array([0, 1])), 2)  # a new class by hand
    _run(qtbot, train, button=train.retrain_button)
    assert "Retraining coseg from scratch (the labels hold 3 classes, its models 2)" in train.status.text()
    assert train.state.result.n_classes == 3 and train.state.result.history["stage4_start"] != "previous"


def test_closing_the_labels_layer_mid_training_loses_nothing(viewer, qtbot):
    from napari.utils.notifications import notification_manager

    from napari_noisyseg.engine.events import StepEvent

    original = np.array(viewer.layers["crop labels"].data)
    train = _train_widget(viewer, epochs=2, preview_every=0)
    steps = []
    train.state.job_started.connect(lambda job: job.event.connect(
        lambda e: steps.append(e) if isinstance(e, StepEvent) else None))
    qtbot.mouseClick(train.train_button, _left())
    qtbot.waitUntil(lambda: len(steps) >= 1, timeout=60000)
    viewer.layers.remove("crop labels")
    qtbot.waitUntil(lambda: not train.state.busy, timeout=120000)
    assert train.state.job.outcome.error is None
    assert any("closed during training" in r.message for r in notification_manager.records)
    assert np.array_equal(train.state.session.given[0], original)
    assert "crop labels cleaned" in viewer.layers and "crop labels proposals" in viewer.layers


def test_the_whole_loop_as_a_new_user(viewer, qtbot, tmp_path):
    """Issue 4's check in one go, with the default method: train, stop, train again,
    review (accept some, reject some), retrain with the decisions, export, then reopen
    the exported files: exactly the accepted changes are applied and the log matches."""
    from napari_noisyseg.core import io
    from napari_noisyseg.engine.events import StepEvent

    original = viewer.layers["crop labels"]
    before = _hash(original.data)
    train = _train_widget(viewer, epochs=200, preview_every=2)
    train.method.setCurrentIndex(train.method.findData("coseg"))
    assert train.method.currentData() == "coseg"
    steps = []
    train.state.job_started.connect(lambda job: job.event.connect(
        lambda e: steps.append(e) if isinstance(e, StepEvent) else None))
    qtbot.mouseClick(train.train_button, _left())
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=60000)
    qtbot.mouseClick(train.stop_button, _left())
    qtbot.waitUntil(lambda: not train.state.busy, timeout=10000)
    assert train.state.result.stopped

    train.epochs.setValue(40)
    _run(qtbot, train)
    session = train.state.session
    review = _dock(viewer, "Review")
    assert len(review._order) >= 3, "a 40-epoch Co-Seg run on the crop should propose regions"
    accepted, rejected = review._order[:2], review._order[2:3]
    for region in accepted:
        review.select(region)
        _press(viewer, qtbot, "a")
    for region in rejected:
        review.select(region)
        _press(viewer, qtbot, "r")
    decided = {r: session.regions[r].status for r in accepted + rejected}
    assert set(decided.values()) == {"accepted", "rejected"}
    expected = np.array(original.data)
    for region in accepted:
        mask = session.region_mask(region)
        expected[mask] = session.corrected[0][mask]

    _run(qtbot, train, button=train.retrain_button)
    assert session.round == 3 and all(session.regions[r].status == s for r, s in decided.items())

    export = _dock(viewer, "Export")
    export.folder.setText(str(tmp_path / "export"))
    export.format.setCurrentIndex(export.format.findData(".tif"))
    qtbot.mouseClick(export.export_button, _left())
    cleaned, _ = io.read_labels(tmp_path / "export" / "crop_labels_cleaned.tif")
    np.testing.assert_array_equal(cleaned, expected)
    rows = list(csv.DictReader((tmp_path / "export" / "curation_log.csv").open()))
    assert [(int(r["region"]), r["decision"]) for r in rows] == (
        [(r, "accept") for r in accepted] + [(r, "reject") for r in rejected])
    assert _hash(original.data) == before
