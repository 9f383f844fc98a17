"""Run a training (or prediction) task off the GUI thread and hand its events to Qt.

The task is any callable ``task(progress) -> value`` that reports through a
:class:`~napari_noisyseg.engine.events.Progress` (``methods.fit`` does). It runs
in a napari worker (:func:`napari.qt.threading.create_worker`); every typed
event it emits is re-emitted by :attr:`TrainingJob.event`, a Qt signal, so the
widgets receive it in the GUI thread (a queued connection) and only render it.
Stopping is :meth:`TrainingJob.request_stop`, i.e. ``progress.request_stop()``:
training checks the flag before every step.

Errors never escape as tracebacks: the task's exception becomes an
:class:`~napari_noisyseg.engine.events.ErrorEvent` and the job finishes with
``outcome.error`` set, so the widget can show one clear notification and
return to a usable state.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from qtpy.QtCore import QObject, Signal

from ..engine.events import ErrorEvent, Progress, StepEvent

#: StepEvents closer together than this are coalesced (the GUI needs a few per second).
STEP_EVENT_INTERVAL_S = 0.1


@dataclass
class JobOutcome:
    """How a job ended.

    Attributes
    ----------
    value : Any
        What the task returned (a ``CurationResult``), None on error.
    error : BaseException or None
    stopped : bool
        A stop was requested.
    seconds : float
        Wall time of the task.
    stop_latency_s : float or None
        Seconds from the stop request to the end of the task.
    """

    value: Any = None
    error: BaseException | None = None
    stopped: bool = False
    seconds: float = 0.0
    stop_latency_s: float | None = None


_WARM = threading.Event()
_WARM_LOCK = threading.Lock()
_WARM_STARTED = False


def warm_up() -> threading.Event:
    """Import, in a background thread, what torch imports on first use.

    The first optimiser a process builds imports ``torch._dynamo`` (sympy and
    friends: seconds of imports that hold the GIL in slices of up to ~0.5 s).
    Done during the first training it freezes the viewer; the Train widget
    calls this when it is docked, while the person is still choosing layers.
    Returns an event set when done (also on failure).
    """
    global _WARM_STARTED
    with _WARM_LOCK:
        if _WARM_STARTED:
            return _WARM
        _WARM_STARTED = True

    def run():
        try:
            import torch

            torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
        except Exception:  # noqa: BLE001 - only a warm-up; training reports real errors
            pass
        finally:
            _WARM.set()

    # Not a daemon: a process that quits right away (a screenshot script) waits for the
    # imports to finish instead of tearing the interpreter down in the middle of them.
    threading.Thread(target=run, name="noisyseg-warm-up", daemon=False).start()
    return _WARM


def worker_threads() -> int:
    """Torch threads for training: every core but one, which stays with the GUI."""
    return max(1, (os.cpu_count() or 2) - 1)


class TrainingJob(QObject):
    """One background task with typed events and a stop button.

    Parameters
    ----------
    task : callable
        ``task(progress) -> value``, run in a worker thread.
    name : str
        Shown in messages.
    torch_threads : int or None
        Intra-op threads for torch while the task runs (default
        :func:`worker_threads`, restored afterwards); None leaves torch alone.

    Signals
    -------
    event(object)
        Every event of the task (StateEvent, StepEvent (coalesced), EpochEvent,
        PreviewEvent, ErrorEvent), in the GUI thread.
    finished(object)
        A :class:`JobOutcome`, once, in the GUI thread.
    """

    event = Signal(object)
    finished = Signal(object)

    def __init__(self, task: Callable[[Progress], Any], name: str = "training",
                 torch_threads: int | None = -1, parent=None):
        super().__init__(parent)
        self.task = task
        self.name = name
        self.torch_threads = worker_threads() if torch_threads == -1 else torch_threads
        self.progress = Progress(self._forward, threading.Event())
        self.worker = None
        self.outcome: JobOutcome | None = None
        self._stop_requested_at: float | None = None
        self._last_step = 0.0

    # ----- control ------------------------------------------------------------
    def start(self) -> None:
        from napari.qt.threading import create_worker

        self.worker = create_worker(self._run, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._on_returned)
        # napari asks every worker to quit (and waits for it) when the application
        # quits; a FunctionWorker cannot be interrupted, so make quit() stop training.
        original_quit = self.worker.quit
        progress = self.progress

        def quit_and_stop():
            progress.request_stop()
            original_quit()

        self.worker.quit = quit_and_stop
        self.worker.start()

    def request_stop(self) -> None:
        """Ask the task to stop; it ends within one training step."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.perf_counter()
        self.progress.request_stop()

    @property
    def running(self) -> bool:
        """True from creation until the outcome is in (a job is started right after creation)."""
        return self.outcome is None

    @property
    def stop_requested(self) -> bool:
        return self.progress.stop_requested

    def wait(self, timeout_s: float = 30.0) -> bool:
        """Block (processing Qt events) until finished; True if it finished."""
        from qtpy.QtWidgets import QApplication

        deadline = time.perf_counter() + timeout_s
        while self.outcome is None and time.perf_counter() < deadline:
            QApplication.processEvents()
            time.sleep(0.005)
        return self.outcome is not None

    # ----- worker thread ------------------------------------------------------
    def _forward(self, event) -> None:
        """Called in the worker thread: hand the event to the GUI thread."""
        if isinstance(event, StepEvent):
            now = time.perf_counter()
            if now - self._last_step < STEP_EVENT_INTERVAL_S:
                return
            self._last_step = now
        self._emit(event)

    def _emit(self, event) -> None:
        try:
            self.event.emit(event)
        except RuntimeError:  # the Qt side is gone (viewer closed): nobody listens, stop
            self.progress.request_stop()

    def _run(self) -> JobOutcome:
        import torch

        previous = torch.get_num_threads()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        start = time.perf_counter()
        outcome = JobOutcome()
        try:
            outcome.value = self.task(self.progress)
        except Exception as error:  # noqa: BLE001 - reported to the person, not raised
            outcome.error = error
            self._emit(ErrorEvent(describe_error(error, self.name), error))
        except BaseException as error:  # noqa: BLE001 - e.g. KeyboardInterrupt in a worker
            outcome.error = error
        finally:
            if self.torch_threads:
                torch.set_num_threads(previous)
        end = time.perf_counter()
        outcome.seconds = end - start
        outcome.stopped = self.progress.stop_requested
        if self._stop_requested_at is not None:
            outcome.stop_latency_s = end - self._stop_requested_at
        return outcome

    # ----- GUI thread ---------------------------------------------------------
    def _on_returned(self, outcome: JobOutcome) -> None:
        self.outcome = outcome
        try:
            self.finished.emit(outcome)
        except RuntimeError:  # pragma: no cover - deleted while the result was on its way
            pass


def describe_error(error: BaseException, what: str = "training") -> str:
    """One sentence for a person: what failed and why (no traceback)."""
    text = str(error).strip() or type(error).__name__
    lowered = text.lower()
    if "out of memory" in lowered:
        return (f"{what.capitalize()} ran out of memory ({text.splitlines()[0]}). "
                "Use a smaller patch size, batch size or width, or the CPU.")
    if isinstance(error, (ValueError, FileExistsError, FileNotFoundError, KeyError)):
        return f"{what.capitalize()} failed: {text}"
    return f"{what.capitalize()} failed ({type(error).__name__}): {text}"
