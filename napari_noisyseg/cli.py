"""``noisyseg``: the napari-noisyseg pipeline on the command line.

Subcommands: ``simulate``, ``train``, ``apply``, ``compare``, ``predict``, ``evaluate``, ``methods``.
Their arguments and output layout are a stable contract used by the project's
benchmarks and by checks on data outside this repository.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_params(items) -> dict:
    params = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--param expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        params[key.strip()] = _parse_value(value.strip())
    return params


def _print_epoch(event) -> None:
    from .engine.events import EpochEvent, StateEvent

    if isinstance(event, EpochEvent):
        losses = " ".join(f"{k}={v:.4f}" for k, v in event.losses.items())
        iou = event.metrics.get("iou")
        iou_text = " iou=" + ",".join("-" if v is None else f"{v:.3f}" for v in iou) if iou else ""
        print(f"epoch {event.count_text} {losses}{iou_text} ({event.elapsed_s:.0f} s)", flush=True)
    elif isinstance(event, StateEvent) and event.message:
        print(event.message, flush=True)


# ----------------------------------------------------------------------------- commands


def cmd_methods(args) -> int:
    from .methods import available_methods

    for name, summary in available_methods().items():
        print(f"{name:12s} {summary}")
    return 0


def cmd_simulate(args) -> int:
    from .simulation import simulate_folder

    summary = simulate_folder(
        args.labels, args.noise, args.out, fraction=args.fraction, severity=args.severity,
        seed=args.seed, per_slice=args.per_slice, overwrite=args.overwrite, images_dir=args.images,
        **_parse_params(args.param),
    )
    changed = summary.get("noise_fraction", [])
    mean = sum(changed) / len(changed) if changed else 0.0
    print(f"{len(summary['files'])} label files, {sum(summary['corrupted'])} corrupted, "
          f"{100 * mean:.2f}% of pixels changed on average -> {args.out}")
    return 0


def cmd_train(args) -> int:
    from .methods import TrainConfig
    from .folders import check_new_dir, load_pairs
    from .pipeline import train_pairs, write_run

    config = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        minutes=args.minutes,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        patch_size=args.patch_size,
        batch_size=args.batch_size,
        width=args.width,
        depth=args.depth,
        learning_rate=args.lr,
        lr_schedule=args.lr_schedule,
        params=_parse_params(args.param),
    )
    check_new_dir(args.out, args.overwrite)  # fail before training, not after it
    loaded = load_pairs(args.images, args.labels)
    trust = None
    if args.trust:
        from .decisions import load_trust

        trust = load_trust(args.trust, loaded.names, loaded.labels)
    trusted = f"; {sum(int(t.sum()) for t in trust)} trusted pixels" if trust else ""
    previous, start = None, ""
    if args.from_run:
        from .core.dataset import class_count
        from .methods import refit_note, warm_start_refusal
        from .pipeline import load_run_result

        previous = load_run_result(args.from_run, args.method)
        refusal = warm_start_refusal(args.method, previous, class_count(loaded.labels))
        note = refit_note(args.method)
        start = (f"; training afresh, not from {args.from_run} ({refusal}), as the viewer's Retrain does" if refusal
                 else f"; after {args.from_run}: {args.method} trains {note}" if note
                 else f"; starting from the models of {args.from_run}")
    print(f"{len(loaded.names)} image/label pairs; method {args.method}{trusted}{start}", flush=True)
    dataset, result = train_pairs(loaded, config, None if args.quiet else _print_epoch, mode=args.mode, trust=trust,
                                  previous=previous)
    history = write_run(args.out, loaded, dataset, result, overwrite=args.overwrite, mode=args.mode)
    print(f"{history['n_proposals']} proposed regions; wrote {args.out}"
          + (" (stopped early)" if result.stopped else ""))
    if history["n_proposals"] and not args.quiet:
        print(f"review: add a decision column (accept / reject) to {Path(args.out) / 'proposals.csv'}, then "
              f"noisyseg apply --run {args.out} --labels {args.labels} --decisions FILE --out CLEANED")
    return 0


def cmd_apply(args) -> int:
    from .decisions import apply_run_decisions

    summary = apply_run_decisions(args.run, args.labels, args.out, decisions=args.decisions,
                                  accept_above=args.accept_above, overwrite=args.overwrite)
    counts = summary["counts"]
    print(f"{counts['accept']} accepted, {counts['reject']} rejected, {counts['undo']} undone, "
          f"{counts['skipped']} left pending of {summary['regions']} proposed regions; "
          f"{summary['pixels_changed']} pixels changed, {summary['pixels_trusted']} trusted -> {args.out}")
    print(f"retrain with the decisions: noisyseg train --images IMAGES --labels {Path(args.out) / 'cleaned'} "
          f"--trust {Path(args.out) / 'trust'} --from {args.run} --out NEW_RUN")
    return 0


def _format_comparison(document: dict) -> str:
    """The table ``noisyseg compare`` prints: one row per method, then one per pair."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    rows = document["per_method"]
    width = max([len("method")] + [len(m) for m in rows]) + 2
    lines = [f"{'method':{width}s}{'wall s':>8s}{'mean noise':>12s}{'flagged %':>11s}{'proposals':>11s}"
             f"{'agreement':>11s}"]
    for method, row in rows.items():
        flagged = None if row["flagged_fraction"] is None else 100 * row["flagged_fraction"]
        lines.append(f"{method:{width}s}{fmt(row['wall_s'], '8.1f')}{fmt(row['mean_noise'], '12.4f')}"
                     f"{fmt(flagged, '11.2f')}{row['n_proposals']:11d}{fmt(row['dice_with_others'], '11.3f')}"
                     + ("  (stopped)" if row.get("stopped") else ""))
    lines.append(f"agreement: mean Dice of the pixels a method flags (noise >= {document['threshold']:g}) "
                 "with those each other method flags")
    if document["pairwise"]:
        pair_width = max(len(f"{r['a']} vs {r['b']}") for r in document["pairwise"]) + 2
        lines.append(f"{'pair':{pair_width}s}{'dice':>8s}{'iou':>8s}{'spearman':>10s}")
        for row in document["pairwise"]:
            lines.append(f"{row['a'] + ' vs ' + row['b']:{pair_width}s}{fmt(row['dice'], '8.3f')}"
                         f"{fmt(row['iou'], '8.3f')}{fmt(row['spearman'], '10.3f')}")
    if document["not_run"]:
        lines.append(f"not run (stopped): {', '.join(document['not_run'])}")
    return "\n".join(lines)


