"""Train / load dock widget.

Pick image/labels layer pairs, a method, a device and a budget; Train runs the
method in a background worker with a napari progress bar, a live loss/IoU plot
and a Stop button. Load/Save model use the safe checkpoint format. Retrain
trains on the cleaned labels with the reviewed regions trusted.

Everything here is wiring: the dataset, the methods, checkpoints and the
curation session live in ``core``/``methods`` (see :mod:`.state`).
"""

from __future__ import annotations

import json
import re

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.dataset import class_count
from ..engine.device import available_devices, resolve_device
from ..engine.events import EpochEvent, ErrorEvent, StateEvent, StepEvent
from ..methods import (
    DEFAULT_METHOD, TrainConfig, available_methods, fit, get_method, refit_note, refit_or_fit, warm_start_refusal,
)
from .layers import layer_choices
from .plot import TrainingPlot
from .state import MODES, state_for, unwrap_viewer
from .controls import BudgetPicker, Collapsible, scrolling_layout, spin
from .worker import warm_up

PREFERRED_METHOD = "coseg"
UNLEARNT_IOU = 0.1  # a class whose training IoU is below this at the end is named in the status
MODE_LABELS = {
    "auto": "auto",
    "2d": "2D image",
    "stack": "2D stack (slices = samples)",
    "volume": "3D volume",
}


def params_text(params: dict) -> str:
    """``{"a": True, "b": [1, 2]}`` → ``"a=true, b=[1, 2]"``: what :func:`parse_params` reads back
    (JSON values, so a default copied from the placeholder means what it says)."""
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in params.items())


def parse_params(text: str) -> dict:
    """``"a=1, b=0.5, c=name"`` → ``{"a": 1, "b": 0.5, "c": "name"}`` (JSON values where they parse).

    A JSON object (``{"a": 1}``) is accepted too.
    """
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError("method parameters must be a JSON object or key=value pairs")
        return value
    params = {}
    for item in re.split(r"[;,]\s*(?=[A-Za-z_][\w]*\s*=)", text):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"method parameter {item.strip()!r} is not key=value")
        key, value = (part.strip() for part in item.split("=", 1))
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def unlearnt_note(history: dict, below: float = UNLEARNT_IOU) -> str:
    """A sentence naming the classes whose last training IoU is under ``below`` ('' if none).

    Most methods correct only the classes their networks have learnt, so after a short
    run the user should know why a class has no proposals (or unreliable ones).
    """
    curve = (history or {}).get("iou") or []
    last = curve[-1] if curve else None
    if not last:
        return ""
    unlearnt = [(k, v) for k, v in enumerate(last) if k > 0 and v is not None and v < below]
    if not unlearnt:
        return ""
    names = ", ".join(f"class {k} (IoU {v:.2f})" for k, v in unlearnt)
    return f"Not learnt yet: {names}; its proposals are missing or unreliable, train longer."


#: How a pair row shares its width: the layer names take what the sample mode (usually
#: "auto") leaves; sharing 3 : 3 : 2 cut "hippocampus image" and "…labels" short.
PAIR_STRETCH = (1, 1, 0)


