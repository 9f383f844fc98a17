"""How much of a ``minutes`` budget each method trains for.

Usage::

    python benchmarks/time_budget.py [--minutes 1] [--methods all] [--name time_budget]

Trains every method on the four BBBC039 sample images with their noisy labels
(``sample_data/``, shipped) under a wall-time budget, one after the other with
the same config, each in a new process (a user's first training starts cold),
and reports when the last epoch ended against the training share of the budget
(the budget less the share kept for the final predictions: 15 %, or what the run
measured its closing predictions need, ``history["closing_reserve_s"]``), how many epochs and
optimisation steps ran, how the epochs split into the method's phases, and the
whole call's wall time against the budget. Prints a table and writes
``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402
from napari_noisyseg.engine.train import PREDICTION_RESERVE  # noqa: E402
from napari_noisyseg.folders import load_pairs  # noqa: E402
from napari_noisyseg.methods import TrainConfig, available_methods  # noqa: E402
from napari_noisyseg.pipeline import train_pairs  # noqa: E402

SAMPLE = ROOT / "sample_data" / "bbbc039"
PHASE_KEYS = ("stage", "phase")  # Co-Seg's stage, confident learning's fold / final phase


def phases(history: dict) -> str:
    """Epochs per phase, e.g. ``1:5 4:7`` for five stage-1 and seven stage-4 epochs ('' if one phase)."""
    for key in PHASE_KEYS:
        values = history.get(key)
        if isinstance(values, list) and values:
            counts = collections.Counter(values)
            return " ".join(f"{k}:{n}" for k, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
    return ""


def run_method(method: str, minutes: float, seed: int) -> dict:
    loaded = load_pairs(SAMPLE / "images", SAMPLE / "labels_noisy")
    config = TrainConfig(method=method, epochs=None, minutes=minutes, seed=seed)
    start = time.perf_counter()
    _, result = train_pairs(loaded, config)
    wall = time.perf_counter() - start
    history = result.history
    elapsed = history.get("elapsed_s") or [0.0]
    # Code before the measured reserve kept a fixed share and recorded none.
    reserve = history.get("closing_reserve_s", 60.0 * minutes * PREDICTION_RESERVE)
    training_budget = 60.0 * minutes - reserve
    return {
        "method": method,
        "epochs": len(history.get("epoch", [])),
        "steps": history.get("steps"),
        "phases": phases(history),
        "last_epoch_end_s": elapsed[-1],
        "closing_reserve_s": reserve,
        # What the closing predictions took (code before they were timed recorded none).
        "closing_s": history.get("closing_s"),
        "training_budget_s": training_budget,
        "budget_used": elapsed[-1] / training_budget,
        "wall_s": wall,
        "budget_s": 60.0 * minutes,
    }


def _seconds(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def one_process(method: str, args) -> dict:
    """Run one method in a new Python process, as a user's first training starts cold."""
    command = [sys.executable, __file__, "--one", method, "--minutes", str(args.minutes), "--seed", str(args.seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def precision_note() -> str:
    from napari_noisyseg.engine.device import numeric_path, resolve_device

    return numeric_path(resolve_device("auto")[0], "auto").name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--methods", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="time_budget")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # one method, in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_method(args.one, args.minutes, args.seed)))
        return 0
    methods = list(available_methods()) if args.methods == "all" else quality.comma_list(args.methods)
    rows = [one_process(method, args) for method in methods]
    header = (f"{'method':<10} {'epochs':>6} {'steps':>6}  {'phases':<20} {'reserve s':>9} {'closing s':>9} "
              f"{'last epoch end s':>16} {'of training budget':>18} {'wall s':>7}")
    print(f"{args.minutes:g}-minute budget ({60 * args.minutes:.0f} s, at least {PREDICTION_RESERVE:.0%} of it kept for "
          f"the final predictions), 4 BBBC039 sample images, {quality.cpu_model()}, {precision_note()}")
    print(header)
    for r in rows:
        print(f"{r['method']:<10} {r['epochs']:>6} {r['steps']!s:>6}  {r['phases']:<20} {r['closing_reserve_s']:>9.1f} "
              f"{_seconds(r.get('closing_s')):>9} {r['last_epoch_end_s']:>16.1f} {r['budget_used']:>17.0%} {r['wall_s']:>7.1f}")
    out = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    record = quality.run_metadata(sys.argv[1:], "benchmarks/time_budget.py")
    out.write_text(json.dumps({**record, "minutes": args.minutes, "seed": args.seed,
                               "precision": precision_note(), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