def cmd_compare(args) -> int:
    from .core.dataset import build_dataset
    from .folders import check_new_dir, load_pairs
    from .pipeline import compare_methods, resolve_methods, split_method_params, write_comparison

    methods = resolve_methods(args.methods)  # unknown names: exit 2 before reading anything
    params = split_method_params(_parse_params(args.param), methods)
    config_kwargs = dict(
        epochs=args.epochs, minutes=args.minutes, device=args.device, precision=args.precision, seed=args.seed,
        patch_size=args.patch_size, batch_size=args.batch_size, width=args.width, depth=args.depth,
        learning_rate=args.lr, lr_schedule=args.lr_schedule,
    )
    check_new_dir(args.out, args.overwrite)  # fail before training, not after it
    loaded = load_pairs(args.images, args.labels)
    budget = (f"{args.minutes:g} minutes" if args.minutes is not None
              else f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}")
    print(f"{len(loaded.names)} image/label pairs; methods {', '.join(methods)}; {budget} each", flush=True)
    dataset = build_dataset(loaded.images, loaded.labels, loaded.names, modes=args.mode)
    comparison = compare_methods(dataset, methods, config_kwargs, None if args.quiet else _print_epoch,
                                 params=params, threshold=args.threshold)
    document = write_comparison(args.out, loaded, dataset, comparison, overwrite=args.overwrite, mode=args.mode)
    print(_format_comparison(document))
    print(f"{document['n_proposals']} proposed regions of {document['reference']} (with their agreement) "
          f"in proposals.csv; wrote {args.out}" + (" (stopped early)" if comparison.stopped else ""))
    return 0


def cmd_predict(args) -> int:
    from .core import io
    from .folders import check_new_dir, ensure_new_dir, load_images
    from .pipeline import predict_images

    check_new_dir(args.out, args.overwrite)  # fail before predicting, not after it
    loaded = load_images(args.images)
    predictions = predict_images(args.model, loaded, device=args.device)
    out = ensure_new_dir(args.out, args.overwrite)
    for name, labels in zip(loaded.names, predictions):
        io.write_labels(out / f"{name}.tif", labels, overwrite=args.overwrite)
    print(f"{len(predictions)} label maps -> {args.out}")
    return 0


