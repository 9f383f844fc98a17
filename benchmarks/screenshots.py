"""Screenshots of the plugin in a real napari window, for the README (``make screenshots``).

Opens napari on the nuclei sample, docks the Train / Review / Export widgets,
runs a short Co-Seg training (or the baseline when Co-Seg is not registered;
30 epochs, about 1.5 min on two CPU cores) on a 2 x 256 x 320 crop of the sample, and saves whole-window PNGs to ``docs/screenshots/``:

1. ``train.png``   the Train widget mid-training, with the live loss / IoU plot;
2. ``noise.png``   the noise overlay (magma, additive) over the image;
3. ``review.png``  the Review table with a proposal selected (camera on it),
                   after a few decisions;
4. ``export.png``  the Export widget, after an export.

Needs a display: ``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/screenshots.py``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-noisyseg"


def _process(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def _only(docks: dict, name: str) -> None:
    """Show one of the plugin's docks (the others stay docked but hidden)."""
    for key, dock in docks.items():
        dock.setVisible(key == name)
    _process(0.3)


def _save(viewer, path: Path) -> None:
    _process(0.5)
    viewer.screenshot(str(path), canvas_only=False)
    print(f"saved {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--method", default=None, help="default: coseg if registered, else baseline")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", default="1600x1000", help="window size WxH")
    args = parser.parse_args(argv)

    import napari
    import torch

    from napari_noisyseg.engine.events import EpochEvent
    from napari_noisyseg.methods import REGISTRY
    from napari_noisyseg.widgets.layers import camera_of

    torch.manual_seed(0)
    method = args.method or ("coseg" if "coseg" in REGISTRY else "baseline")
    args.out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))

    viewer = napari.Viewer(title="napari-noisyseg", show=True)
    viewer.window._qt_window.resize(width, height)
    viewer.open_sample(PLUGIN, "nuclei_2d")
    # A crop keeps the demo training short on a laptop CPU (the widgets work the same on the full stack).
    for name in ("nuclei image", "nuclei labels", "nuclei clean (reference)"):
        layer = viewer.layers[name]
        layer.data = np.array(layer.data[:2, :256, :320])
    docks = {}
    widgets = {}
    for name in ("Train", "Review", "Export"):
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    train, review, export = widgets["Train"], widgets["Review"], widgets["Export"]
    _only(docks, "Train")
    viewer.reset_view()

    train.set_pair(0, "nuclei image", "nuclei labels")
    train.method.setCurrentIndex(max(0, train.method.findData(method)))
    train.epochs.setValue(args.epochs)
    train.patch_size.setValue(128)
    train.batch_size.setValue(4)
    train.width.setValue(16)
    train.depth.setValue(3)
    train.preview_every.setValue(10)

    shots = {"train": False}

    def on_event(event):
        if isinstance(event, EpochEvent) and event.epoch >= min(12, args.epochs - 2) and not shots["train"]:
            shots["train"] = True
            _save(viewer, args.out / "train.png")

    train.state.job_started.connect(lambda job: job.event.connect(on_event))
    job = train.train()
    try:  # show napari's activity dock with the progress bar (private API; cosmetic only)
        viewer.window._status_bar._toggle_activity_dock(True)
    except Exception:  # noqa: BLE001
        pass
    if job is None:
        print(f"training did not start: {train.status.text()}", file=sys.stderr)
        return 1
    train.state.wait_idle(1800)
    if job.outcome.error is not None:
        print(f"training failed: {job.outcome.error}", file=sys.stderr)
        return 1
    if not shots["train"]:
        _save(viewer, args.out / "train.png")
    try:
        viewer.window._status_bar._toggle_activity_dock(False)
    except Exception:  # noqa: BLE001
        pass

    # 2. The noise overlay: image + noise (additive magma), proposals and cleaned hidden.
    labels_name = "nuclei labels"
    for layer in viewer.layers:
        layer.visible = layer.name in ("nuclei image", f"{labels_name} noise")
    viewer.layers.selection.active = viewer.layers[f"{labels_name} noise"]
    viewer.reset_view()
    _save(viewer, args.out / "noise.png")

    # 3. Review: a few decisions, then a pending proposal selected and framed.
    for layer in viewer.layers:
        layer.visible = layer.name in ("nuclei image", f"{labels_name} proposals", f"{labels_name} cleaned")
    viewer.layers[f"{labels_name} cleaned"].opacity = 0.35
    viewer.layers.selection.active = viewer.layers[f"{labels_name} proposals"]
    _only(docks, "Review")
    review.step(1)
    review.decide("accept")
    review.decide("reject")
    review.decide("accept")
    _process(0.3)
    if camera_of(viewer).zoom < 1.0:
        camera_of(viewer).zoom = 1.0
    _save(viewer, args.out / "review.png")

    # 4. Export, into a throw-away folder.
    _only(docks, "Export")
    folder = Path(tempfile.gettempdir()) / "noisyseg_screenshot_export"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        export.folder.setText(str(folder))
        export.format.setCurrentIndex(export.format.findData(".tif"))
        export.export()
        _save(viewer, args.out / "export.png")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
