"""Review dock widget: go through the proposed regions and decide.

A table of regions sorted by likelihood (or by the reliability of their sample),
next/previous that moves the camera and the dims slider to the region, accept /
reject / undo as buttons and as the keys ``a`` / ``r`` / ``u`` (bound on the
viewer while this widget exists), and a bulk accept above a likelihood
threshold with a preview count. Decisions go to the curation session
(``core.curation``), which keeps the log; this widget only shows it.

After a method comparison (the Compare methods widget) the table's
``agreement`` column holds each region's agreement between the compared
methods, and the sort menu offers "agreement between methods"; otherwise the
column shows "—" and that sort is not offered.
"""

from __future__ import annotations

from functools import partial

from qtpy.QtCore import Qt
from qtpy.QtGui import QBrush, QColor, QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from .controls import scrolling_layout
from .layers import KIND_COLOURS, camera_of, canvas_size
from .state import state_for, unwrap_viewer

COLUMNS = ("id", "sample", "kind", "area", "likelihood", "reliability", "status", "agreement")
STATUS_COLUMN = COLUMNS.index("status")
AGREEMENT_COLUMN = COLUMNS.index("agreement")
SAMPLE_COLUMN = COLUMNS.index("sample")
AGREEMENT_SORT = ("agreement between methods (most agreed first)", "agreement")
NO_VALUE = "—"
STATUS_BACKGROUND = {"pending": None, "accepted": "#2e5d3a", "rejected": "#6a2c2c"}
KEYS = {"a": "accept", "r": "reject", "u": "undo"}
#: The camera shows at least this many data pixels around a region.
MIN_VIEW_PIXELS = 48


def _unbind_keys(viewer, previous: dict) -> None:
    """Give the review keys back to whatever had them before (called when the widget goes)."""
    for key, function in previous.items():
        try:
            viewer.bind_key(key, function, overwrite=True)
        except Exception:  # noqa: BLE001 - the viewer may be closing
            pass


