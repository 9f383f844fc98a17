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

After every epoch the training images are scored too: the argmax against their clean
labels and against the labels trained on. A network that memorises the noise shows it
there first: its argmax moves towards the noisy labels and no closer to the clean ones
while the training loss keeps falling (and test Dice, from some epoch on, falls).

Writes ``<out>/<name>.json`` (per epoch: test Dice, per class, training loss, train
argmax against the clean and the given labels) and ``<out>/<name>.md`` (one column
per run, and the train columns), also printed.
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


def train_argmax_dice(model, run: TrainingRun, train, clean_labels: list, given_labels: list,
                      n_classes: int) -> dict:
    """Mean foreground Dice of ``model``'s argmax on the training images against their clean labels
    (``train_dice_clean``) and against the labels it trains on (``train_dice_given``; the same on clean runs)."""
    predictions = quality.model_predictions(model, train, run.path, run.patch_size)
    return {"train_dice_clean": quality.prediction_scores(predictions, clean_labels, n_classes)["dice"],
            "train_dice_given": quality.prediction_scores(predictions, given_labels, n_classes)["dice"]}


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
                 **test_dice(model, run, test, data["test_labels"], n_classes),
                 **train_argmax_dice(model, run, train, data["train_labels"], given, n_classes)}
        points.append(point)
        print(f"    epoch {point['epoch']:3d}: test Dice {point['dice']:.3f} "
              f"(per class {' / '.join(f'{d:.3f}' for d in point['dice_per_class'][1:])}); train argmax vs "
              f"clean {point['train_dice_clean']:.3f}, vs given {point['train_dice_given']:.3f}", flush=True)
    return {"seed": seed, "labels": labels, "points": points, "wall_s": time.perf_counter() - start}


def markdown(report: dict) -> str:
    runs = report["runs"]
    # Files written before the train columns existed have test Dice only.
    with_train = all("train_dice_clean" in p for r in runs for p in r["points"])
    columns = [f"{r['labels']} labels, seed {r['seed']}" for r in runs]
    if with_train:
        columns = [f"{c}: {part}" for c in columns for part in ("test", "train vs clean", "train vs given")]
    lines = [f"# Test Dice per epoch: {report['setting']}, baseline U-Net" + quality.budget_title(report), "",
             "| epoch | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    keys = ("dice", "train_dice_clean", "train_dice_given") if with_train else ("dice",)
    for i in range(max(len(r["points"]) for r in runs)):
        cells = [f"{r['points'][i][key]:.3f}" if i < len(r["points"]) else "" for r in runs for key in keys]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    spans = []
    for r in runs:
        dice = np.array([p["dice"] for p in r["points"]])
        late = dice[len(dice) // 2:]
        step = np.abs(np.diff(late)).max() if len(late) > 1 else 0.0
        spans.append(f"{r['labels']} seed {r['seed']}: over the second half mean {late.mean():.3f}, range "
                     f"{late.min():.3f}–{late.max():.3f}, largest step between neighbouring epochs {step:.3f}; "
                     f"{r['wall_s']:.0f} s")
    lines += ["", "Mean foreground Dice on the clean held-out labels after each epoch"
              + (" (test), and of the argmax on the training images against their clean labels and against "
                 "the labels trained on (train)" if with_train else "") + ". " + "; ".join(spans) + ".",
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
        seeds = quality.comma_list(args.seeds, int)
        kinds = quality.comma_list(args.labels)
        if not seeds or not kinds or any(k not in ("clean", "noisy") for k in kinds):
            raise ValueError(f"--seeds needs integers and --labels clean and/or noisy, not {args.seeds!r} / "
                             f"{args.labels!r}")
        setting, spec, profile, data = quality.load_full_setting(args.data, args.setting, args.n_train)
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
