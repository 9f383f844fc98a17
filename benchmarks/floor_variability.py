"""How much does the floor move when only the training seed changes?

Usage (from the repository root)::

    python benchmarks/floor_variability.py --data ../shared/data --setting bbbc039/markov_boundary \
        --epochs 18 --pairs 0:0,0:1,1:0,1:1 [--name NAME] [--out benchmarks/results]

The quality benchmark uses one seed for both the noise draw and the training run,
so a floor that differs between seeds mixes the two. Here each ``NOISE:TRAIN`` pair
simulates the setting's noise with the first seed and trains the floor (``baseline``
on the noisy labels, the quality benchmark's full profile) with the second, then
scores, on the same split as ``quality.py``:

- test Dice on the clean held-out labels (as ``quality.py`` computes it);
- on the training images, the mean per-image Dice of the floor's argmax against the
  clean and against the noisy labels (which of the two it learnt);
- the per-image relative foreground change of the noisy labels and of the floor's
  argmax (Markov noise grows or shrinks all objects of an image together, so a floor
  that learns an image's noise follows that image's change: their correlation);
- on the test images, the relative foreground change of the floor's argmax.

Writes ``<out>/<name>.json`` (every number, per image, with the command, commit and
CPU model) and ``<out>/<name>.md`` (one row per pair), also printed.
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
from napari_noisyseg.core import metrics  # noqa: E402
from napari_noisyseg.core.dataset import build_dataset  # noqa: E402


def _foreground(labels) -> float:
    return max(1.0, float((np.asarray(labels) > 0).sum()))  # two training crops have no nuclei


def _dice(pred, truth, n_classes: int) -> float:
    """Mean foreground Dice; 1.0 where neither map has foreground (they agree: no nuclei)."""
    dice = metrics.mean_foreground_dice(pred, truth, n_classes)
    return 1.0 if np.isnan(dice) else float(dice)


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """``"0:0,0:1"`` → ``[(0, 0), (0, 1)]`` (noise seed, training seed)."""
    pairs = []
    for item in quality.comma_list(text):
        noise_seed, sep, train_seed = item.partition(":")
        if not sep:
            raise ValueError(f"--pairs item {item!r} is not NOISE:TRAIN (e.g. 0:1)")
        pairs.append((int(noise_seed), int(train_seed)))
    if not pairs:
        raise ValueError("--pairs names no NOISE:TRAIN pair")
    return pairs


def floor_run(data: dict, spec, profile, setting, noise_seed: int, train_seed: int, epochs=None,
              lr_schedule=None) -> dict:
    """Simulate ``setting``'s noise with ``noise_seed``, train the floor with ``train_seed``, score it.

    Returns
    -------
    dict
        ``noise_seed``, ``train_seed``, ``test_dice``, ``train_dice_pred_clean``,
        ``train_dice_pred_noisy``, ``corr_pred_vs_noisy_change``, ``wall_s`` and the
        per-image lists ``train`` and ``test``.
    """
    clean, n_classes = data["train_labels"], data["n_classes"]
    simulated = quality.simulate_setting(setting, data, noise_seed)
    train = build_dataset(data["train_images"], simulated.noisy, data["train"], modes=spec.mode, n_classes=n_classes)
    test = build_dataset(data["test_images"], data["test_labels"], data["test"], modes=spec.mode,
                         n_classes=n_classes)
    config = quality.make_config(quality.FLOOR_METHOD, train_seed, profile, {}, epochs=epochs, lr_schedule=lr_schedule)
    start = time.perf_counter()
    result = quality.get_method(quality.FLOOR_METHOD).fit(train, config)
    wall = time.perf_counter() - start
    per_train = [{"noisy_change": _foreground(n) / _foreground(c) - 1,
                  "pred_change": _foreground(p) / _foreground(c) - 1, "dice_pred_clean": _dice(p, c, n_classes),
                  "dice_pred_noisy": _dice(p, n, n_classes), "dice_noisy_clean": _dice(n, c, n_classes)}
                 for p, n, c in zip(quality.final_predictions(result, train), simulated.noisy, clean)]
    test_predictions = quality.final_predictions(result, test)
    per_test = [{"pred_change": _foreground(p) / _foreground(c) - 1, "dice": _dice(p, c, n_classes)}
                for p, c in zip(test_predictions, data["test_labels"])]
    noisy_change = np.array([r["noisy_change"] for r in per_train])
    pred_change = np.array([r["pred_change"] for r in per_train])
    return {
        "noise_seed": noise_seed, "train_seed": train_seed,
        "test_dice": quality.prediction_scores(test_predictions, data["test_labels"], n_classes)["dice"],
        "train_dice_pred_clean": float(np.mean([r["dice_pred_clean"] for r in per_train])),
        "train_dice_pred_noisy": float(np.mean([r["dice_pred_noisy"] for r in per_train])),
        "corr_pred_vs_noisy_change": float(np.corrcoef(noisy_change, pred_change)[0, 1]),
        "test_change_sd": float(np.std([r["pred_change"] for r in per_test])),
        "wall_s": wall, "train": per_train, "test": per_test,
    }


def markdown(report: dict) -> str:
    lines = [f"# Floor variability: {report['setting']}, {report['epochs']} epochs" + quality.budget_title(report), "",
             "| noise seed | training seed | test Dice | train argmax vs clean | vs noisy | "
             "corr(per-image change: argmax, noisy) | test per-image change, sd | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        lines.append(f"| {run['noise_seed']} | {run['train_seed']} | {run['test_dice']:.4f} | "
                     f"{run['train_dice_pred_clean']:.3f} | {run['train_dice_pred_noisy']:.3f} | "
                     f"{run['corr_pred_vs_noisy_change']:+.2f} | {run['test_change_sd']:.3f} | {run['wall_s']:.0f} |")
    lines += ["", "Train argmax: the floor's per-image Dice on its own training images against the clean and the "
              "noisy labels (means over images). Change: relative foreground change against the clean labels.",
              f"Machine: {report['machine']['cpu_model']}, torch {report['machine']['torch']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = quality.one_setting_parser(__doc__.split("\n\n")[0], "bbbc039/markov_boundary", "floor_variability",
                                        training_budget=True)
    parser.add_argument("--pairs", default="0:0,0:1,1:0,1:1", help="NOISE:TRAIN seed pairs, comma-separated")
    args = parser.parse_args(argv)
    try:
        pairs = parse_pairs(args.pairs)
        setting, spec, profile, data = quality.load_full_setting(args.data, args.setting, args.n_train)
    except (quality.DataError, ValueError, quality.io.InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = quality.budget_report(argv, "benchmarks/floor_variability.py", "floor_variability", setting,
                                   profile, args)
    for noise_seed, train_seed in pairs:
        print(f"[{setting.name}] noise seed {noise_seed}, training seed {train_seed} ...", flush=True)
        report["runs"].append(floor_run(data, spec, profile, setting, noise_seed, train_seed, args.epochs,
                                        args.lr_schedule))
        print(f"    test Dice {report['runs'][-1]['test_dice']:.4f}", flush=True)
    quality.save_and_print(report, args.out, args.name, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
