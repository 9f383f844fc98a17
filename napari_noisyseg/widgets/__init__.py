"""napari dock widgets of NoisySeg: Train, Review, Export and Compare methods (Qt via qtpy).

The widgets are thin: they build a config, start a worker, show its events and
call ``core`` functions. Importing this package does not import Qt; the widget
classes are loaded on first access (napari imports them through the manifest).
"""

from __future__ import annotations

import importlib

_WIDGETS = {
    "TrainWidget": "napari_noisyseg.widgets.train",
    "ReviewWidget": "napari_noisyseg.widgets.review",
    "ExportWidget": "napari_noisyseg.widgets.export",
    "CompareWidget": "napari_noisyseg.widgets.compare",
}

__all__ = list(_WIDGETS)


def __getattr__(name):
    if name in _WIDGETS:
        return getattr(importlib.import_module(_WIDGETS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