class ReviewWidget(QWidget):
    """The Review dock widget (npe2 command ``napari-noisyseg.review_widget``)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = state_for(napari_viewer)
        self._order: list[int] = []
        self._rows: dict[int, int] = {}
        self.current: int | None = None
        self._build()
        self._bind_keys()
        self.state.session_changed.connect(self.rebuild)
        self.state.decisions_changed.connect(self._on_decisions)
        self.rebuild()

    # ----- layout ---------------------------------------------------------------
    def _build(self) -> None:
        layout = scrolling_layout(self)
        top = QHBoxLayout()
        top.addWidget(QLabel("Sort by"))
        self.sort = QComboBox()
        self.sort.addItem("likelihood (most likely wrong first)", "likelihood")
        self.sort.addItem("sample reliability (least reliable image first)", "reliability")
        self.sort.currentIndexChanged.connect(lambda *_: self.rebuild())
        top.addWidget(self.sort, 1)
        self.pending_only = QCheckBox("pending only")
        self.pending_only.toggled.connect(lambda *_: self.rebuild())
        top.addWidget(self.pending_only)
        layout.addLayout(top)

        self.counts = QLabel("No proposals yet: train or load a model.")
        self.counts.setWordWrap(True)
        layout.addWidget(self.counts)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        # A sample name wrapped in its row ("nuclei labels" over "[0]") was cut at the
        # row's height; on one line with the middle elided the index stays in view, and
        # the tooltip has the whole name.
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selection)
        layout.addWidget(self.table, 1)

        nav = QHBoxLayout()
        self.previous_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.previous_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        nav.addWidget(self.previous_button)
        nav.addWidget(self.next_button)
        layout.addLayout(nav)

        decide = QHBoxLayout()
        self.accept_button = QPushButton("Accept (a)")
        self.reject_button = QPushButton("Reject (r)")
        self.undo_button = QPushButton("Undo (u)")
        self.accept_button.setToolTip("Apply this region's proposed change to the cleaned labels")
        self.reject_button.setToolTip("Keep the original labels here (they are right; trusted when retraining)")
        self.undo_button.setToolTip("Undo the last decision (a bulk accept is one decision)")
        self.accept_button.clicked.connect(lambda: self.decide("accept"))
        self.reject_button.clicked.connect(lambda: self.decide("reject"))
        self.undo_button.clicked.connect(lambda: self.decide("undo"))
        for button in (self.accept_button, self.reject_button, self.undo_button):
            decide.addWidget(button)
        layout.addLayout(decide)

        bulk = QHBoxLayout()
        bulk.addWidget(QLabel("Accept all pending with likelihood ≥"))
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setValue(0.8)
        self.threshold.valueChanged.connect(lambda *_: self._update_bulk())
        bulk.addWidget(self.threshold)
        layout.addLayout(bulk)
        self.bulk_button = QPushButton("Accept 0 regions")
        self.bulk_button.clicked.connect(lambda: self.accept_above())
        layout.addWidget(self.bulk_button)

        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #a0a0a0;")
        layout.addWidget(self.message)

        # The same keys while the keyboard focus is in this dock widget.
        for key, decision in KEYS.items():
            shortcut = QShortcut(QKeySequence(key.upper()), self)
            shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(partial(self.decide, decision))

    # ----- keys on the viewer ----------------------------------------------------
    def _bind_keys(self) -> None:
        previous = {}
        for key, decision in KEYS.items():
            previous[key] = self.viewer.bind_key(key, self._key_handler(decision), overwrite=True)
        self.destroyed.connect(partial(_unbind_keys, self.viewer, previous))

    def _key_handler(self, decision: str):
        def handler(viewer=None):
            self.decide(decision)

        handler.__doc__ = f"NoisySeg review: {decision} the current region"
        return handler

    # ----- table --------------------------------------------------------------------
    @property
    def session(self):
        return self.state.session

    def _sync_sort_options(self) -> None:
        """Offer the agreement sort only while the session has a method comparison."""
        session = self.session
        wanted = session is not None and session.has_agreement
        index = self.sort.findData(AGREEMENT_SORT[1])
        if wanted == (index >= 0):
            return
        self.sort.blockSignals(True)
        if wanted:
            self.sort.addItem(*AGREEMENT_SORT)
        else:
            current = self.sort.currentIndex() == index
            self.sort.removeItem(index)
            if current:
                self.sort.setCurrentIndex(0)  # back to likelihood
        self.sort.blockSignals(False)

    def sort_by(self, key: str) -> None:
        """Sort the table by ``likelihood``, ``reliability`` or (after a comparison) ``agreement``."""
        index = self.sort.findData(key)
        if index < 0:
            raise ValueError(f"cannot sort by {key!r} now; options: "
                             f"{[self.sort.itemData(i) for i in range(self.sort.count())]}")
        self.sort.setCurrentIndex(index)

    def rebuild(self) -> None:
        """Refill the table from the session (order, filter), keeping the current region."""
        session = self.session
        self._sync_sort_options()
        self.table.blockSignals(True)
        self.table.setRowCount(0)
        self._order, self._rows = [], {}
        if session is not None:
            status = "pending" if self.pending_only.isChecked() else None
            regions = session.sorted_regions(self.sort.currentData(), status)
            self.table.setRowCount(len(regions))
            for row, region in enumerate(regions):
                self._order.append(region.id)
                self._rows[region.id] = row
                agreement = NO_VALUE if region.agreement is None else f"{region.agreement:.2f}"
                values = (region.id, region.sample, region.kind, region.area, f"{region.mean_noise:.3f}",
                          f"{region.reliability:.3f}", region.status, agreement)
                for column, value in enumerate(values):
                    item = QTableWidgetItem(str(value))
                    if column in (0, 3):
                        item.setData(Qt.ItemDataRole.DisplayRole, int(value))
                    if column == 2:
                        r, g, b, _ = KIND_COLOURS[region.kind]
                        item.setForeground(QBrush(QColor.fromRgbF(r, g, b)))
                    if column == SAMPLE_COLUMN:  # long layer names are elided in the narrow column
                        item.setToolTip(str(value))
                    if column == AGREEMENT_COLUMN and region.agreement is not None:
                        item.setToolTip("flagged by: " + (", ".join(region.flagged_by) or "no method"))
                    self.table.setItem(row, column, item)
                self._colour_row(row, region.status)
        self.table.blockSignals(False)
        if self.current not in self._rows:
            self.current = None
        if self.current is not None:
            self.table.selectRow(self._rows[self.current])
        self._update_counts()
        self._update_bulk()

    def _colour_row(self, row: int, status: str) -> None:
        colour = STATUS_BACKGROUND.get(status)
        brush = QBrush(QColor(colour)) if colour else QBrush()
        for column in range(self.table.columnCount()):
            item = self.table.item(row, column)
            if item is not None:
                item.setBackground(brush)
                if column == STATUS_COLUMN:
                    item.setText(status)

    def _on_decisions(self) -> None:
        """Update status cells and colours in place (no re-sorting under the person's eyes)."""
        session = self.session
        if session is None:
            return
        if self.pending_only.isChecked():
            self.rebuild()
            return
        for rid in self.state.last_decided:  # only the rows that changed
            region = session.regions.get(rid)
            if region is not None and rid in self._rows:
                self._colour_row(self._rows[rid], region.status)
        self._update_counts()
        self._update_bulk()

    def _update_counts(self) -> None:
        session = self.session
        if session is None:
            self.counts.setText("No proposals yet: train or load a model.")
            return
        c = session.counts()
        edits = sum(int(session.manual_edits(s).sum()) for s in range(len(session.names)))
        text = f"{c['pending']} pending · {c['accepted']} accepted · {c['rejected']} rejected"
        if edits:
            text += f" · {edits} hand-edited pixels"
        self.counts.setText(text)
        self.undo_button.setEnabled(session.can_undo())

    def _update_bulk(self) -> None:
        n = self.session.count_above(self.threshold.value()) if self.session is not None else 0
        self.bulk_button.setText(f"Accept {n} region{'s' if n != 1 else ''} (likelihood ≥ {self.threshold.value():.2f})")
        self.bulk_button.setEnabled(n > 0)

    # ----- navigation ---------------------------------------------------------------
    def _on_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        rid = self._order[rows[0].row()]
        if rid != self.current:
            self.current = rid
            self.go_to(rid)

    def select(self, rid: int) -> None:
        """Make ``rid`` the current region: select its row and move the view to it."""
        self.current = int(rid)
        if self.current in self._rows:
            self.table.blockSignals(True)
            self.table.selectRow(self._rows[self.current])
            self.table.blockSignals(False)
            self.table.scrollToItem(self.table.item(self._rows[self.current], 0))
        self.go_to(self.current)

    def step(self, direction: int) -> int | None:
        """Go to the next (``+1``) or previous (``-1``) region in table order; returns its id."""
        if not self._order:
            return None
        if self.current not in self._rows:
            index = 0 if direction > 0 else len(self._order) - 1
        else:
            index = (self._rows[self.current] + direction) % len(self._order)
        self.select(self._order[index])
        return self.current

    def _next_pending(self) -> int | None:
        """The next pending region after the current one (wrapping), or None."""
        session = self.session
        if session is None or not self._order:
            return None
        start = self._rows.get(self.current, -1)
        for offset in range(1, len(self._order) + 1):
            rid = self._order[(start + offset) % len(self._order)]
            if session.regions[rid].status == "pending":
                return rid
        return None

    def go_to(self, rid: int) -> None:
        """Centre the camera on the region, zoom to it and move the sliders to its slice."""
        session = self.session
        if session is None or rid not in session.regions:
            return
        region = session.regions[rid]
        layer = self.state.overlays.get(region.source, "cleaned")
        if layer is None and region.source in self.viewer.layers:
            layer = self.viewer.layers[region.source]
        focus = session.focus_point(rid)
        ndim = len(focus)
        if layer is not None:
            world = [float(v) for v in layer.data_to_world(focus)]
            scale = [abs(float(v)) for v in layer.scale[-ndim:]]
        else:
            world, scale = list(focus), [1.0] * ndim
        offset = self.viewer.dims.ndim - ndim
        displayed = [axis for axis in self.viewer.dims.displayed]
        for axis in range(self.viewer.dims.ndim):
            if axis not in displayed and 0 <= axis - offset < ndim:
                if abs(self.viewer.dims.point[axis] - world[axis - offset]) > 1e-9:  # re-slicing costs
                    self.viewer.dims.set_point(axis, world[axis - offset])
        shown = [axis - offset for axis in displayed if 0 <= axis - offset < ndim]
        camera = camera_of(self.viewer)
        if len(shown) == len(displayed):
            camera.center = tuple(world[a] for a in shown)
        low, high = region.bbox[:ndim], region.bbox[ndim:]
        extents = [max(h - l, MIN_VIEW_PIXELS) * scale[a] for a, (l, h) in enumerate(zip(low, high))]
        size = canvas_size(self.viewer)
        if self.viewer.dims.ndisplay == 2 and len(shown) == 2:
            zoom = min(size[0] / (extents[shown[0]] * 2.5), size[1] / (extents[shown[1]] * 2.5))
            camera.zoom = max(zoom, 1e-3)
        agreement = "" if region.agreement is None else (
            f", agreement {region.agreement:.2f} (flagged by {', '.join(region.flagged_by) or 'no method'})")
        self.message.setText(f"Region {rid}: {region.kind}, {region.area} px in {region.sample}, "
                             f"likelihood {region.mean_noise:.2f}{agreement}, {region.status}.")

    # ----- decisions -------------------------------------------------------------------
    def decide(self, decision: str):
        """Accept / reject the current region (then go to the next pending one), or undo."""
        session = self.session
        if session is None:
            return None
        if decision == "undo":
            ids = self.state.undo()
            if ids:
                self.select(ids[-1])
                self.message.setText(f"Undid the decision on region{'s' if len(ids) > 1 else ''} "
                                     f"{', '.join(map(str, ids))}.")
            return ids
        if self.current is None or self.current not in session.regions:
            self.message.setText("Select a region first (click a row, or Next).")
            return None
        rid = self.current
        changed = self.state.decide(decision, [rid])
        self.message.setText(f"Region {rid} {decision}ed ({changed} pixels of cleaned changed).")
        following = self._next_pending()
        if following is not None:
            self.select(following)
        return changed

    def accept_above(self) -> list[int]:
        """Accept every pending region with likelihood ≥ the threshold (one undoable step)."""
        ids = self.state.accept_above(self.threshold.value())
        self.message.setText(f"Accepted {len(ids)} regions in one step (u undoes it).")
        return ids
