"""Does the viewer stay responsive while a method trains? (issue 4, target < 100 ms)

Opens a real napari viewer on the nuclei sample, docks the Train widget, starts
training (Co-Seg when it is registered, else the baseline) through the
widget's Train button, and measures the gaps between the ticks of a 10 ms
QTimer on the GUI thread for the whole training (previews and the final
prediction included). A gap is how long the event loop could not answer: a
click, a repaint or a key press waits at most that long.

Run under a display (``xvfb-run -a``)::

    xvfb-run -a .venv/bin/python benchmarks/responsiveness.py            # defaults
    xvfb-run -a .venv/bin/python benchmarks/responsiveness.py --threads 1 2

``--threads`` compares torch intra-op thread counts for the worker (the widget's
default is every core but one, :func:`napari_noisyseg.widgets.worker.worker_threads`).
Writes ``benchmarks/results/responsiveness.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TARGET_MS = 100.0
TICK_MS = 10


def measure(method: str, epochs: int, threads: int, crop: int, preview_every: int, max_s: float,
            diagnose: bool = False, wait_warm_up: bool = True) -> dict:
    import napari
    import torch
    from qtpy.QtCore import QElapsedTimer, QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_noisyseg.widgets import worker as worker_module

    worker_module.worker_threads = lambda: threads  # what TrainingJob uses by default
    viewer = napari.Viewer(show=True, title="responsiveness")
    viewer.open_sample("napari-noisyseg", "nuclei_2d")
    if crop:
        for name in ("nuclei image", "nuclei labels"):
            layer = viewer.layers[name]
            layer.data = np.array(layer.data[:, :crop, :crop])
    _, train = viewer.window.add_plugin_dock_widget("napari-noisyseg", "Train")
    train.set_pair(0, "nuclei image", "nuclei labels")
    train.method.setCurrentIndex(train.method.findData(method))
    train.epochs.setValue(epochs)
    train.preview_every.setValue(preview_every)
    warm_started = time.perf_counter()
    if wait_warm_up:  # the widget imports torch's lazy modules when docked (worker.warm_up)
        while not worker_module.warm_up().is_set():
            QApplication.processEvents()
            time.sleep(0.01)
    warm_s = time.perf_counter() - warm_started
    for _ in range(20):  # let the window settle before measuring
        QApplication.processEvents()
        time.sleep(0.02)

    clock = QElapsedTimer()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(clock.nsecsElapsed() / 1e6))
    clock.start()
    timer.start()
    counts = {"step": 0, "epoch": 0, "preview": 0}

    timeline: list[tuple[float, str]] = []  # (ms, what): to tell which phase a long gap falls in

    def count(event):
        kind = type(event).__name__.replace("Event", "").lower()
        if kind in counts:
            counts[kind] += 1
        label = getattr(event, "state", "") or kind
        if not timeline or timeline[-1][1] != label:
            timeline.append((clock.nsecsElapsed() / 1e6, label))

    train.state.job_started.connect(lambda job: job.event.connect(count))
    stalls = _Watchdog(ticks, clock) if diagnose else None
    started = time.perf_counter()
    job = train.train()
    if job is None:
        raise SystemExit(f"training did not start: {train.status.text()}")
    # A real event loop (as napari.run() has), left when the job has finished.
    loop = QEventLoop()
    finished = []
    train.state.job_finished.connect(lambda *_: (finished.append(True), loop.quit()))
    stop_sent = []
    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(lambda: (stop_sent.append(True), train.stop()))
    deadline.start(int(max_s * 1000))
    if not finished:  # until the result is on screen (the layers are updated in steps)
        loop.exec()
    timer.stop()
    deadline.stop()
    if stalls is not None:
        stalls.stop()
    stop_sent = bool(stop_sent)
    seconds = time.perf_counter() - started
    gaps = np.diff(np.asarray(ticks)) if len(ticks) > 1 else np.zeros(1)
    outcome = job.outcome
    finished_ms = clock.nsecsElapsed() / 1e6
    worst = []
    for index in np.argsort(gaps)[::-1][:5]:
        end = ticks[index + 1]
        before = [label for t, label in timeline if t <= end - gaps[index]]
        worst.append({"at_s": round(end / 1000, 2), "gap_ms": round(float(gaps[index]), 1),
                      "after_event": before[-1] if before else "(before the first event)"})
    viewer.close()
    return {
        "method": method,
        "torch_threads": threads,
        "epochs": epochs,
        "crop": crop or None,
        "preview_every": preview_every,
        "waited_for_warm_up": wait_warm_up,
        "warm_up_wait_s": round(warm_s, 2),
        "training_s": round(seconds, 2),
        "stopped_at_max_s": stop_sent,
        "error": None if outcome.error is None else str(outcome.error),
        "step_events": counts["step"],  # forwarded to the GUI (coalesced to <= 10 per second)
        "epochs_done": counts["epoch"],
        "previews": counts["preview"],
        "ticks": int(len(ticks)),
        "longest_gap_ms": round(float(gaps.max()), 1),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "p95_gap_ms": round(float(np.percentile(gaps, 95)), 1),
        "median_gap_ms": round(float(np.median(gaps)), 1),
        "gaps_over_100ms": int((gaps > TARGET_MS).sum()),
        "worst_gaps": worst,
        "stall_stacks": stalls.report() if stalls is not None else None,
        "job_finished_at_s": round(finished_ms / 1000, 2),
        "torch_version": torch.__version__,
    }


def measure_idle(seconds: float) -> dict:
    """The same timer with the viewer open and nothing training: the floor that the
    machine itself (other processes, the virtual display) sets on the gaps."""
    import napari
    from qtpy.QtCore import QElapsedTimer, QEventLoop, QTimer

    viewer = napari.Viewer(show=True, title="responsiveness (idle)")
    viewer.open_sample("napari-noisyseg", "nuclei_2d")
    viewer.window.add_plugin_dock_widget("napari-noisyseg", "Train")
    clock = QElapsedTimer()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(clock.nsecsElapsed() / 1e6))
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    clock.start()
    timer.start()
    loop.exec()
    timer.stop()
    viewer.close()
    gaps = np.diff(np.asarray(ticks))
    return {
        "method": "(idle)", "torch_threads": None, "training_s": round(seconds, 2), "step_events": 0,
        "ticks": int(len(ticks)), "longest_gap_ms": round(float(gaps.max()), 1),
        "p99_gap_ms": round(float(np.percentile(gaps, 99)), 1),
        "p95_gap_ms": round(float(np.percentile(gaps, 95)), 1),
        "median_gap_ms": round(float(np.median(gaps)), 1),
        "gaps_over_100ms": int((gaps > TARGET_MS).sum()),
    }


class _Watchdog:
    """Samples the GUI thread's Python stack whenever the timer has not ticked for 150 ms.

    Tells a stall in our own code (a stack inside napari_noisyseg) from the GUI
    thread merely waiting for a CPU or for the GIL.
    """

    def __init__(self, ticks, clock, threshold_ms: float = 150.0):
        import threading

        self.ticks, self.clock, self.threshold = ticks, clock, threshold_ms
        self.gui = threading.get_ident()
        self.samples: dict = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        import traceback

        while not self._stop.wait(0.05):
            if not self.ticks:
                continue
            late = self.clock.nsecsElapsed() / 1e6 - self.ticks[-1]
            if late < self.threshold:
                continue
            frame = sys._current_frames().get(self.gui)
            if frame is None:
                continue
            stack = traceback.extract_stack(frame)[-6:]
            key = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack))
            self.samples[key] = self.samples.get(key, 0) + 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(1.0)

    def report(self) -> list:
        """The most frequent GUI-thread stacks during stalls (50 ms samples)."""
        ranked = sorted(self.samples.items(), key=lambda item: -item[1])[:8]
        return [{"samples": n, "stack": key} for key, n in ranked]


def main(argv=None) -> int:
    from napari_noisyseg.methods import REGISTRY

    default_method = "coseg" if "coseg" in REGISTRY else "baseline"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default=default_method)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch threads in the worker (default: the widget's default)")
    parser.add_argument("--crop", type=int, default=0, help="crop the sample to N x N (0 = full size)")
    parser.add_argument("--preview-every", type=int, default=20)
    parser.add_argument("--max-s", type=float, default=240.0, help="press Stop after this many seconds")
    parser.add_argument("--idle-s", type=float, default=30.0,
                        help="first measure this long with nothing training (0 = skip): the machine's floor")
    parser.add_argument("--cold", action="store_true",
                        help="click Train at once, without waiting for the widget's torch warm-up")
    parser.add_argument("--diagnose", action="store_true",
                        help="sample the GUI thread's stack during stalls (adds a watchdog thread)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "responsiveness.json")
    args = parser.parse_args(argv)

    from napari_noisyseg.widgets.worker import worker_threads

    runs = []
    if args.idle_s > 0:
        runs.append(measure_idle(args.idle_s))
        print(json.dumps(runs[-1]), flush=True)
    for threads in args.threads or [worker_threads()]:
        runs.append(measure(args.method, args.epochs, threads, args.crop, args.preview_every, args.max_s,
                            args.diagnose, not args.cold))
        print(json.dumps(runs[-1]), flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {
        "what": "longest gap between ticks of a 10 ms QTimer on the GUI thread while training runs "
                "in the Train widget's worker (napari viewer on Xvfb, nuclei sample)",
        "target_ms": TARGET_MS,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_average_after": [round(v, 2) for v in load] if load else None},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)

    header = f"{'method':<10}{'threads':>8}{'run s':>9}{'events':>7}{'longest':>9}{'p99':>7}{'p95':>7}{'>100ms':>8}"
    print("\n" + header)
    for run in runs:
        print(f"{run['method']:<10}{str(run['torch_threads']):>8}{run['training_s']:>9.1f}{run['step_events']:>7}"
              f"{run['longest_gap_ms']:>9.1f}{run['p99_gap_ms']:>7.1f}{run['p95_gap_ms']:>7.1f}"
              f"{run['gaps_over_100ms']:>8}")
    print(f"target: longest gap < {TARGET_MS:.0f} ms; load average {report['machine']['load_average_after']}")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
