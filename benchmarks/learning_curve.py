"""Test Dice after every epoch: is a run's last epoch typical of its curve?

Usage (from the repository root)::

    python benchmarks/learning_curve.py --data ../shared/data --setting hippocampus/erode_dilate \
        --seeds 1 --labels clean,noisy --epochs 20 [--lr-schedule cosine] [--name NAME]

``quality.py`` scores each network once, on its final weights. This trains the
baseline U-Net (the floor's and the ceiling's network, the full profile of
``quality.py``) on the clean or on the noisy training labels of one setting and
scores the held-out clean labels after every epoch, with the same split, noise
draw (noise seed = training seed, as ``quality.py``) and scoring. A curve that
swings between neighbouring epochs by more than two methods differ says the
final-weights comparison measures where a run happened to stop.

Writes ``<out>/<name>.json`` (per epoch: test Dice, per class, training loss) and
``<out>/<name>.md`` (one column per run), also printed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402
from napari_noisyseg.core.dataset import build_dataset  # noqa: E402
from napari_noisyseg.engine.losses import ce_dice_loss  # noqa: E402
from napari_noisyseg.engine.train import TrainingRun  # noqa: E402


def test_dice(model, run: TrainingRun, test, test_labels: list, n_classes: int) -> dict:
    """Mean foreground Dice and per-class Dice of ``model`` on the clean test labels."""
    predictions = quality.model_predictions(model, test, run.path, run.patch_size)
    scores = quality.prediction_scores(predictions, test_labels, n_classes)
    return {"dice": scores["dice"], "dice_per_class": scores["dice_per_class"]}


def curve(data: dict, spec, profile, setting, seed: int, labels: str, epochs=None, lr_schedule=None) -> dict:
    """Train the baseline on ``labels`` ("clean" or "noisy") with ``seed``; test Dice per epoch.

    The loop is ``methods/baseline.py``'s with a test pass after each epoch.
    """
    n_classes = data["n_classes"]
    given = data["train_labels"]
    if labels == "noisy":
        given = quality.simulate_setting(setting, data, seed).noisy
    train = build_dataset(data["train_images"], given, data["train"], modes=spec.mode, n_classes=n_classes)
    test = build_dataset(data["test_images"], data["test_labels"], data["test"], modes=spec.mode,
                         n_classes=n_classes)
    config = quality.make_config(quality.FLOOR_METHOD, seed, profile, {}, epochs=epochs, lr_schedule=lr_schedule)
    run = TrainingRun(train, config)
    model, optimizer = run.new_model()
    scaler = run.make_scaler()
    points = []
    start = time.perf_counter()
    for epoch in run.epochs():
        model.train()
        losses = []
        for batch in run.batches():
            with run.path.autocast():
                logits = model(batch.image)
            loss = ce_dice_loss(logits, batch.labels, batch.weights)
            run.step(optimizer, loss, scaler, epoch)
            losses.append(float(loss.detach()))
        run.end_epoch(epoch)
        point = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                 **test_dice(model, run, test, data["test_labels"], n_classes)}
        points.append(point)
        print(f"    epoch {point['epoch']:3d}: test Dice {point['dice']:.3f} "
              f"(per class {' / '.join(f'{d:.3f}' for d in point['dice_per_class'][1:])})", flush=True)
    return {"seed": seed, "labels": labels, "points": points, "wall_s": time.perf_counter() - start}


def markdown(report: dict) -> str:
    runs = report["runs"]
    schedule = report.get("lr_schedule", "constant")
    lines = [f"# Test Dice per epoch: {report['setting']}, baseline U-Net"
             + ("" if schedule == "constant" else f", {schedule} learning rate"), "",
             "| epoch | " + " | ".join(f"{r['labels']} labels, seed {r['seed']}" for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for i in range(max(len(r["points"]) for r in runs)):
        cells = [f"{r['points'][i]['dice']:.3f}" if i < len(r["points"]) else "" for r in runs]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    spans = []
    for r in runs:
        dice = np.array([p["dice"] for p in r["points"]])
        late = dice[len(dice) // 2:]
        step = np.abs(np.diff(late)).max() if len(late) > 1 else 0.0
        spans.append(f"{r['labels']} seed {r['seed']}: over the second half mean {late.mean():.3f}, range "
                     f"{late.min():.3f}–{late.max():.3f}, largest step between neighbouring epochs {step:.3f}; "
                     f"{r['wall_s']:.0f} s")
    lines += ["", "Mean foreground Dice on the clean held-out labels after each epoch. " + "; ".join(spans) + ".",
              f"Machine: {report['machine']['cpu_model']}, torch {report['machine']['torch']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = quality.one_setting_parser(__doc__.split("\n\n")[0], "hippocampus/erode_dilate", "learning_curve",
                                        training_budget=True)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (noise draw = training seed)")
    parser.add_argument("--labels", default="clean,noisy", help="clean, noisy or both (comma-separated)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        kinds = [k.strip() for k in args.labels.split(",") if k.strip()]
        if not seeds or not kinds or any(k not in ("clean", "noisy") for k in kinds):
            raise ValueError(f"--seeds needs integers and --labels clean and/or noisy, not {args.seeds!r} / "
                             f"{args.labels!r}")
        setting, spec, profile, data = quality.load_full_setting(args.data, args.setting)
    except (quality.DataError, ValueError, quality.io.InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = quality.budget_report(argv, "benchmarks/learning_curve.py", "learning_curve", setting, profile, args)
    for seed in seeds:
        for kind in kinds:
            print(f"[{setting.name}] {kind} labels, seed {seed} ...", flush=True)
            report["runs"].append(curve(data, spec, profile, setting, seed, kind, args.epochs, args.lr_schedule))
    quality.save_and_print(report, args.out, args.name, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
