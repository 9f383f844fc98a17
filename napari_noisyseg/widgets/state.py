"""What the Train, Review and Export widgets of one viewer share.

One :class:`CurationState` per viewer (:func:`state_for`): the chosen pairs, the
last dataset and result, the :class:`~napari_noisyseg.core.curation.CurationSession`
(which holds the curation log), the overlay layers and the running job. The
widgets call its methods and listen to its signals; every piece of logic
lives in ``core``/``methods``, this module only wires them to the viewer.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..core import io
from ..core.curation import CurationSession
from ..core.dataset import build_dataset
from ..core.proposals import change_kinds
from ..engine.events import PreviewEvent, StateEvent
from .layers import OverlayLayers, geometry_of
from .worker import TrainingJob

MODES = ("auto", "2d", "stack", "volume")
#: Longest stretch of layer updates between two turns of the event loop.
STEP_BUDGET_S = 0.04


@dataclass
class PairInput:
    """A snapshot of one image/labels pair, taken in the GUI thread when a job starts.

    ``labels`` is a private copy; the layers themselves are never written.
    """

    image_name: str
    labels_name: str
    image: np.ndarray
    labels: np.ndarray
    mode: str
    geometry: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    labels_path: str | None = None  # the file the labels layer was opened from, if any

    @property
    def file_stem(self) -> str | None:
        """The labels file's name without its extension (``hippocampus_001`` for
        ``hippocampus_001.nii.gz``), None for labels drawn or made in the viewer."""
        return io.split_stem(self.labels_path)[0] if self.labels_path else None

    @property
    def meta(self) -> io.ImageMeta:
        """Where NIfTI exports take their affine / spacing from."""
        affine = self.metadata.get("affine")
        scale = self.geometry.get("scale")
        return io.ImageMeta(
            affine=None if affine is None else np.asarray(affine, np.float64),
            spacing=tuple(float(v) for v in scale) if scale is not None else None,
        )


def resolve_mode(mode: str, labels: np.ndarray, metadata: dict) -> str:
    """``auto`` → ``2d`` for 2D labels; for 3D, ``stack`` when the layer says its first
    axis holds samples (``metadata["sample_axis"] == 0``, as the nuclei sample does), else ``volume``."""
    if mode != "auto":
        return mode
    if labels.ndim == 2:
        return "2d"
    return "stack" if metadata.get("sample_axis") == 0 else "volume"


class CurationState(QObject):
    """Shared state of the plugin's widgets in one viewer.

    Signals
    -------
    session_changed()
        A new session or a new round of proposals (after training or loading).
    decisions_changed()
        Accept / reject / undo.
    job_started(object), job_finished(object)
        A :class:`~napari_noisyseg.widgets.worker.TrainingJob` and its
        :class:`~napari_noisyseg.widgets.worker.JobOutcome`.
    """

    session_changed = Signal()
    decisions_changed = Signal()
    job_started = Signal(object)
    job_finished = Signal(object)

    def __init__(self, viewer):
        super().__init__()
        self._viewer = weakref.ref(viewer)
        self.overlays = OverlayLayers(viewer)
        self.inputs: list[PairInput] = []
        self.dataset = None
        self.result = None
        self.session: CurationSession | None = None
        self.config = None
        self.job: TrainingJob | None = None
        self.job_kind = ""
        self.job_dataset = None  # the dataset the running/last job built (what fit received)
        self.comparison = None  # the last method comparison (pipeline.Comparison), if any
        self.min_area = 4
        self._updating = False
        self.last_decided: list[int] = []  # region ids of the last decision (for the review table)

    @property
    def viewer(self):
        return self._viewer()

    # ----- inputs ---------------------------------------------------------------
    def snapshot(self, pairs) -> list[PairInput]:
        """Copy the data of ``[(image_layer_name, labels_layer_name, mode), ...]``.

        Raises
        ------
        ValueError
            A layer is missing, of the wrong type, or used twice.
        """
        from napari.layers import Image, Labels

        if not pairs:
            raise ValueError("choose an image layer and a labels layer")
        layers = self.viewer.layers
        seen = set()
        inputs = []
        for image_name, labels_name, mode in pairs:
            for name, kind in ((image_name, Image), (labels_name, Labels)):
                if not name or name not in layers:
                    raise ValueError(f"layer {name!r} is not in the viewer")
                if not isinstance(layers[name], kind):
                    raise ValueError(f"layer {name!r} is not a {kind.__name__.lower()} layer")
            if labels_name in seen:
                raise ValueError(f"labels layer {labels_name!r} is chosen twice")
            seen.add(labels_name)
            image_layer, labels_layer = layers[image_name], layers[labels_name]
            image = np.asarray(image_layer.data[0] if image_layer.multiscale else image_layer.data)
            labels = np.array(labels_layer.data[0] if labels_layer.multiscale else labels_layer.data, copy=True)
            metadata = dict(labels_layer.metadata)
            source = metadata.get("source_path") or getattr(getattr(labels_layer, "source", None), "path", None)
            inputs.append(PairInput(image_name, labels_name, image, labels,
                                    resolve_mode(mode, labels, metadata), geometry_of(labels_layer), metadata,
                                    labels_path=str(source) if source else None))
        return inputs

    @staticmethod
    def build(inputs: list[PairInput], labels=None, trust=None):
        """Validate the pairs and build the dataset (runs in the worker thread).

        Raises
        ------
        napari_noisyseg.core.io.InputError
            The message names the layer and the problem.
        """
        images, given = [], []
        for pair in inputs:
            image, checked = io.validate_pair(pair.image, pair.labels, pair.image_name, pair.labels_name)
            images.append(image)
            given.append(checked)
        labels = given if labels is None else labels
        return build_dataset(images, labels, [p.labels_name for p in inputs],
                             modes=[p.mode for p in inputs], trust=trust)

    def same_sources(self, inputs: list[PairInput]) -> bool:
        """Whether ``inputs`` are the labels of the current session (names and shapes)."""
        if self.session is None or len(inputs) != len(self.session.names):
            return False
        return all(p.labels_name == n and p.labels.shape == g.shape
                   for p, n, g in zip(inputs, self.session.names, self.session.given))

    # ----- jobs -----------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A job runs, or its result is still being put on screen."""
        return self._updating or (self.job is not None and self.job.running)

    def start_job(self, kind: str, inputs: list[PairInput], task) -> TrainingJob:
        """Run ``task(progress)`` in a worker; the result is handled by :meth:`_on_finished`."""
        if self.busy:
            raise RuntimeError("a training is already running; stop it first")
        self.inputs = inputs
        self.job_kind = kind
        self.job_dataset = None
        job = TrainingJob(self._with_proposals(kind, inputs, task), name=kind)
        job.event.connect(self._on_event)
        job.finished.connect(self._on_finished)
        self.job = job
        for pair in inputs:  # the overlays exist from the start: previews go there
            self.overlays.ensure(pair.labels_name, pair.labels.shape, pair.geometry, pair.labels)
        self.job_started.emit(job)  # listeners connect to job.event before its thread runs
        job.start()
        return job

    def _with_proposals(self, kind: str, inputs: list[PairInput], task):
        """Wrap ``task`` so that the worker also finds the proposed regions (the costly part).

        A new session is built in the worker (nobody else sees it yet). For the
        current session the worker prepares a new round against snapshots of
        its cleaned labels and trust taken now; the GUI thread applies it
        (:meth:`CurationSession.apply_proposals` skips regions touched meanwhile).

        ``task`` returns ``(dataset, result)``, or ``(dataset, result, agreement)``
        after a method comparison (a :class:`~napari_noisyseg.core.agreement.MethodAgreement`
        that the regions are annotated with).
        """
        session = self.session if (kind == "retrain" or self.same_sources(inputs)) else None
        snapshot = (session.cleaned_labels(), session.trust_masks()) if session is not None else None
        names = [p.labels_name for p in inputs]
        min_area = self.min_area

        def run(progress):
            value = task(progress)
            dataset, result, *extra = value if value is not None else (None, None)
            agreement = extra[0] if extra else None
            if result is None:
                return dataset, None, None
            progress.emit(StateEvent("proposing", "Finding the proposed changes…"))
            if session is not None:
                return dataset, result, (session, session.prepare_result(dataset, result, *snapshot,
                                                                         agreement=agreement))
            fresh = CurationSession.from_result(dataset, result, given=[p.labels for p in inputs],
                                                names=names, min_area=min_area, agreement=agreement)
            return dataset, result, (None, fresh)

        return run

    def _on_event(self, event) -> None:
        if isinstance(event, PreviewEvent):
            self._show_preview(event)

    def _show_preview(self, event: PreviewEvent) -> None:
        dataset = self.job_dataset
        if dataset is None:
            return
        for index, noise, corrected in zip(event.sample_indices, event.noise, event.corrected):
            sample = dataset.samples[index]
            name = dataset.sources[sample.source].name
            kinds = change_kinds(sample.labels, np.asarray(corrected))
            self.overlays.show_preview(name, tuple(sample.position), np.asarray(noise, np.float32), kinds)

    def _on_finished(self, outcome) -> None:
        """Take the result, then update the layers in small steps, one event-loop turn
        apart (a big stack costs some hundreds of ms in all); ``job_finished`` is
        emitted once everything is shown."""
        steps = []
        if self.viewer is None:  # the viewer was closed while training
            return
        if outcome.error is None and outcome.value is not None:
            dataset, result, prepared = outcome.value
            if result is not None:
                try:
                    steps = self._take_result(dataset, result, prepared)
                except Exception as error:  # noqa: BLE001 - shown, and the widget stays usable
                    from napari.utils.notifications import show_error

                    outcome.error = error
                    show_error(f"Could not show the result: {error}")
        self._updating = True
        if steps:
            steps.append(lambda: self.session_changed.emit())
        self._run_steps(steps, outcome)

    def _run_steps(self, steps: list, outcome) -> None:
        """Run steps for up to :data:`STEP_BUDGET_S`, then give the event loop a turn."""
        import time

        from qtpy.QtCore import QTimer

        start = time.perf_counter()
        try:
            while steps and time.perf_counter() - start < STEP_BUDGET_S:
                steps.pop(0)()
        finally:
            if steps:
                QTimer.singleShot(0, lambda: self._run_steps(steps, outcome))
            else:
                self._updating = False
                self.job_finished.emit(outcome)

    def _take_result(self, dataset, result, prepared) -> list:
        """Make a finished job's result current (cheap: the regions were found in the
        worker); return the steps that show it."""
        self.dataset, self.result = dataset, result
        self.config = result.config
        session, content = prepared
        if session is None:
            self._keep_hand_edits(content)
            self.session = content
        elif session is self.session:
            session.apply_proposals(content)
        else:  # pragma: no cover - one job at a time, so the session cannot change meanwhile
            return []
        closed = [p.labels_name for p in self.inputs if p.labels_name not in self.viewer.layers]
        if closed:
            from napari.utils.notifications import show_warning

            show_warning(f"Layer(s) {', '.join(map(repr, closed))} were closed during training; nothing is "
                         "lost: the result is shown in new noise/proposals/cleaned layers.")
        return self.overlays.session_steps(self.session, [p.geometry for p in self.inputs])

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Process Qt events until no job runs and its result is shown (scripts, tests)."""
        import time

        from qtpy.QtWidgets import QApplication

        deadline = time.perf_counter() + timeout_s
        while self.busy and time.perf_counter() < deadline:
            QApplication.processEvents()
            time.sleep(0.005)
        return not self.busy

    def _keep_hand_edits(self, session: CurationSession) -> None:
        """Strokes painted on ``cleaned`` before the session existed become hand edits."""
        for s, name in enumerate(session.names):
            layer = self.overlays.get(name, "cleaned")
            if layer is not None and np.shape(layer.data) == session.cleaned[s].shape:
                session.cleaned[s][...] = np.asarray(layer.data)

    def stop(self) -> None:
        if self.job is not None:
            self.job.request_stop()

    # ----- decisions ---------------------------------------------------------------
    def decide(self, decision: str, ids=()) -> int:
        """``accept`` / ``reject`` region ids, or ``undo``; returns pixels changed or regions undone."""
        if self.session is None:
            return 0
        ids = [int(i) for i in ids]
        if decision == "accept":
            value = self.session.accept_many(ids)
        elif decision == "reject":
            value = self.session.reject_many(ids)
        elif decision == "undo":
            ids = self.session.undo()
            value = len(ids)
        else:
            raise ValueError(f"unknown decision {decision!r}")
        self._after_decisions(ids)
        return value

    def undo(self) -> list[int]:
        """Undo the last decision step; returns the region ids it concerned."""
        if self.session is None:
            return []
        ids = self.session.undo()
        self._after_decisions(ids)
        return ids

    def accept_above(self, threshold: float) -> list[int]:
        if self.session is None:
            return []
        ids = self.session.accept_above(threshold)
        self._after_decisions(ids)
        return ids

    def _after_decisions(self, ids) -> None:
        self.last_decided = list(ids)
        if ids:
            self.overlays.refresh_decisions(self.session, ids)
        self.decisions_changed.emit()


_STATES: dict[int, CurationState] = {}


def _forget(key: int) -> None:
    """The viewer is gone: stop its training (if any) and drop its state."""
    state = _STATES.pop(key, None)
    if state is not None:
        state.stop()


def unwrap_viewer(viewer):
    """The viewer itself: napari hands plugin widgets a ``PublicOnlyProxy`` (a new
    proxy object per widget), which cannot serve as a key of the shared state."""
    return getattr(viewer, "__wrapped__", viewer)


def state_for(viewer) -> CurationState:
    """The shared state of ``viewer`` (created on first use, dropped with the viewer)."""
    viewer = unwrap_viewer(viewer)
    key = id(viewer)
    state = _STATES.get(key)
    if state is None or state.viewer is not viewer:
        state = CurationState(viewer)
        _STATES[key] = state
        weakref.finalize(viewer, _forget, key)
    return state