class PairRow(QWidget):
    """One image / labels / sample-mode choice."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.image = QComboBox()
        self.labels = QComboBox()
        for box in (self.image, self.labels):
            box.currentTextChanged.connect(self.name_choices)
        self.name_choices()
        self.mode = QComboBox()
        for mode in MODES:
            self.mode.addItem(MODE_LABELS[mode], mode)
        self.mode.setToolTip("How the layer is split into samples: auto = 2D image, or a 2D stack "
                             "when the layer says its first axis holds samples, else a 3D volume "
                             "(trained slice by slice)")
        self.remove = QToolButton()
        self.remove.setText("−")
        self.remove.setToolTip("Remove this pair")
        for widget, stretch in zip((self.image, self.labels, self.mode), PAIR_STRETCH):
            widget.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            widget.setMinimumContentsLength(6 if stretch else 4)
            layout.addWidget(widget, stretch)
        layout.addWidget(self.remove)

    def value(self) -> tuple:
        return self.image.currentText(), self.labels.currentText(), self.mode.currentData()

    def fill(self, images: list, labels: list, default_labels: str | None) -> None:
        """Offer these layer names, keeping the current choices when they still exist
        (else the last image and ``default_labels``)."""
        for combo, names, default in ((self.image, images, images[-1] if images else None),
                                      (self.labels, labels, default_labels)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            keep = current if current in names else default
            if keep is not None:
                combo.setCurrentText(keep)
            combo.blockSignals(False)
        self.name_choices()

    def name_choices(self, *_) -> None:
        """Name the chosen layers in full in the tooltips: a long name is cut in the narrow box."""
        for box, what in ((self.image, "Image layer"), (self.labels, "Labels layer to curate (it is never modified)")):
            text = box.currentText()
            box.setToolTip(f"{what}: {text}" if text else what)


class TrainWidget(QWidget):
    """The Train / load dock widget (npe2 command ``napari-noisyseg.train_widget``)."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = unwrap_viewer(napari_viewer)
        self.state = state_for(napari_viewer)
        self._progress = None
        self._rows: list[PairRow] = []
        self._build()
        self._connect_viewer()
        self.refresh_layers()
        self._update_buttons()
        warm_up()  # torch's lazy imports, now rather than during the first training

    # ----- layout ---------------------------------------------------------------
    def _build(self) -> None:
        layout = scrolling_layout(self)

        data = QGroupBox("Data")
        data_layout = QVBoxLayout(data)
        header = QHBoxLayout()
        for text, stretch in zip(("image", "labels", "samples"), PAIR_STRETCH):
            label = QLabel(text)
            label.setStyleSheet("color: #a0a0a0;")
            header.addWidget(label, stretch)
        header.addSpacing(24)
        data_layout.addLayout(header)
        self.rows_layout = QVBoxLayout()
        data_layout.addLayout(self.rows_layout)
        self.add_pair_button = QPushButton("+ add pair")
        self.add_pair_button.setToolTip("Train on several image/labels pairs together")
        self.add_pair_button.clicked.connect(lambda: self.add_pair())
        data_layout.addWidget(self.add_pair_button, alignment=Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(data)

        form = QFormLayout()
        self.method = QComboBox()
        methods = available_methods()
        for name, summary in methods.items():
            self.method.addItem(name, name)
            self.method.setItemData(self.method.count() - 1, summary, Qt.ItemDataRole.ToolTipRole)
        default = PREFERRED_METHOD if PREFERRED_METHOD in methods else DEFAULT_METHOD
        self.method.setCurrentIndex(max(0, self.method.findData(default)))
        self.method_summary = QLabel()
        self.method_summary.setWordWrap(True)
        self.method_summary.setStyleSheet("color: #a0a0a0;")
        self.method.currentIndexChanged.connect(self._on_method_changed)
        form.addRow("Method", self.method)
        form.addRow("", self.method_summary)

        self.device = QComboBox()
        self.device.addItem("auto", "auto")
        for device in available_devices():
            self.device.addItem(device, device)
        self.device.currentIndexChanged.connect(self._update_device_note)
        self.device_note = QLabel()
        self.device_note.setWordWrap(True)
        self.device_note.setStyleSheet("color: #ffb74d;")
        form.addRow("Device", self.device)
        form.addRow("", self.device_note)

        self.budget = BudgetPicker(epochs=30, minutes=5.0)
        self.by_epochs, self.by_minutes = self.budget.by_epochs, self.budget.by_minutes
        self.epochs, self.minutes = self.budget.epochs, self.budget.minutes
        form.addRow("Budget", self.budget)
        layout.addLayout(form)

        advanced = Collapsible("Advanced settings")
        self.advanced_toggle, self.advanced, adv = advanced.toggle, advanced.body, advanced.form
        layout.addWidget(self.advanced_toggle)
        defaults = TrainConfig()
        self.patch_size = spin(32, 1024, defaults.patch_size, 16)
        self.batch_size = spin(1, 256, defaults.batch_size)
        self.width = spin(4, 128, defaults.width)
        self.depth = spin(1, 6, defaults.depth)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(defaults.learning_rate)
        self.seed = spin(0, 2**31 - 1, defaults.seed)
        self.preview_every = spin(0, 100000, 20)
        self.preview_every.setToolTip("Update the overlays every this many steps (0 = only at the end)")
        self.min_area = spin(1, 100000, self.state.min_area)
        self.min_area.setToolTip("Smaller changes are not proposed as regions")
        self.params = QLineEdit()
        self.params.setToolTip("Method parameters as key=value, separated by commas")
        for label, widget in (("patch size", self.patch_size), ("batch size", self.batch_size),
                              ("U-Net width", self.width), ("U-Net depth", self.depth),
                              ("learning rate", self.learning_rate), ("seed", self.seed),
                              ("preview every (steps)", self.preview_every),
                              ("min region area (px)", self.min_area), ("method parameters", self.params)):
            adv.addRow(label, widget)
        layout.addWidget(self.advanced)

        buttons = QGridLayout()
        self.train_button = QPushButton("Train")
        self.train_button.setToolTip("Train the method on the chosen pairs")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop training; the result so far is kept (within one step)")
        self.retrain_button = QPushButton("Retrain with decisions")
        self.retrain_button.setToolTip("Train again on the cleaned labels, trusting every accepted "
                                       "and rejected region and every hand edit")
        self.load_button = QPushButton("Load model…")
        self.save_button = QPushButton("Save model…")
        self.train_button.clicked.connect(lambda: self.train())
        self.stop_button.clicked.connect(self.stop)
        self.retrain_button.clicked.connect(lambda: self.retrain())
        self.load_button.clicked.connect(self._load_dialog)
        self.save_button.clicked.connect(self._save_dialog)
        buttons.addWidget(self.train_button, 0, 0)
        buttons.addWidget(self.stop_button, 0, 1)
        buttons.addWidget(self.retrain_button, 1, 0, 1, 2)
        buttons.addWidget(self.load_button, 2, 0)
        buttons.addWidget(self.save_button, 2, 1)
        layout.addLayout(buttons)

        self.status = QLabel("Choose the image and labels layers, then Train.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        self.plot = TrainingPlot()
        layout.addWidget(self.plot, 1)

        self.add_pair()
        self._on_method_changed()
        self._update_device_note()

    def _on_method_changed(self) -> None:
        name = self.method.currentData()
        if not name:
            return
        module = get_method(name)
        self.method_summary.setText(module.SUMMARY)
        defaults = getattr(module, "DEFAULTS", {}) or {}
        self.params.setPlaceholderText(params_text(defaults) or "(none)")

    def _update_device_note(self) -> None:
        try:
            _, note = resolve_device(self.device.currentData() or "auto")
        except ValueError as error:
            note = str(error)
        self.device_note.setText(note or "")
        self.device_note.setVisible(bool(note))

    # ----- layer choices ---------------------------------------------------------
    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layer_inserted)
        events.removed.connect(self.refresh_layers)
        for layer in self.viewer.layers:
            layer.events.name.connect(self.refresh_layers)
        self.state.job_started.connect(self._on_job_started)
        self.state.job_finished.connect(self._on_job_finished)
        self.state.session_changed.connect(self._update_buttons)
        self.state.decisions_changed.connect(self._update_buttons)
        self.destroyed.connect(lambda *_: self._disconnect(events))
        # Closing the widget (or the viewer) stops its training; what was learnt is kept.
        state = self.state
        self.destroyed.connect(lambda *_: state.stop())

    def _disconnect(self, events) -> None:
        for signal, slot in ((events.inserted, self._on_layer_inserted), (events.removed, self.refresh_layers)):
            try:
                signal.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass

    def _on_layer_inserted(self, event=None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self.refresh_layers)
        self.refresh_layers()

    def _default_labels(self, labels: list) -> str | None:
        from napari.layers import Labels

        active = self.viewer.layers.selection.active
        if isinstance(active, Labels) and active.name in labels:
            return active.name
        plain = [name for name in labels if "reference" not in name.lower() and "clean" not in name.lower()]
        return (plain or labels or [None])[-1]

    def refresh_layers(self, event=None) -> None:
        """Refill the layer pickers, keeping the current choices when they still exist."""
        try:
            images, labels = layer_choices(self.viewer)
        except RuntimeError:  # the widget is being deleted
            return
        for row in self._rows:
            row.fill(images, labels, self._default_labels(labels))
        self._update_buttons()

    def add_pair(self) -> PairRow:
        row = PairRow()
        row.remove.clicked.connect(lambda: self._remove_pair(row))
        self._rows.append(row)
        self.rows_layout.addWidget(row)
        self.refresh_layers()
        return row

    def _remove_pair(self, row: PairRow) -> None:
        if len(self._rows) <= 1:
            return
        self._rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self._update_buttons()

    def set_pair(self, index: int, image: str, labels: str, mode: str = "auto") -> None:
        """Choose the layers of pair ``index`` (adds rows as needed)."""
        while len(self._rows) <= index:
            self.add_pair()
        row = self._rows[index]
        row.image.setCurrentText(image)
        row.labels.setCurrentText(labels)
        row.mode.setCurrentIndex(max(0, row.mode.findData(mode)))

    def pairs(self) -> list[tuple]:
        return [row.value() for row in self._rows]

    # ----- config -------------------------------------------------------------------
    def config(self, method: str | None = None) -> TrainConfig:
        """The training settings shown in the widget.

        Raises
        ------
        ValueError
            Unknown method parameters (the message lists the known ones).
        """
        name = method or self.method.currentData() or DEFAULT_METHOD
        config = TrainConfig(
            method=name,
            epochs=self.budget.budget()[0],
            minutes=self.budget.budget()[1],
            device=self.device.currentData() or "auto",
            seed=int(self.seed.value()),
            patch_size=int(self.patch_size.value()),
            batch_size=int(self.batch_size.value()),
            learning_rate=float(self.learning_rate.value()),
            width=int(self.width.value()),
            depth=int(self.depth.value()),
            preview_every=int(self.preview_every.value()),
            params=parse_params(self.params.text()),
        )
        config.with_params(getattr(get_method(name), "DEFAULTS", {}) or {})
        return config

    def _preview_samples(self, inputs) -> tuple:
        """Preview the slice the person is looking at (first pair)."""
        first = inputs[0]
        if first.labels.ndim == 2:
            return (0,)
        z = int(round(self.viewer.dims.point[0] / (first.geometry.get("scale", (1.0,))[0] or 1.0)))
        return (min(max(z, 0), first.labels.shape[0] - 1),)

    # ----- actions ------------------------------------------------------------------
    def train(self):
        """Start training on the chosen pairs; returns the job (None if it could not start)."""
        try:
            config = self.config()
            inputs = self.state.snapshot(self.pairs())
        except (ValueError, KeyError) as error:
            return self._fail(f"Cannot train: {error}")
        config.preview_samples = self._preview_samples(inputs)
        self.state.min_area = int(self.min_area.value())
        state = self.state

        def task(progress):
            dataset = state.build(inputs)
            state.job_dataset = dataset
            return dataset, fit(dataset, config, progress)

        return self._start("train", inputs, task, config)

    def retrain(self):
        """Train on the cleaned labels with decided regions and hand edits trusted.

        Runs the method's ``refit`` (Co-Seg starts from the current models; ADELE trains
        afresh without correcting during training) when it has one and the current models
        hold the cleaned labels' classes (:func:`~napari_noisyseg.methods.warm_start_refusal`);
        otherwise trains anew and says why.
        """
        state = self.state
        if state.session is None or not state.inputs:
            return self._fail("Nothing to retrain yet: train or load a model first.")
        try:
            config = self.config()
        except ValueError as error:
            return self._fail(f"Cannot retrain: {error}")
        inputs = state.inputs
        labels = state.session.cleaned_labels()
        trust = state.session.trust_masks()
        previous = state.result
        refusal = warm_start_refusal(config.method, previous, class_count(labels))
        config.preview_samples = self._preview_samples(inputs)
        notes = []

        def task(progress):
            from ..core import io

            for pair, cleaned in zip(inputs, labels):
                io.validate_labels(cleaned, f"{pair.labels_name} cleaned", allow_full=True)
            dataset = state.build(inputs, labels=labels, trust=trust)
            state.job_dataset = dataset
            return dataset, refit_or_fit(dataset, config, previous, progress)

        notes.append(f"Retraining {config.method} from scratch ({refusal})" if refusal
                     else f"Retraining {config.method} {refit_note(config.method) or 'from the current models'}")
        counts = state.session.counts()
        notes.append(f"{int(sum(t.sum() for t in trust))} trusted pixels "
                     f"({counts['accepted']} accepted, {counts['rejected']} rejected regions).")
        job = self._start("retrain", inputs, task, config, note="; ".join(notes))
        if job is not None:
            self._set_status(self._job_note)
        return job

    def load_model(self, path):
        """Load a checkpoint and predict the chosen pairs with it (in the worker)."""
        from ..core.checkpoint import load_checkpoint
        from ..pipeline import predict_result

        try:
            inputs = self.state.snapshot(self.pairs())
        except ValueError as error:
            return self._fail(f"Cannot load a model: {error}")
        device = self.device.currentData() or "auto"
        state = self.state

        def task(progress):
            checkpoint = load_checkpoint(path)
            dataset = state.build(inputs)
            state.job_dataset = dataset
            return dataset, predict_result(checkpoint, dataset, device, events=progress)

        return self._start("load", inputs, task, None)

    def save_model(self, path, overwrite: bool = False):
        """Save the current models (safetensors); returns the written path or None."""
        from ..core.checkpoint import save_result

        result = self.state.result
        if result is None or not result.models:
            self._fail("No model to save yet: train or load one first.")
            return None
        try:
            written = save_result(path, result, overwrite=overwrite,
                                  extra={"names": self.state.session.names if self.state.session else [],
                                         "modes": [p.mode for p in self.state.inputs]})
        except (OSError, ValueError) as error:
            self._fail(f"Could not save the model: {error}")
            return None
        self._set_status(f"Model saved to {written}.")
        return written

    def stop(self) -> None:
        if self.state.busy:
            self.state.stop()
            self.stop_button.setEnabled(False)
            self._set_status("Stopping… (finishing the current step, then predicting with what was learnt)")

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a NoisySeg model", "", "NoisySeg model (*.safetensors)")
        if path:
            self.load_model(path)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the model", "model.safetensors",
                                              "NoisySeg model (*.safetensors)")
        if path:  # the dialog has asked before replacing a file
            self.save_model(path, overwrite=True)

    # ----- job plumbing -----------------------------------------------------------------
    def _start(self, kind: str, inputs, task, config, note: str = ""):
        self._job_config = config
        self._job_note = note
        self.plot.clear()
        title = config.method if config is not None else "loaded model"
        self.plot.set_title(f"{kind}: {title}")
        try:
            job = self.state.start_job(kind, inputs, task)
        except RuntimeError as error:
            return self._fail(str(error))
        self._set_status(f"{kind.capitalize()} started…")
        return job

    def _on_job_started(self, job) -> None:
        """Connected before the job's thread starts, so no event is missed."""
        from napari.utils import progress

        job.event.connect(self._on_event)
        self._close_progress()
        config = getattr(self, "_job_config", None)
        total = 0  # unknown: an indeterminate bar until the first epoch ends
        if config is not None and config.minutes is None and config.epochs:
            total = int(config.epochs)
        self._progress = progress(total=total, desc=f"NoisySeg {self.state.job_kind}")
        self._still_activity_indicator()
        self._update_buttons()

    def _still_activity_indicator(self) -> None:
        """Stop the animated "in progress" GIF napari shows in its status bar.

        Each of its frames recomposes the whole window, OpenGL canvas included.
        Measured under Xvfb with software OpenGL (llvmpipe), the animation alone
        took more CPU than the training worker got, slowed training ~2.5x and
        lengthened the event-loop gaps (benchmarks/responsiveness.py). The
        progress bar itself stays and updates every epoch. Uses napari internals,
        so any failure is ignored.
        """
        try:
            indicator = self.viewer.window._status_bar._activity_item._inProgressIndicator
            indicator.movie().setPaused(True)
        except Exception:  # noqa: BLE001 - cosmetic; napari's internals may change
            pass

    def _on_event(self, event) -> None:
        if isinstance(event, StepEvent):
            self.plot.add_step(event.step, event.losses)
        elif isinstance(event, EpochEvent):
            self.plot.add_epoch(event.epoch, event.losses, event.metrics)
            loss = event.losses.get("loss", next(iter(event.losses.values()), float("nan")))
            iou = event.metrics.get("iou") or []
            iou_text = ", ".join("–" if v is None else f"{v:.2f}" for v in iou)
            self._set_status(f"Epoch {event.count_text}: loss {loss:.4f}; "
                             f"IoU per class [{iou_text}]; {event.elapsed_s:.0f} s")
            bar = self._progress  # napari may process events inside these calls: keep a local
            if bar is not None:
                if bar.total != event.total_epochs:
                    bar.total = event.total_epochs
                bar.set_description(f"NoisySeg {self.state.job_kind}: epoch {event.epoch + 1}")
                bar.update(max(0, event.epoch + 1 - bar.n))
        elif isinstance(event, StateEvent):
            if event.message:
                self._set_status(event.message)
            bar = self._progress
            if bar is not None and event.state:
                bar.set_description(f"NoisySeg {self.state.job_kind}: {event.state}")
        elif isinstance(event, ErrorEvent):
            self._fail(event.message)

    def _on_job_finished(self, outcome) -> None:
        self._close_progress()
        self._update_buttons()
        if outcome.error is not None:
            return  # already reported by the ErrorEvent
        result = outcome.value[1] if outcome.value else None
        if result is None:
            self._set_status("Stopped before any prediction.")
            return
        session = self.state.session
        pending = session.counts()["pending"] if session is not None else 0
        parts = [self._job_note] if getattr(self, "_job_note", "") else []
        if outcome.stopped:
            latency = outcome.stop_latency_s
            parts.append("Stopped" + (f" ({latency:.2f} s after the click)" if latency is not None else "") + ".")
        else:
            parts.append(f"{self.state.job_kind.capitalize()} finished in {outcome.seconds:.0f} s.")
        if result.device_note:
            parts.append(result.device_note)
        parts.append(f"{pending} regions to review.")
        parts.append(unlearnt_note(result.history))
        self._set_status(" ".join(p for p in parts if p))

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _update_buttons(self, *args) -> None:
        try:
            busy = self.state.busy
            have_pairs = all(row.image.currentText() and row.labels.currentText() for row in self._rows)
            self.train_button.setEnabled(not busy and have_pairs)
            self.load_button.setEnabled(not busy and have_pairs)
            self.stop_button.setEnabled(busy and not self.state.job.stop_requested)
            self.retrain_button.setEnabled(not busy and self.state.session is not None)
            self.save_button.setEnabled(not busy and self.state.result is not None)
            self.add_pair_button.setEnabled(not busy)
        except RuntimeError:  # widget deleted
            pass

    # ----- messages -------------------------------------------------------------------
    def _set_status(self, text: str) -> None:
        self.status.setText(text)

    def _fail(self, message: str):
        from napari.utils.notifications import show_error

        self._set_status(message)
        show_error(message)
        self._update_buttons()
        return None
