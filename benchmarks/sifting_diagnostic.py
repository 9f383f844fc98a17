"""Can small-loss sifting find the corrupted images? One network, epoch by epoch.

Usage (from the repository root)::

    python benchmarks/sifting_diagnostic.py --data ../shared/data --setting bbbc039/dilate_half \
        [--noise-seed 0] [--train-seed 0] [--epochs 4] [--update-loss ce_dice|ce] [--name NAME]

Co-Seg's stage 1 keeps, in every mini-batch, the patches with the smallest CE + soft Dice
and trusts the images whose patches it keeps. That works only if the network fits the
corrupted images worse than the exact ones. This script trains one network the way the
quality benchmark's floor trains (full profile; CE + Dice, or CE alone with
``--update-loss ce``) on a setting where only some images are corrupted (``fraction`` < 1),
and after every epoch measures, against the "this image is corrupted" flag:

- ``auroc_batch_rank``: each image's mean rank of its patches' CE + Dice inside their
  mini-batch (0 smallest, 1 largest): the quantity co-teaching sifts by. Above 0.5 the
  corrupted images rank higher and get dropped, as intended; below 0.5 they are kept;
- ``auroc_patch_loss``: each image's mean patch CE + Dice over the epoch;
- ``auroc_image_ce`` and ``auroc_image_1-dice``: the whole image's mean CE and
  1 − Dice(argmax, given labels) after the epoch;
- where the network puts the boundary: the median predicted / labelled foreground area
  on corrupted and on exact images, and the mean foreground probability in a 3-px ring
  just outside and just inside the CLEAN objects (foreground = any class > 0).

Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (one row per epoch), also printed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402
from napari_noisyseg.core.dataset import build_dataset  # noqa: E402
from napari_noisyseg.engine.losses import ce_dice_loss, ce_dice_per_sample, ce_map, per_sample  # noqa: E402
from napari_noisyseg.engine.train import TrainingRun  # noqa: E402

RING_PX = 3
UPDATE_LOSSES = ("ce_dice", "ce")


def auroc(flags: np.ndarray, scores) -> float:
    """AUROC of ``scores`` against ``flags``; NaN scores (no pixel to average) count as 0."""
    return float(roc_auc_score(flags, np.nan_to_num(np.asarray(scores, float))))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def image_measures(probabilities: np.ndarray, given: np.ndarray, clean: np.ndarray) -> dict:
    """Per-image numbers after an epoch.

    Parameters
    ----------
    probabilities : ndarray (K, H, W) float32
    given, clean : ndarray (H, W) int
        The labels the network trained on and the clean ones.
    """
    p_given = np.take_along_axis(probabilities, given[None], 0)[0]
    ce = -np.log(np.clip(p_given, 1e-6, 1.0))
    predicted = probabilities.argmax(0) > 0
    labelled, true = given > 0, clean > 0
    p_fg = 1.0 - probabilities[0]
    outside = ndi.binary_dilation(true, iterations=RING_PX) & ~true
    inside = true & ~ndi.binary_erosion(true, iterations=RING_PX)
    total = int(predicted.sum() + labelled.sum())  # 0: nothing labelled, nothing predicted, a perfect match
    return {
        "ce": float(ce.mean()),
        "dice": float(2 * (predicted & labelled).sum() / total) if total else 1.0,
        "area_ratio": float(predicted.sum() / max(labelled.sum(), 1)),
        "p_fg_outside": _mean(p_fg[outside]),
        "p_fg_inside": _mean(p_fg[inside]),
    }


def diagnose(data: dict, spec, profile, setting, noise_seed: int, train_seed: int, epochs: int,
             update_loss: str, log=print) -> dict:
    simulated = quality.simulate_setting(setting, data, noise_seed)
    corrupted = np.array([mask.any() for mask in simulated.noise_masks])
    if corrupted.all() or not corrupted.any():
        raise ValueError(f"setting {setting.name} corrupts {int(corrupted.sum())} of {corrupted.size} images: "
                         "sifting needs both corrupted and exact ones (a fraction below 1)")
    dataset = build_dataset(data["train_images"], simulated.noisy, data["train"], modes=spec.mode,
                            n_classes=data["n_classes"])
    config = quality.make_config(quality.FLOOR_METHOD, train_seed, profile, {}, epochs=epochs)
    run = TrainingRun(dataset, config)
    model, optimizer = run.new_model()
    scaler = run.make_scaler()
    n = len(dataset)
    epochs_out = []
    for epoch in run.epochs():
        start = time.perf_counter()
        model.train()
        loss_sum, rank_sum, count = np.zeros(n), np.zeros(n), np.zeros(n)
        for batch in run.batches():
            with run.path.autocast():
                logits = model(batch.image)
            with torch.no_grad():
                scores = ce_dice_per_sample(logits.float(), batch.labels, batch.weights).cpu().numpy()
                samples = batch.samples.cpu().numpy()
                ranks = scores.argsort().argsort() / max(len(scores) - 1, 1)
                np.add.at(loss_sum, samples, scores)
                np.add.at(rank_sum, samples, ranks)
                np.add.at(count, samples, 1)
            if update_loss == "ce":
                loss = per_sample(ce_map(logits.float(), batch.labels), batch.weights).mean()
            else:
                loss = ce_dice_loss(logits, batch.labels, batch.weights)
            run.step(optimizer, loss, scaler, epoch)
        train_s = time.perf_counter() - start
        per_image = [image_measures(p, s.labels, clean)
                     for p, s, clean in zip(run.predict(model), dataset.samples, data["train_labels"])]
        column = lambda key: np.array([m[key] for m in per_image])  # noqa: E731
        seen = count > 0
        row = {
            "epoch": epoch + 1, "train_s": train_s,
            "auroc_batch_rank": auroc(corrupted[seen], rank_sum[seen] / count[seen]),
            "auroc_patch_loss": auroc(corrupted[seen], loss_sum[seen] / count[seen]),
            "auroc_image_ce": auroc(corrupted, column("ce")),
            "auroc_image_1-dice": auroc(corrupted, 1.0 - column("dice")),
        }
        for name, flags in (("corrupted", corrupted), ("exact", ~corrupted)):
            row[f"area_ratio_{name}"] = float(np.median(column("area_ratio")[flags]))
            row[f"p_fg_outside_{name}"] = float(np.nanmean(column("p_fg_outside")[flags]))
            row[f"p_fg_inside_{name}"] = float(np.nanmean(column("p_fg_inside")[flags]))
        epochs_out.append(row)
        log("    " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return {"noise_seed": noise_seed, "train_seed": train_seed, "update_loss": update_loss,
            "corrupted_images": int(corrupted.sum()), "images": int(n), "epochs": epochs_out,
            "device": run.path.name}


def markdown(report: dict) -> str:
    lines = [f"# Sifting diagnostic: {report['setting']}, noise seed {report['noise_seed']}, training seed "
             f"{report['train_seed']}, update loss {report['update_loss']}", "",
             f"{report['corrupted_images']} of {report['images']} training images corrupted.", "",
             "| epoch | AUROC batch rank | AUROC patch loss | AUROC image CE | AUROC image 1−Dice | "
             "pred/label area, corrupted | exact | p(fg) ring outside, corrupted | exact | "
             "p(fg) ring inside, corrupted | exact | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in report["epochs"]:
        lines.append(
            f"| {e['epoch']} | {e['auroc_batch_rank']:.2f} | {e['auroc_patch_loss']:.2f} | {e['auroc_image_ce']:.2f} | "
            f"{e['auroc_image_1-dice']:.2f} | {e['area_ratio_corrupted']:.2f} | {e['area_ratio_exact']:.2f} | "
            f"{e['p_fg_outside_corrupted']:.2f} | {e['p_fg_outside_exact']:.2f} | {e['p_fg_inside_corrupted']:.2f} | "
            f"{e['p_fg_inside_exact']:.2f} | {e['train_s']:.0f} |")
    lines += ["", "AUROC against the corrupted-image flag: above 0.5, corrupted images score higher (small-loss "
              "sifting drops them); below 0.5 it keeps them. Area: median over images of the argmax's "
              f"foreground over the given labels' foreground. Rings: {RING_PX} px just outside / inside the "
              "clean objects.",
              f"Machine: {report['machine']['cpu_model']}, torch {report['machine']['torch']}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = quality.one_setting_parser(__doc__.split("\n\n")[0], "bbbc039/dilate_half", "sifting_diagnostic",
                                        "a quality.py setting with fraction < 1")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4, help="epochs (default 4: Co-Seg's stage 1 in full mode)")
    parser.add_argument("--update-loss", default="ce_dice", choices=UPDATE_LOSSES,
                        help="the training loss (default CE + Dice, as the floor and Co-Seg)")
    args = parser.parse_args(argv)
    metadata = quality.run_metadata(argv, "benchmarks/sifting_diagnostic.py")  # the code imported, before training
    try:
        setting, spec, profile, data = quality.load_full_setting(args.data, args.setting)
        print(f"[{setting.name}] noise seed {args.noise_seed}, training seed {args.train_seed}, "
              f"{args.update_loss} ...", flush=True)
        result = diagnose(data, spec, profile, setting, args.noise_seed, args.train_seed, args.epochs,
                          args.update_loss, log=lambda line: print(line, flush=True))
    except (quality.DataError, ValueError, quality.io.InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {**metadata, "benchmark": "sifting_diagnostic",
              "setting": setting.name, **result}
    quality.save_and_print(report, args.out, args.name, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
