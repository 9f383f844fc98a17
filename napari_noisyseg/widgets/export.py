"""Export dock widget: cleaned labels, noise maps, the curation log and the model.

Files are written by :func:`napari_noisyseg.core.export.export_session`
through the atomic writers of :mod:`napari_noisyseg.core.io`; nothing is
replaced unless "overwrite" is ticked (then the whole export is checked first,
so a refused export writes nothing). NIfTI exports reuse the affine the reader
stored in the labels layer's ``metadata["affine"]``.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QWidget,
)

from ..core.export import export_session, export_targets
from .controls import scrolling_layout
from .state import state_for, unwrap_viewer

FORMATS = {
    "TIFF (.tif)": ".tif",
    "PNG (.png, one file per slice for stacks)": ".png",
    "NIfTI (.nii.gz, with the source's affine)": ".nii.gz",
    "NumPy (.npy)": ".npy",
}
CONTENTS = {
    "cleaned": "cleaned labels",
    "noise": "noise map (float32, 0..1)",
    "log_csv": "curation log (CSV)",
    "log_json": "curation log (JSON, with the region table)",
    "checkpoint": "model checkpoint (.safetensors)",
}


class ExportWidget(QWidget):
    """The Export dock widget (npe2 command ``napari-noisyseg.export_widget``)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = state_for(napari_viewer)
        self._build()
        self.state.session_changed.connect(self._update)
        self.state.decisions_changed.connect(self._update)
        self._update()

    def _build(self) -> None:
        layout = scrolling_layout(self)
        form = QFormLayout()
        folder_row = QHBoxLayout()
        self.folder = QLineEdit(str(Path.cwd() / "noisyseg_export"))
        self.folder.setToolTip("Output folder (created if missing)")
        browse = QToolButton()
        browse.setText("…")
        browse.clicked.connect(self._browse)
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        form.addRow("Folder", folder_row)
        self.format = QComboBox()
        for label, ext in FORMATS.items():
            self.format.addItem(label, ext)
        self.format.currentIndexChanged.connect(lambda *_: self._update())
        form.addRow("Labels format", self.format)
        layout.addLayout(form)

        self.contents = {}
        for key, label in CONTENTS.items():
            box = QCheckBox(label)
            box.setChecked(True)
            box.toggled.connect(lambda *_: self._update())
            self.contents[key] = box
            layout.addWidget(box)
        self.overwrite = QCheckBox("overwrite existing files")
        self.overwrite.setToolTip("Without it, an export that would replace any file writes nothing")
        layout.addWidget(self.overwrite)

        self.preview = QLabel()
        self.preview.setWordWrap(True)
        self.preview.setStyleSheet("color: #a0a0a0;")
        self.preview.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.preview)
        self.export_button = QPushButton("Export")
        self.export_button.clicked.connect(lambda: self.export())
        layout.addWidget(self.export_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder", self.folder.text())
        if folder:
            self.folder.setText(folder)
            self._update()

    def include(self) -> tuple:
        return tuple(key for key, box in self.contents.items() if box.isChecked())

    def _update(self) -> None:
        session = self.state.session
        has_model = self.state.result is not None and bool(self.state.result.models)
        self.contents["checkpoint"].setEnabled(has_model)
        if session is None:
            self.preview.setText("Nothing to export yet: train or load a model first.")
            self.export_button.setEnabled(False)
            return
        include = tuple(k for k in self.include() if k != "checkpoint" or has_model)
        targets = export_targets(session, self.folder.text(), self.format.currentData(), include,
                                 file_stems=self._file_stems(self._session_inputs()))
        files = [p for paths in targets.values() for p in paths]
        counts = session.counts()
        names = ", ".join(p.name for p in files[:6]) + (f" … ({len(files)} files)" if len(files) > 6 else "")
        self.preview.setText(f"{counts['accepted']} accepted, {counts['rejected']} rejected, "
                             f"{len(session.log)} log rows. Writes: {names}")
        self.export_button.setEnabled(bool(files))

    def _session_inputs(self) -> list | None:
        """The layer pairs the session's sources were taken from, in its order (None if they differ)."""
        session, inputs = self.state.session, self.state.inputs
        if session is None or [pair.labels_name for pair in inputs] != list(session.names):
            return None
        return inputs

    @staticmethod
    def _file_stems(inputs) -> list | None:
        """Per source of ``inputs`` (:meth:`_session_inputs`), the stem of the labels file it
        was opened from (None for drawn labels)."""
        return None if inputs is None else [pair.file_stem for pair in inputs]

    def export(self, folder=None, labels_format=None, include=None, overwrite=None) -> list:
        """Write the export; returns the written paths (empty on error, with a notification)."""
        from napari.utils.notifications import show_error, show_info

        session = self.state.session
        if session is None:
            show_error("Nothing to export yet: train or load a model first.")
            return []
        folder = folder or self.folder.text()
        labels_format = labels_format or self.format.currentData()
        has_model = self.state.result is not None and bool(self.state.result.models)
        include = tuple(include if include is not None else
                        [k for k in self.include() if k != "checkpoint" or has_model])
        overwrite = self.overwrite.isChecked() if overwrite is None else overwrite
        inputs = self._session_inputs()
        metas = None if inputs is None else [pair.meta for pair in inputs]
        try:
            written = export_session(session, folder, labels_format, include, metas=metas,
                                     result=self.state.result, overwrite=overwrite, file_stems=self._file_stems(inputs))
        except (OSError, ValueError) as error:
            message = f"Export failed: {error}"
            self.status.setText(message)
            show_error(message)
            return []
        message = f"Exported {len(written)} file(s) to {folder}."
        self.status.setText(message)
        show_info(message)
        return written
