"""Compare methods dock widget: several methods, one budget, their noise maps side by side.

Tick two or more methods, pick the image and labels layers, and Compare: the
methods train one after the other in a background worker
(:func:`napari_noisyseg.pipeline.compare_methods`), each with the same budget,
seed and network. Then, beside the untouched original labels ``L``:

* ``L noise [M]``  the noise map of every method ``M`` (magma, additive; only
                   the first method's is shown, tick the others in the layer list);
* ``L agreement``  per pixel, the fraction of methods that flag it (noise ≥ threshold);
* the usual ``L noise`` / ``L proposals`` / ``L cleaned`` of the **first** ticked
  method, whose regions the Review widget lists with their agreement (sort the
  table by "agreement between methods": where methods agree a proposal is more
  credible).

A table here shows, per method, its wall time, mean noise, flagged pixels and
mean Dice of its flagged pixels with the other methods'. Stop ends the running
method within a step (its result is kept) and skips the rest. Everything is
wiring: the comparison lives in :mod:`napari_noisyseg.pipeline` and
:mod:`napari_noisyseg.core.agreement`, the review state in the curation session.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..engine.device import available_devices
from ..engine.events import EpochEvent, ErrorEvent, StateEvent
from ..methods import TrainConfig, available_methods
from .layers import layer_choices
from .state import state_for, unwrap_viewer
from .train import PairRow
from .controls import BudgetPicker, Collapsible, scrolling_layout, spin
from .worker import warm_up

#: Ticked when the widget opens (the default method and the out-of-fold detector).
DEFAULT_TICKED = ("coseg", "confident")
RESULT_COLUMNS = ("method", "wall s", "mean noise", "flagged %", "agreement")


class CompareWidget(QWidget):
    """The Compare methods dock widget (npe2 command ``napari-noisyseg.compare_widget``)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = state_for(napari_viewer)
        self.job = None
        self.comparison = None
        self.reviewed = None  # the method whose proposals the Review table holds
        self._starting = False
        self._inputs = []
        self._holder: dict = {}
        self._methods_seen = 0
        self._build()
        self._connect()
        self.refresh_layers()
        warm_up()

    # ----- layout ---------------------------------------------------------------
    def _build(self) -> None:
        layout = scrolling_layout(self)
        self.pair = PairRow()
        self.pair.remove.hide()
        layout.addWidget(self.pair)

        hint = QLabel("Methods (drag to reorder; the first ticked one's proposals go to Review, "
                      "another's from the results table below):")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        self.method_list = QListWidget()
        self.method_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.method_list.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        methods = available_methods()
        order = [m for m in DEFAULT_TICKED if m in methods] + [m for m in methods if m not in DEFAULT_TICKED]
        for name in order:
            summary = methods[name]
            item = QListWidgetItem(name)
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setToolTip(summary)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in DEFAULT_TICKED else Qt.CheckState.Unchecked)
            self.method_list.addItem(item)
        self.method_list.setMaximumHeight(self.method_list.sizeHintForRow(0) * (self.method_list.count() + 1))
        self.method_list.itemChanged.connect(lambda *_: self._update_buttons())
        layout.addWidget(self.method_list)

        form = QFormLayout()
        self.budget = BudgetPicker(epochs=30, minutes=2.0)
        self.by_epochs, self.by_minutes = self.budget.by_epochs, self.budget.by_minutes
        self.epochs, self.minutes = self.budget.epochs, self.budget.minutes
        form.addRow("Budget (each)", self.budget)
        layout.addLayout(form)

        advanced = Collapsible("Advanced settings")
        self.advanced_toggle, self.advanced, adv = advanced.toggle, advanced.body, advanced.form
        layout.addWidget(self.advanced_toggle)
        defaults = TrainConfig()
        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        for device in available_devices():
            self.device.addItem(device, device)
        self.patch_size = spin(32, 1024, defaults.patch_size, 16)
        self.batch_size = spin(1, 256, defaults.batch_size)
        self.width = spin(4, 128, defaults.width)
        self.depth = spin(1, 6, defaults.depth)
        self.seed = spin(0, 2**31 - 1, defaults.seed)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip("A method flags a pixel when its noise likelihood is at least this")
        for label, widget in (("device", self.device), ("patch size", self.patch_size),
                              ("batch size", self.batch_size), ("U-Net width", self.width),
                              ("U-Net depth", self.depth), ("seed (all methods)", self.seed),
                              ("flag threshold", self.threshold)):
            adv.addRow(label, widget)
        layout.addWidget(self.advanced)

        buttons = QHBoxLayout()
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Train every ticked method with this budget, one after the other")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the running method (its result is kept) and skip the rest")
        self.compare_button.clicked.connect(lambda: self.compare())
        self.stop_button.clicked.connect(self.stop)
        buttons.addWidget(self.compare_button)
        buttons.addWidget(self.stop_button)
        layout.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        layout.addWidget(self.progress)
        self.status = QLabel("Tick two or more methods, choose the layers, then Compare.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)

        self.results = QTableWidget(0, len(RESULT_COLUMNS))
        self.results.setHorizontalHeaderLabels(list(RESULT_COLUMNS))
        self.results.verticalHeader().setVisible(False)
        self.results.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.results.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.results.horizontalHeaderItem(4).setToolTip(
            "Mean Dice of the pixels this method flags with those each other method flags")
        self.results.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.results.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.results.itemSelectionChanged.connect(self._update_buttons)
        layout.addWidget(self.results, 1)
        self.review_button = QPushButton("Review this method's proposals")
        self.review_button.setToolTip(
            "Put the selected method's proposals in the Review table, as a new round: decisions made "
            "so far are kept, and nothing is trained again")
        self.review_button.clicked.connect(lambda: self.review_method())
        layout.addWidget(self.review_button)

    # ----- viewer ---------------------------------------------------------------
    def _connect(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self.refresh_layers)
        events.removed.connect(self.refresh_layers)
        self.state.job_started.connect(self._on_job_started)
        self.state.job_finished.connect(self._on_job_finished)

        def disconnect(*_):
            for signal in (events.inserted, events.removed):
                try:
                    signal.disconnect(self.refresh_layers)
                except (TypeError, ValueError, RuntimeError):
                    pass

        self.destroyed.connect(disconnect)

    def refresh_layers(self, event=None) -> None:
        """Refill the layer pickers, keeping the current choices when they still exist."""
        try:
            images, labels = layer_choices(self.viewer)
            self.pair.fill(images, labels, labels[-1] if labels else None)
        except RuntimeError:  # the widget is being deleted
            return
        self._update_buttons()

    def set_pair(self, image: str, labels: str, mode: str = "auto") -> None:
        self.pair.image.setCurrentText(image)
        self.pair.labels.setCurrentText(labels)
        self.pair.mode.setCurrentIndex(max(0, self.pair.mode.findData(mode)))

    # ----- settings ---------------------------------------------------------------
    def methods(self) -> list[str]:
        """The ticked methods, in list order (the first is the reference)."""
        items = [self.method_list.item(i) for i in range(self.method_list.count())]
        return [item.data(Qt.ItemDataRole.UserRole) for item in items
                if item.checkState() == Qt.CheckState.Checked]

    def set_methods(self, names) -> None:
        """Tick exactly ``names`` and move them to the top in this order (the first is the reference)."""
        names = list(names)
        for position, name in enumerate(names):
            for i in range(self.method_list.count()):
                if self.method_list.item(i).data(Qt.ItemDataRole.UserRole) == name:
                    self.method_list.insertItem(position, self.method_list.takeItem(i))
                    break
            else:
                raise ValueError(f"unknown method {name!r}")
        for i in range(self.method_list.count()):
            item = self.method_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) in names
                               else Qt.CheckState.Unchecked)

    def config_kwargs(self) -> dict:
        """The settings every method gets (budget, seed, network, device)."""
        return dict(
            epochs=self.budget.budget()[0],
            minutes=self.budget.budget()[1],
            device=self.device.currentData() or "auto",
            seed=int(self.seed.value()),
            patch_size=int(self.patch_size.value()),
            batch_size=int(self.batch_size.value()),
            width=int(self.width.value()),
            depth=int(self.depth.value()),
        )

    # ----- actions ------------------------------------------------------------------
    def compare(self):
        """Start the comparison; returns the job (None if it could not start)."""
        from ..pipeline import compare_methods, resolve_methods

        try:
            methods = resolve_methods(self.methods())
            inputs = self.state.snapshot([self.pair.value()])
        except (ValueError, KeyError) as error:
            return self._fail(f"Cannot compare: {error}")
        kwargs = self.config_kwargs()
        threshold = float(self.threshold.value())
        state = self.state
        holder: dict = {}

        def task(progress):
            dataset = state.build(inputs)
            state.job_dataset = dataset
            comparison = compare_methods(dataset, methods, kwargs, progress, threshold=threshold)
            holder["comparison"], holder["dataset"] = comparison, dataset
            holder["reviewed"] = comparison.reference
            return dataset, comparison.reference_result, comparison.agreement

        self._holder, self._inputs, self._methods_seen = holder, inputs, 0
        self.progress.setRange(0, len(methods))
        self.progress.setValue(0)
        return self._start(inputs, task, f"Comparing {', '.join(methods)}…")

    def _start(self, inputs, task, status: str):
        """Start ``task`` as this widget's job; returns it (None if it could not start)."""
        self._starting = True  # job_started comes before start_job returns: know it is ours
        try:
            self.job = self.state.start_job("compare", inputs, task)
        except RuntimeError as error:
            self.job = None
            return self._fail(str(error))
        finally:
            self._starting = False
        self._set_status(status)
        return self.job

    def selected_method(self) -> str | None:
        """The method of the selected row of the results table."""
        rows = self.results.selectionModel().selectedRows()
        item = self.results.item(rows[0].row(), 0) if rows else None
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def review_method(self, method: str | None = None):
        """Put ``method``'s proposals (default: the selected row's) in the Review table.

        They come as a new round of the current session, as a retraining's do: the
        decisions made so far stay, and the regions are found against the labels as
        cleaned now. Nothing is trained. Returns the job (None if it could not start).
        """
        comparison, holder = self.comparison, self._holder
        method = method or self.selected_method()
        if comparison is None or method not in comparison.runs or holder.get("comparison") is not comparison:
            return self._fail(f"Cannot review {method!r}: compare first, then select one of the methods that ran")
        dataset, result, state = holder["dataset"], comparison.runs[method].result, self.state

        def task(progress):
            state.job_dataset = dataset
            return dataset, result, comparison.agreement

        self._holder = {**holder, "reviewed": method}
        return self._start(self._inputs, task, f"Finding {method}'s proposals…")

    def stop(self) -> None:
        if self.job is not None and self.job.running:
            self.job.request_stop()
            self.stop_button.setEnabled(False)
            self._set_status("Stopping… (the running method keeps what it learnt; the others are skipped)")

    # ----- job events -----------------------------------------------------------------
    def _on_job_started(self, job) -> None:
        """Connected before the job's thread starts, so no event is missed."""
        if self._starting:
            self.job = job
            job.event.connect(self._on_event)
        self._update_buttons()

    def _on_event(self, event) -> None:
        if isinstance(event, StateEvent) and event.state == "comparing":
            self._methods_seen += 1
            self.progress.setValue(self._methods_seen - 1)
            self.progress.setFormat(f"{self._methods_seen}/{self.progress.maximum()}")
            self._set_status(event.message)
        elif isinstance(event, EpochEvent):
            self.progress.setFormat(f"{self._methods_seen}/{self.progress.maximum()}: "
                                    f"epoch {event.count_text}")
        elif isinstance(event, ErrorEvent):
            self._fail(event.message)

    def _on_job_finished(self, outcome) -> None:
        job = self.job
        if job is None or job.outcome is not outcome:  # another widget's job
            self._update_buttons()
            return
        self.job = None
        self._update_buttons()
        if outcome.error is not None:
            return  # already reported by the ErrorEvent
        comparison = self._holder.get("comparison")
        self.progress.setValue(self.progress.maximum())
        if comparison is None or not comparison.runs:
            self._set_status("Stopped before any method finished.")
            return
        self.comparison = self.state.comparison = comparison
        for s, pair in enumerate(self._inputs):
            self.state.overlays.show_comparison(
                pair.labels_name, {m: comparison.noise[m][s] for m in comparison.methods},
                comparison.agreement.maps[s], pair.geometry)
        self._show_results(comparison)
        session = self.state.session
        pending = session.counts()["pending"] if session is not None else 0
        reviewed = self._holder.get("reviewed", comparison.reference)
        if reviewed != comparison.reference or self._holder.get("shown"):  # a second look, nothing trained
            parts = [f"Reviewing {reviewed}'s proposals: {pending} regions pending (earlier decisions kept)."]
        else:
            parts = [f"Compared {', '.join(comparison.methods)} in {outcome.seconds:.0f} s."]
            if comparison.not_run:
                parts.append(f"Stopped: {', '.join(comparison.not_run)} did not run.")
            parts.append(f"{pending} regions of {reviewed} to review; sort the Review table by "
                         "agreement between methods, or select another method below to review its proposals.")
        self._holder["shown"] = True
        self.reviewed = reviewed
        self._mark_reviewed()
        self._update_buttons()
        self._set_status(" ".join(parts))

    def _show_results(self, comparison) -> None:
        summary = comparison.summary()
        self.results.setRowCount(len(summary))
        fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
        for row, (method, values) in enumerate(summary.items()):
            cells = (method + (" (stopped)" if values["stopped"] else ""), fmt(values["wall_s"], ".1f"),
                     fmt(values["mean_noise"], ".3f"), fmt(100 * values["flagged_fraction"], ".1f"),
                     fmt(values["dice_with_others"], ".2f"))
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, method)
                self.results.setItem(row, column, item)

    def _mark_reviewed(self) -> None:
        """Bold the row of the method whose proposals the Review table holds."""
        for row in range(self.results.rowCount()):
            for column in range(self.results.columnCount()):
                item = self.results.item(row, column)
                font = item.font()
                font.setBold(item.data(Qt.ItemDataRole.UserRole) == self.reviewed)
                item.setFont(font)

    def _update_buttons(self, *args) -> None:
        try:
            busy = self.state.busy
            ours = self.job is not None and self.job.running
            ready = bool(self.pair.image.currentText() and self.pair.labels.currentText())
            self.compare_button.setEnabled(not busy and ready and len(self.methods()) >= 2)
            selected = self.selected_method()
            self.review_button.setEnabled(not busy and self.comparison is not None and selected is not None
                                          and selected != self.reviewed)
            self.stop_button.setEnabled(ours and not self.job.stop_requested)
        except RuntimeError:  # widget deleted
            pass

    # ----- messages ---------------------------------------------------------------------
    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _fail(self, message: str):
        from napari.utils.notifications import show_error

        self._set_status(message)
        show_error(message)
        self._update_buttons()
        return None

