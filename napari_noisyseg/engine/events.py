"""Typed progress events and the stop flag shared by training and its listeners.

Training code calls :meth:`Progress.emit` and checks :attr:`Progress.stop_requested`
once per step; a widget, the CLI or a test only listens. Nothing here knows about Qt.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable



@dataclass
class StateEvent:
    """A change of phase: starting, training, predicting, done, stopped; ``message`` for people."""

    state: str
    message: str = ""


@dataclass
class StepEvent:
    """One optimisation step."""

    epoch: int
    step: int
    losses: dict


@dataclass
class EpochEvent:
    """End of an epoch: mean losses and metrics (per-class IoU against the current labels)."""

    epoch: int
    total_epochs: int
    losses: dict
    metrics: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    total_is_estimate: bool = False  # under a time budget ``total_epochs`` is re-estimated every epoch

    @property
    def count_text(self) -> str:
        """``"3/12"``, or ``"3/≈12"`` where the total is a time budget's estimate."""
        return f"{self.epoch + 1}/{'≈' if self.total_is_estimate else ''}{self.total_epochs}"


@dataclass
class PreviewEvent:
    """Current noise likelihood and corrected labels of a few samples.

    ``noise[i]`` is float32 (H, W) in [0, 1] and ``corrected[i]`` int (H, W) for
    sample ``sample_indices[i]``.
    """

    step: int
    sample_indices: list
    noise: list
    corrected: list


@dataclass
class ErrorEvent:
    message: str
    exception: BaseException | None = None


Event = StateEvent | StepEvent | EpochEvent | PreviewEvent | ErrorEvent


class Progress:
    """Where events go, and whether someone asked to stop.

    Parameters
    ----------
    callback : callable, optional
        Called with every event, from the training thread.
    stop : threading.Event, optional
        Set it (or call :meth:`request_stop`) from any thread to stop training.
    """

    def __init__(self, callback: Callable[[Event], None] | None = None, stop: threading.Event | None = None):
        self.callback = callback
        self.stop = stop or threading.Event()

    def emit(self, event: Event) -> None:
        if self.callback is not None:
            self.callback(event)

    def request_stop(self) -> None:
        self.stop.set()

    @property
    def stop_requested(self) -> bool:
        return self.stop.is_set()


def as_progress(events) -> Progress:
    """Accept None, a callable or a :class:`Progress`."""
    if isinstance(events, Progress):
        return events
    if events is None or callable(events):
        return Progress(events)
    raise TypeError(f"events must be a Progress, a callable or None, not {type(events).__name__}")


class EventLog:
    """A callback that keeps every event (handy for tests and the CLI)."""

    def __init__(self):
        self.events: list = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def of(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]