def _format_table(report: dict) -> str:
    seg = report["segmentation"]
    lines = [f"images: {report['n_images']}", "class   dice    iou     hd95"]
    for c, (d, i, h) in enumerate(zip(seg["dice_per_class"], seg["iou_per_class"], seg["hd95_per_class"])):
        fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"
        lines.append(f"{c:5d}  {fmt(d)}  {fmt(i)}  {fmt(h)}")
    lines.append(f"mean foreground Dice: {seg['mean_fg_dice']:.4f}" if seg.get("mean_fg_dice") is not None
                 else "mean foreground Dice: -")
    noise = report.get("noise_detection")
    if noise:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        lines.append(f"noise detection: AUROC {fmt(noise['auroc'])}  AP {fmt(noise['ap'])}  "
                     f"F1@{noise['threshold']} {fmt(noise['f1'])}  (noisy pixels {fmt(noise['prevalence'])})")
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .core import io
    from .evaluation import evaluate_folders

    if bool(args.noise) != bool(args.noise_truth):
        raise SystemExit("--noise and --noise-truth go together")
    report = evaluate_folders(args.pred, args.truth, args.noise, args.noise_truth)
    print(_format_table(report))
    if args.json:
        io.atomic_write_text(args.json, json.dumps(report, indent=2), overwrite=True)
    return 0


# ----------------------------------------------------------------------------- parser


def _add_training_options(p, seed_help=None) -> None:
    """Device, precision, seed, mode and network options shared by `train` and `compare`."""
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, mps or cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--mode", default="auto", choices=["auto", "2d", "stack", "volume"],
                   help="3D files: 'volume' (default for 3D, sliced along axis 0) or 'stack' (independent slices)")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=16, help="U-Net channels at the first level")
    p.add_argument("--depth", type=int, default=4, help="U-Net down-sampling steps")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="constant, or cosine decay to 0 over each training phase")


