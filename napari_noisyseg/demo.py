"""Open napari with a NoisySeg sample and the plugin's dock widgets.

Usage::

    python -m napari_noisyseg.demo                         # nuclei_2d, interactive
    python -m napari_noisyseg.demo --sample hippocampus_3d
    python -m napari_noisyseg.demo --screenshot demo.png   # draw, save, exit

``--screenshot`` waits until the window has been drawn and its docks have settled
(``--wait-ms``, then until they stop moving), saves the whole window
(``viewer.screenshot(path, canvas_only=False)``) and exits; it is what CI and
checks use. On Linux without a display it needs a virtual one, e.g.
``xvfb-run -a python -m napari_noisyseg.demo --screenshot demo.png`` (``make demo``
does that for you).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PLUGIN = "napari-noisyseg"
SAMPLES = ("nuclei_2d", "hippocampus_3d")


def _has_display() -> bool:
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# Two docks on the right, each with two tabs, in the workflow's order: Train (or Compare
# methods, the other way to get proposals), then Review (then Export, the last step). Four
# docks stacked made the window 1732 px tall on a 1024-px screen; the widgets scroll in a
# short dock (widgets.controls.ScrollingPanel), but two docks leave each more to show.
DOCK_LAYOUT = (("Train", "Compare methods"), ("Review", "Export"))


def widget_names() -> list[str]:
    """Display names of the dock widgets in the plugin's manifest (maybe none yet)."""
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest(PLUGIN)
    return [w.display_name for w in (manifest.contributions.widgets or [])]


def build_viewer(sample: str = "nuclei_2d", show: bool = True):
    """A viewer with ``sample`` opened and every plugin dock widget docked (``DOCK_LAYOUT``)."""
    import napari

    viewer = napari.Viewer(title=f"NoisySeg demo: {sample}", show=show)
    viewer.open_sample(PLUGIN, sample)
    names = widget_names()
    tabs = [name for group in DOCK_LAYOUT for name in group]
    # napari tabifies a new dock with the last one added, so each group is added in a row.
    names.sort(key=lambda name: tabs.index(name) if name in tabs else len(tabs))
    tabbed = {name for group in DOCK_LAYOUT for name in group[1:]}
    docks = {}
    for name in names:
        docks[name], _ = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=name in tabbed)
    from qtpy.QtCore import QTimer

    from .widgets.controls import DockColumnWidth

    DockColumnWidth(viewer.window._qt_window, list(docks.values()))  # the window owns it
    # Once the window is laid out: raising a tab earlier leaves the last one added in front.
    QTimer.singleShot(0, lambda: _arrange(viewer, [d for n, d in docks.items() if n not in tabbed]))
    # The labels to curate are the selected layer; show it over the image.
    for layer in viewer.layers:
        if layer.name.endswith(" labels"):
            viewer.layers.selection.active = layer
    return viewer


def _arrange(viewer, stacked: list) -> None:
    """Bring the stacked docks (each group's first tab) to the front and share the height
    between them as their content asks."""
    from qtpy.QtCore import Qt

    window = getattr(viewer.window, "_qt_window", None)
    if window is None:  # closed before the timer fired
        return
    for dock in stacked:
        dock.raise_()
    heights = [dock.widget().sizeHint().height() for dock in stacked]
    window.resizeDocks(stacked, heights, Qt.Orientation.Vertical)


def _layout_signature(window) -> tuple:
    """Where every visible dock is and how wide its content asks to be."""
    from qtpy.QtWidgets import QDockWidget

    return tuple(
        (dock.geometry().getRect(), dock.widget().minimumSizeHint().width())
        for dock in window.findChildren(QDockWidget)
        if dock.isVisible() and dock.widget() is not None
    )


def _when_settled(window, then, poll_ms: int = 250, steady_polls: int = 2, max_ms: int = 15000) -> None:
    """Call ``then`` once the window's docks have kept their place for ``steady_polls``
    polls (or after ``max_ms``).

    napari's style sheet reaches the docks some time after the window shows, and the
    docks then widen for the larger font; on a busy 2-core machine that came after a
    fixed 1.5-s wait in some runs, and the screenshot showed the docks half-way.
    """
    from qtpy.QtCore import QTimer

    state = {"last": None, "steady": 0, "waited": 0}

    def poll():
        signature = _layout_signature(window)
        state["steady"] = state["steady"] + 1 if signature == state["last"] else 0
        state["last"] = signature
        state["waited"] += poll_ms
        if state["steady"] >= steady_polls or state["waited"] >= max_ms:
            then()
        else:
            QTimer.singleShot(poll_ms, poll)

    poll()


def _save_and_quit(viewer, path: Path, status: dict) -> None:
    from qtpy.QtWidgets import QApplication

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(path), canvas_only=False)
        print(f"screenshot saved to {path}")
        status["rc"] = 0
    except Exception as exc:  # noqa: BLE001 - report and exit non-zero
        print(f"screenshot failed: {exc}", file=sys.stderr)
        status["rc"] = 1
    finally:
        viewer.close()
        QApplication.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m napari_noisyseg.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", choices=SAMPLES, default="nuclei_2d",
                        help="which sample data to open (default: %(default)s)")
    parser.add_argument("--screenshot", type=Path, metavar="PATH",
                        help="save a screenshot of the whole window to PATH and exit")
    parser.add_argument("--wait-ms", type=int, default=1500,
                        help="with --screenshot: how long to let the window draw before waiting for "
                             "its docks to settle")
    args = parser.parse_args(argv)

    if not _has_display():
        print(
            "napari_noisyseg.demo: no display (DISPLAY is not set). Run it under a desktop "
            "session, or headless as `xvfb-run -a python -m napari_noisyseg.demo "
            "--screenshot demo.png` (`make demo` does this automatically).",
            file=sys.stderr,
        )
        return 2

    import napari
    from qtpy.QtCore import QTimer

    viewer = build_viewer(args.sample, show=True)
    if args.screenshot is None:
        napari.run()
        return 0

    # The whole screen, not the size napari saved from its last window (a test's small
    # virtual screen, say), so that the screenshot shows the same layout every time.
    window = viewer.window._qt_window
    window.setGeometry(window.screen().availableGeometry())
    status = {"rc": 1}
    QTimer.singleShot(max(0, args.wait_ms), lambda: _when_settled(
        window, lambda: _save_and_quit(viewer, args.screenshot, status)))
    napari.run(force=True)
    return status["rc"]


if __name__ == "__main__":
    raise SystemExit(main())