def build_parser() -> argparse.ArgumentParser:
    from .core.noise import describe_protocols

    parser = argparse.ArgumentParser(
        prog="noisyseg",
        description="Find and fix wrong segmentation annotations: simulate label noise, train a "
        "noisy-label method (or compare several), propose corrections, apply review decisions, predict, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"napari-noisyseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("methods", help="list the registered methods", description="List the registered methods.")
    p.set_defaults(func=cmd_methods)

    protocols = "\n".join(f"  {name:16s} {text}" for name, text in describe_protocols().items())
    p = sub.add_parser(
        "simulate", help="corrupt clean labels with a noise protocol",
        description="Corrupt clean labels. Writes OUT/labels/<stem>.<ext> (noisy labels, same format), "
        "OUT/noise_mask/<stem>.tif (1 where noisy != clean) and OUT/simulate.json (parameters, seed).",
        epilog="protocols (combine with '+', e.g. missing+spurious):\n" + protocols,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--labels", required=True, help="folder of clean label files")
    p.add_argument("--images", default=None,
                   help="folder of images paired with the labels by file stem; needed by model_noise "
                   "(a weak network trained on a few of them predicts the noisy labels), ignored otherwise")
    p.add_argument("--noise", required=True, help="protocol name, or several joined by '+'")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of files corrupted (default 1.0)")
    p.add_argument("--severity", type=float, default=1.0, help="strength within the protocol's usual range (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-slice", action="store_true", help="3D labels: corrupt every slice independently")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="protocol parameter, JSON value (e.g. radius=[2,5] or p=0.3); repeatable")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "train", help="train a method on images + (noisy) labels and propose corrections",
        description="Train a noisy-label method. Writes RUN/model.safetensors, RUN/history.json, "
        "RUN/noise/<stem>.tif (float32 noise likelihood in [0, 1]), RUN/corrected/<stem>.tif "
        "(proposed labels) and RUN/proposals.csv (one row per proposed region).",
    )
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--labels", required=True, help="folder of labels, paired with images by file stem")
    p.add_argument("--method", default="coseg", help="method name (see `noisyseg methods`; default coseg)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=30, help="epoch budget (default 30)")
    budget.add_argument("--minutes", type=float, default=None, help="wall-time budget instead of epochs")
    _add_training_options(p, seed_help=None)
    p.add_argument("--trust", default=None,
                   help="folder of trust masks paired with the labels by file stem (nonzero: the label is right "
                   "and the method never changes it), e.g. OUT/trust of `noisyseg apply`")
    p.add_argument("--from", dest="from_run", default=None, metavar="RUN",
                   help="an earlier run folder of the same method to start from, as the viewer's \"Retrain with "
                   "decisions\" does: coseg continues its networks; adele trains afresh on the decided labels and "
                   "corrects once at the end, for the classes RUN corrected; the others train afresh")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (JSON value); repeatable")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "apply", help="apply accept/reject decisions to a run's proposals; write cleaned labels and a log",
        description="Review without a viewer. Rebuilds the proposed regions of a `noisyseg train` run from RUN and "
        "the labels it trained on, applies a decision file (CSV or JSON with columns region and decision: accept, "
        "reject or undo; e.g. RUN/proposals.csv with a decision column added, or the curation log of an earlier apply) or accepts every "
        "region with mean likelihood >= --accept-above. Writes OUT/cleaned/<stem> (the labels with the accepted "
        "changes, same format), OUT/trust/<stem>.tif (1 on decided pixels), OUT/noise/<stem> (the run's noise map in "
        "the labels' format, TIFF for PNG) and OUT/curation_log.csv/.json. "
        "The given label files are only read.",
        epilog="then retrain with the decisions: noisyseg train --images IMAGES --labels OUT/cleaned "
        "--trust OUT/trust --from RUN --out RUN2",
    )
    p.add_argument("--run", required=True, help="run folder of `noisyseg train`")
    p.add_argument("--labels", required=True, help="folder of the labels the run trained on")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--decisions", help="decision file (.csv or .json)")
    how.add_argument("--accept-above", type=float, metavar="LIKELIHOOD",
                     help="accept every proposed region whose mean noise likelihood is >= this (0 accepts all)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser(
        "compare", help="train several methods with one budget and compare their noise maps",
        description="Train several methods one after the other on the same data, each with the same budget "
        "(--epochs or --minutes each), seed and network, and compare their noise maps. Writes "
        "OUT/<method>/noise/<stem>.tif, OUT/<method>/corrected/<stem>.tif, OUT/<method>/history.json, "
        "OUT/agreement/<stem>.tif (float32: per pixel the fraction of methods whose noise is >= --threshold), "
        "OUT/proposals.csv (the first method's proposed regions with columns agreement and flagged_by) and "
        "OUT/comparison.json (per method: wall seconds, mean noise, flagged fraction, proposals; pairwise "
        "Dice / IoU of the flagged pixels and Spearman correlation of the maps).",
        epilog="example: noisyseg compare --images IMAGES/ --labels SIM/labels --methods coseg,confident,cleansing "
        "--epochs 20 --out CMP/",
    )
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--labels", required=True, help="folder of labels, paired with images by file stem")
    p.add_argument("--methods", required=True,
                   help="comma-separated method names, at least two (see `noisyseg methods`); the first one's "
                   "proposals go to proposals.csv")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=30, help="epoch budget of each method (default 30)")
    budget.add_argument("--minutes", type=float, default=None, help="wall-time budget of each method instead of epochs")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="a method flags a pixel when its noise likelihood is >= this (default 0.5)")
    _add_training_options(p, seed_help="the same seed for every method")
    p.add_argument("--param", action="append", metavar="[METHOD.]KEY=VALUE",
                   help="method parameter (JSON value): METHOD.KEY for one method, KEY for every compared "
                   "method that has it; repeatable")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="segment images with a trained model",
                       description="Segment images with a model from `noisyseg train`. Writes OUT/<stem>.tif labels.")
    p.add_argument("--model", required=True, help="run folder (or its model.safetensors)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "evaluate", help="score predictions (and noise maps) against truth",
        description="Dice, IoU and HD95 per class of PRED against TRUTH (paired by stem); with --noise and "
        "--noise-truth also pixel AUROC / AP / F1 of noise maps against true noise masks.",
    )
    p.add_argument("--pred", required=True, help="folder of predicted (or corrected) labels")
    p.add_argument("--truth", required=True, help="folder of reference labels")
    p.add_argument("--noise", help="folder of noise-likelihood maps (e.g. RUN/noise)")
    p.add_argument("--noise-truth", help="folder of true noise masks (e.g. SIM/noise_mask)")
    p.add_argument("--json", help="also write the report to this JSON file")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv=None) -> int:
    # InputError and CheckpointError are ValueErrors; naming CheckpointError here would
    # import torch before parsing and make `noisyseg --help` take seconds.
    from .core.io import InputError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (InputError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"noisyseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
