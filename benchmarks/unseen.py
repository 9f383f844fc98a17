"""The methods through the command line, on volumes this repository has never named.

Usage (from the repository root)::

    python benchmarks/unseen.py --data ../shared/data --setting hippocampus/erode_dilate \
        --methods clcs,distill,cleansing,coseg,adele --n-train 4 --epochs 200 --lr-schedule cosine \
        [--seed 0] [--train-seed 0] [--retrain] [--name NAME]

Every other benchmark trains through the Python API on a split chosen by sorted stem, and
the earlier sessions chose budgets and settings while looking at those splits' numbers.
This one takes its images from the files *no tracked file of the repository names*
(neither a result file, nor sample_data/, nor a test; its own result files excepted, so
that its command reproduces its split) and drives the user's commands on them, exactly
as a user would:

1. ``noisyseg simulate`` corrupts the clean training labels (the quality.py setting's
   protocol and parameters, ``--seed``);
2. ``noisyseg train --method baseline`` on the clean labels (ceiling) and on the noisy
   ones (floor), then ``noisyseg train --method M`` for each method, all with the full
   profile's network and ``--train-seed``;
3. ``noisyseg predict`` on the held-out images and ``noisyseg evaluate`` against their
   clean labels (test Dice); ``noisyseg evaluate`` of the run's ``corrected/`` against
   the clean training labels beside the noisy labels' own Dice, and of its ``noise/``
   maps against the simulator's true noise mask (AUROC / AP); the boundary prior
   (``exp(-d/3)`` to the nearest noisy-label edge, no learning) is the AP to beat.

``--retrain`` adds, after the floor and after each method, ``noisyseg train --method baseline``
on that run's ``corrected/`` with the same budget and seed, predicted and scored like the
others: the user who accepts every proposed correction and trains again. The floor's
``corrected/`` is its argmax, so its retrain row is self-training, the reference for the rest.
``--retrain-with-decisions`` adds, after each method, the plugin's own second round instead:
``noisyseg apply --accept-above 0`` (every proposed region accepted) and ``noisyseg train
--method M --trust --from RUN`` on its cleaned labels and trust masks, the viewer's "Retrain
with decisions" (Co-Seg continues its networks; the other methods train afresh).

``--split benchmark`` runs the same commands on quality.py's full split instead, for a data
set with no unnamed images (every BBBC039 image is in that split); its tables say so.
``--summarise FILES`` writes one table over several runs' result files (no training).

Writes ``<out>/<name>.json`` (every command run, with its wall time, and every report)
and ``<out>/<name>.md`` (the table, also printed). ``--work DIR`` keeps the folders the
commands wrote (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402
from napari_noisyseg.core import io, metrics  # noqa: E402

SCRIPT = "benchmarks/unseen.py"
# Files this script writes name the stems it chose; scanning them would move its split.
OWN_RESULTS = re.compile(r"benchmarks/results/unseen[^/]*$")
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "dist"}
CEILING, FLOOR = "ceiling (clean)", "floor (noisy)"
RETRAIN = " → retrain"  # suffix of a row trained afresh on another row's corrected labels
# Suffix of a row that is the viewer's "Retrain with decisions" with every proposal accepted.
DECIDED = " → accept all → {method} (trust)"
AFRESH = " → accept all → {method} (trust, afresh)"  # the same labels, trained as a first run (no --from)


def tracked_files(root: Path) -> list:
    """The repository's tracked files (``git ls-files``), or every file outside the build and
    environment folders where git is not available."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    if listed:
        return [root / line for line in listed.splitlines() if (root / line).is_file()]
    return [p for p in root.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(root).parts)]


def named_stems(stems, root: Path = ROOT) -> set:
    """The ``stems`` that any tracked file of ``root`` names, in its path or its text (this
    script's own result files excepted)."""
    bounded = {stem: re.compile(rf"(?<![A-Za-z0-9_]){re.escape(stem)}(?![A-Za-z0-9])") for stem in stems}
    named = set()
    for path in tracked_files(root):
        relative = path.relative_to(root).as_posix()
        if OWN_RESULTS.search(relative):
            continue
        try:
            text = relative + "\n" + path.read_text(errors="ignore")
        except OSError:
            continue
        # A substring test first: the boundary regex runs only where the name occurs at all.
        named.update(stem for stem, pattern in bounded.items()
                     if stem not in named and stem in text and pattern.search(text))
    return named


def unseen_split(stems, n_train: int, n_test: int, root: Path = ROOT) -> dict:
    """Train and test stems drawn from the ``stems`` no tracked file names (:func:`named_stems`),
    by :func:`quality.split_stems`."""
    stems = sorted(stems)
    named = named_stems(stems, root)
    unseen = [s for s in stems if s not in named]
    train, test = quality.split_stems(unseen, n_train, n_test)
    return {"train": train, "test": test, "n_named": len(named), "n_unseen": len(unseen)}


def link_pairs(pairs: dict, stems: list, folder: Path) -> None:
    """``folder/images`` and ``folder/clean`` holding links to the ``stems``' files."""
    for sub in ("images", "clean"):
        (folder / sub).mkdir(parents=True)
    for stem in stems:
        image_path, label_path = pairs[stem]
        (folder / "images" / image_path.name).symlink_to(image_path.resolve())
        (folder / "clean" / label_path.name).symlink_to(label_path.resolve())


def noisyseg(args: list, log: list) -> float:
    """Run ``noisyseg ARGS`` (this environment's), record it in ``log``; its wall seconds.
    A failing command stops the benchmark with its output."""
    command = [sys.executable, "-m", "napari_noisyseg.cli", *map(str, args)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.append({"command": "noisyseg " + " ".join(map(str, args)), "wall_s": round(seconds, 1),
                "returncode": done.returncode})
    if done.returncode:
        raise RuntimeError(f"noisyseg {' '.join(map(str, args))} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds


def evaluate(pred: Path, truth: Path, log: list, noise: Path = None, noise_truth: Path = None) -> dict:
    """``noisyseg evaluate``'s JSON report."""
    out = pred.parent / f"evaluate_{pred.name}_{truth.parent.name}.json"
    extra = ["--noise", noise, "--noise-truth", noise_truth] if noise else []
    noisyseg(["evaluate", "--pred", pred, "--truth", truth, *extra, "--json", out], log)
    return json.loads(out.read_text())


def prior_detection(noisy_dir: Path, mask_dir: Path, per_slice: bool) -> dict:
    """AUROC / AP of the boundary prior of the noisy labels against the true noise mask (per
    slice along axis 0 when the noise was drawn per slice, as quality.py)."""
    priors, truth = [], []
    for _, label_path, mask_path in io.pair_files(noisy_dir, mask_dir):
        labels, _ = io.read_labels(label_path)
        mask, _ = io.read_array(mask_path)
        priors.append(np.stack([metrics.boundary_prior(s) for s in labels]) if per_slice and labels.ndim == 3
                      else metrics.boundary_prior(labels))
        truth.append(np.asarray(mask).ravel() > 0)
    found = quality.detection_scores(priors, np.concatenate(truth))  # pooled, as quality.py scores its prior row
    return {k: found[k] for k in ("auroc", "ap")}


def _segmentation(report: dict) -> dict:
    seg = report["segmentation"]
    return {"dice": seg["mean_fg_dice"], "dice_per_class": seg["dice_per_class"]}


def one_setting(name: str):
    """``(setting, spec, profile)`` of the quality.py setting ``name`` (full profile)."""
    settings = quality.select_settings([name])
    if len(settings) != 1:
        raise ValueError(f"--setting {name!r} names {len(settings)} settings; name one, e.g. hippocampus/erode_dilate")
    [setting] = settings
    return setting, quality.DATASETS[setting.dataset], quality.PROFILES["full"][setting.dataset]


def param_options(values: dict) -> list:
    """``--param KEY=VALUE`` options (VALUE as JSON) for every item of ``values``."""
    return [part for key, value in values.items() for part in ("--param", f"{key}={json.dumps(value)}")]


def simulate_args(setting) -> list:
    """``noisyseg simulate`` options for ``setting``'s protocol."""
    return (["--noise", setting.protocol, "--fraction", setting.fraction, "--severity", setting.severity,
             *param_options(setting.params)] + (["--per-slice"] if setting.per_slice else []))


def train_args(profile, epochs: int, lr_schedule: str, train_seed: int) -> list:
    """``noisyseg train`` options: the full profile's network and batches, this run's budget."""
    t = profile.train
    return ["--epochs", epochs, "--lr-schedule", lr_schedule, "--seed", train_seed, "--patch-size", t["patch_size"],
            "--batch-size", t["batch_size"], "--width", t["width"], "--depth", t["depth"], "--quiet"]


def param_args(params: dict, method: str) -> list:
    """``noisyseg train --param`` options for ``method`` from ``{method: {key: value}}`` (quality.py's --params)."""
    return param_options((params or {}).get(method, {}))


def run(data_dir, setting_name: str, methods: list, n_train: int, n_test: int, epochs: int, lr_schedule: str,
        seed: int, train_seed: int, work: Path, say=print, root: Path = ROOT, split: str = "unseen",
        params: dict | None = None, retrain: bool = False, decided: bool = False,
        decided_afresh: bool = False) -> dict:
    """Ceiling, floor and ``methods`` trained through the command line on unseen images (``split``
    "unseen") or on quality.py's full split ("benchmark").

    ``retrain``: after the floor and after each method, a fresh ``baseline`` trained with the same
    budget and seed on that run's ``corrected/`` labels (row ``"<row> → retrain"``): what a user
    gets who accepts every proposed correction and trains again (the floor's corrected labels
    are its argmax, so its retrain row is plain self-training, the reference for the others).
    ``decided``: after each method, ``noisyseg apply --accept-above 0`` on its run and the same
    method trained on the cleaned labels with the trust masks, ``--from`` its run (row ``"<method> → accept all →
    <method> (trust)"``, with ``"cleaned"``: Dice of the cleaned labels against the clean ones).
    ``decided_afresh``: the same accepted labels and trust masks, but the method trained without
    ``--from``, as a first run (row ``"<method> → accept all → <method> (trust, afresh)"``): what
    ADELE's Retrain did before ``adele.refit``.

    Returns ``{"split", "commands", "noisy", "prior", "rows"}``; a row holds the test Dice
    (mean over foreground classes, and per class) and, for every run on the noisy labels,
    Dice(corrected, clean), AUROC / AP of its noise maps and its training wall time.
    """
    setting, spec, profile = one_setting(setting_name)
    data_dir = quality.check_data(Path(data_dir), [spec])
    pairs = {stem: (image, label) for stem, image, label in
             io.pair_files(data_dir / spec.folder / spec.images, data_dir / spec.folder / spec.labels)}
    if split == "benchmark":  # quality.py's own split, for data sets with no unnamed images (BBBC039)
        train, test = quality.split_stems(list(pairs), n_train, n_test)
        chosen = {"kind": "benchmark", "train": train, "test": test}
        say(f"quality.py's split of {len(pairs)} {spec.name} images: {n_train} train, {n_test} test")
    else:
        chosen = {"kind": "unseen", **unseen_split(list(pairs), n_train, n_test, root)}
        say(f"{chosen['n_unseen']} of {len(pairs)} {spec.name} images are named nowhere in the repository; "
            f"train {chosen['train']}, {len(chosen['test'])} test")
    work = Path(work)
    link_pairs(pairs, chosen["train"], work / "train")
    link_pairs(pairs, chosen["test"], work / "test")
    log: list = []
    sim = work / "simulated"
    # --images: model_noise trains its weak network on them; every other protocol ignores it.
    noisyseg(["simulate", "--labels", work / "train" / "clean", "--images", work / "train" / "images",
              *simulate_args(setting), "--seed", seed, "--out", sim], log)
    noisy = _segmentation(evaluate(sim / "labels", work / "train" / "clean", log))
    prior = prior_detection(sim / "labels", sim / "noise_mask", setting.per_slice)
    # (row, method, labels, the row whose proposals it accepts first or None)
    plan = [(CEILING, "baseline", work / "train" / "clean", None)]
    for row, method in [(FLOOR, "baseline"), *[(m, m) for m in methods]]:
        plan.append((row, method, sim / "labels", None))
        if retrain:
            plan.append((row + RETRAIN, "baseline", _run_dir(work, row) / "corrected", None))
        if decided and row != FLOOR:
            plan.append((row + DECIDED.format(method=method), method, None, row))
        if decided_afresh and row != FLOOR:
            plan.append((row + AFRESH.format(method=method), method, None, row))
    rows = []
    for row, method, labels, accepted_from in plan:
        say(f"  {row} ...")
        out = _run_dir(work, row)
        cleaned, trust = {}, []
        if accepted_from is not None:
            # The user's review without a viewer: every proposed region of the first round accepted.
            applied = _applied_dir(work, accepted_from)
            if not applied.exists():  # both decided rows accept the same first round's proposals
                noisyseg(["apply", "--run", _run_dir(work, accepted_from), "--labels", sim / "labels",
                          "--accept-above", 0, "--out", applied], log)
            cleaned = {"cleaned": _segmentation(evaluate(applied / "cleaned", work / "train" / "clean", log))}
            labels, trust = applied / "cleaned", ["--trust", applied / "trust"]
            if not row.endswith(AFRESH.format(method=method)):
                trust += ["--from", _run_dir(work, accepted_from)]
        seconds = noisyseg(["train", "--images", work / "train" / "images", "--labels", labels, "--method", method,
                            *train_args(profile, epochs, lr_schedule, train_seed), *param_args(params, method),
                            *trust, "--out", out], log)
        noisyseg(["predict", "--model", out, "--images", work / "test" / "images", "--out", out / "test"], log)
        result = {"row": row, "method": method, "train_s": round(seconds, 1),
                  "test": _segmentation(evaluate(out / "test", work / "test" / "clean", log)), **cleaned}
        if row != CEILING:
            report = evaluate(out / "corrected", work / "train" / "clean", log, out / "noise", sim / "noise_mask")
            result["corrected"] = _segmentation(report)
            result["noise"] = {k: report["noise_detection"][k] for k in ("auroc", "ap")}
        rows.append(result)
        say(f"    test Dice {result['test']['dice']:.3f}"
            + (f", Dice(corrected, clean) {result['corrected']['dice']:.3f} (noisy {noisy['dice']:.3f}), "
               f"AP {result['noise']['ap']:.3f} (prior {prior['ap']:.3f})" if "corrected" in result else "")
            + f", {seconds:.0f} s")
    return {"split": chosen, "commands": log, "noisy": noisy, "prior": prior, "rows": rows}


def _slug(row: str) -> str:
    """``row`` as a folder name."""
    return re.sub(r"\W+", "_", row).strip("_")


def _run_dir(work: Path, row: str) -> Path:
    """The folder ``noisyseg train`` writes the run of ``row`` to."""
    return work / "runs" / _slug(row)


def _applied_dir(work: Path, row: str) -> Path:
    """The folder ``noisyseg apply`` writes the accepted proposals of the run of ``row`` to."""
    return work / "applied" / _slug(row)


def _run_row(report: dict, name: str = FLOOR, run: str = "?") -> dict:
    """The row ``name`` of the result ``report`` of the run called ``run`` (default its floor:
    the reference of a summary's paired columns)."""
    found = next((row for row in report["rows"] if row["row"] == name), None)
    if found is None:
        raise ValueError(f"run {run!r} has no row {name!r} "
                         f"(rows: {', '.join(row['row'] for row in report['rows'])})")
    return found


def _floor_dice(report: dict) -> float:
    """Test Dice of a run's floor row."""
    return _run_row(report)["test"]["dice"]


def _classes(values) -> str:
    return " / ".join(f"{v:.3f}" if v is not None else "–" for v in values)


def _title(report: dict) -> str:
    return "quality.py's split" if report["split"].get("kind") == "benchmark" else "Never-seen images"


def _split_text(split: dict) -> str:
    if split.get("kind") == "benchmark":
        return (f"quality.py's full-mode split (train {len(split['train'])} images, test {len(split['test'])}): "
                f"images earlier benchmarks used. ")
    return (f"{split['n_unseen']} images named by no tracked file; trained on {', '.join(split['train'])}; "
            f"tested on {len(split['test'])} others. ")


def markdown(report: dict) -> str:
    """The table of one run of this benchmark."""
    floor = _floor_dice(report)
    lines = [f"# {_title(report)} through the command line: {report['setting']}, seed {report['seed']}, "
             f"training seed {report['train_seed']}, {report['epochs']} epochs{quality.budget_title(report)}", "",
             f"`{report['command']}`", "",
             _split_text(report["split"]) +
             f"Dice(noisy, clean) on the training images {report['noisy']['dice']:.3f} "
             f"({_classes(report['noisy']['dice_per_class'][1:])}); boundary prior AUROC "
             f"{report['prior']['auroc']:.3f}, AP {report['prior']['ap']:.3f}.", "",
             "| row | test Dice | per class | Δ floor | Dice corrected | per class | AUROC | AP | AP > prior | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        test = r["test"]
        cells = [r["row"], f"{test['dice']:.3f}", _classes(test["dice_per_class"][1:]),
                 "" if r["row"] in (CEILING, FLOOR) else f"{test['dice'] - floor:+.3f}".replace("-", "−")]
        if "corrected" in r:
            cells += [f"{r['corrected']['dice']:.3f}", _classes(r["corrected"]["dice_per_class"][1:]),
                      f"{r['noise']['auroc']:.3f}", f"{r['noise']['ap']:.3f}",
                      "yes" if r["noise"]["ap"] > report["prior"]["ap"] else "no"]
        else:
            cells += ["", "", "", "", ""]
        lines.append("| " + " | ".join(cells + [f"{r['train_s']:.0f}"]) + " |")
    lines += ["", "Test Dice: `noisyseg predict` on the held-out images, `noisyseg evaluate` against their clean "
              "labels (mean over foreground classes; per class in label order). Dice corrected: `noisyseg evaluate` "
              "of the run's corrected/ against the clean training labels (Dice(noisy, clean) above; the floor's "
              "corrected/ is its argmax). AUROC / AP: its noise/ maps against the simulator's noise mask. Train s: "
              "`noisyseg train`'s wall time.", ""]
    accepted = [r for r in report["rows"] if "cleaned" in r]
    if accepted:
        lines += ["Rows `→ accept all → M (trust)`: `noisyseg apply --accept-above 0` on the first round's run "
                  "(every proposed region accepted), then `noisyseg train --method M --trust --from RUN` on its "
                  "cleaned labels: the viewer's \"Retrain with decisions\"; `(trust, afresh)`: the same labels and "
                  "trust masks without `--from`, trained as a first run. Dice(cleaned, clean) of the labels it trained on: "
                  + "; ".join(f"{first} {r['cleaned']['dice']:.3f} ({_classes(r['cleaned']['dice_per_class'][1:])})"
                              for first, r in {r['row'].split(' → ')[0]: r for r in accepted}.items()) + ".", ""]
    return "\n".join(lines)


def _per_run(values: list) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def paired_t(differences) -> dict | None:
    """Student's t of paired differences (one per run) against zero: ``{"t", "p"}`` with the
    two-sided p-value (n − 1 degrees of freedom), or None for fewer than two runs or no spread.

    The floor moves with each noise draw and training seed as much as any method's mean gain, so
    a method is compared with the floor of its own run (paired), not with the floor's mean."""
    differences = np.asarray(differences, dtype=np.float64)
    if differences.size < 2 or np.std(differences) == 0:
        return None
    result = stats.ttest_1samp(differences, 0.0)
    return {"t": float(result.statistic), "p": float(result.pvalue)}


def _paired_text(values: list, references: list) -> str:
    """``+0.012 ± 0.010 (2/3; t 2.08, p 0.173)``: quality.py's paired format (mean ± sample std of
    ``values − references``, paired by run, and runs above) with their paired t where there is one."""
    differences = [v - r for v, r in zip(values, references)]
    text = quality._fmt_paired(metrics.aggregate_scores(
        [{"dice_minus_floor": d, "above_floor": float(d > 0)} for d in differences]))
    test = paired_t(differences)
    if test:  # inside the parentheses that close quality.py's "(runs above)"
        text = f"{text[:-1]}; t {test['t']:.2f}, p {test['p']:.3f})"
    return text.replace("-", "−")


def summary_markdown(reports: list, names: list, rows: list | None = None, against: str = FLOOR) -> str:
    """One table over several runs of this benchmark (one setting): per row the mean ± sample std
    of test Dice (each run's value), its paired difference to the floor of the same run (runs
    above it, paired t), Dice(corrected, clean) per run and its paired difference to the floor's
    argmax on the training images, noise AUROC and AP per run. ``rows``: the method rows to keep
    (default all; the ceiling and floor are always kept). ``against``: the row every paired
    column compares with instead of the floor (e.g. ``"floor (noisy) → retrain"``; kept too)."""
    settings = {r["setting"] for r in reports}
    if len(settings) != 1:
        raise ValueError(f"the runs hold several settings {sorted(settings)}; summarise one at a time")
    references = [_run_row(r, against, n) for r, n in zip(reports, names)]
    floors = [row["test"]["dice"] for row in references]
    floor_argmax = [row["corrected"]["dice"] for row in references]
    # The default's wording is the committed summaries'; another reference is named in full.
    ref, ref_corrected = ("floor", "floor's argmax") if against == FLOOR else (f"`{against}`",) * 2
    seeds = ", ".join(f"{r['seed']}:{r['train_seed']}" for r in reports)
    lines = [f"# {_title(reports[0])} through the command line: {settings.pop()}, {len(reports)} runs "
             f"(noise seed:training seed {seeds})", "",
             "Runs: " + ", ".join(f"[{n}]({n}.md)" for n in names) + ".", "",
             f"Dice(noisy, clean) on the training images per run: {_per_run([r['noisy']['dice'] for r in reports])}; "
             f"boundary prior AP {_per_run([r['prior']['ap'] for r in reports])}.", "",
             f"| row | test Dice | per run | per class (mean) | Δ {ref} (runs above) | paired t (p) "
             f"| Dice corrected, per run | corrected Δ {ref_corrected} (runs above; paired t) | AUROC, per run | AP, per run "
             "| train s (mean) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = [row["row"] for row in reports[0]["rows"]
             if rows is None or row["row"] in (CEILING, FLOOR, against) or row["row"] in rows]
    for name in order:
        rows = [next((row for row in r["rows"] if row["row"] == name), None) for r in reports]
        if any(row is None for row in rows):
            continue
        dice = [row["test"]["dice"] for row in rows]
        paired = name not in (CEILING, against)
        # The statistics and formats of quality.py's tables (mean ± sample std; Δ floor with runs above).
        scores = metrics.aggregate_scores([
            {"dice": row["test"]["dice"], "dice_per_class": row["test"]["dice_per_class"], "train_s": row["train_s"],
             **({"dice_minus_floor": row["test"]["dice"] - floor, "above_floor": float(row["test"]["dice"] > floor)}
                if paired else {})}
            for row, floor in zip(rows, floors)])
        cells = [name, quality._fmt(scores["dice"]), _per_run(dice), quality._fmt_classes(scores["dice_per_class"]),
                 quality._fmt_paired(scores).replace("-", "−") if paired else ""]
        test = paired_t([d - f for d, f in zip(dice, floors)]) if paired else None
        cells.append(f"{test['t']:.2f} ({test['p']:.3f})".replace("-", "−") if test else "")
        if "corrected" in rows[0]:
            corrected = [row["corrected"]["dice"] for row in rows]
            cells += [_per_run(corrected), _paired_text(corrected, floor_argmax) if paired else "",
                      _per_run([row["noise"]["auroc"] for row in rows]), _per_run([row["noise"]["ap"] for row in rows])]
        else:
            cells += ["", "", "", ""]
        cells.append(f"{scores['train_s']['mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each run's table says what the columns hold; the floor's Dice corrected is its argmax on the training "
              "images, and corrected Δ floor's argmax compares a method's corrected labels with it, run by run. "
              "Δ floor: test Dice minus the floor's of the same run, mean ± sample std over runs; paired t: "
              "Student's t of those differences against zero, with its two-sided p (runs − 1 degrees of freedom).", ""]
    if against != FLOOR:
        lines += [f"Here every Δ column compares with the row `{against}` of the same run instead of the floor "
                  "(its test Dice, and its Dice corrected in place of the floor's argmax).", ""]
    return "\n".join(lines)


def summarise(paths: list, out, name: str, rows: list | None = None, against: str = FLOOR) -> int:
    """Write ``<out>/<name>.md`` summarising the unseen.py result files ``paths`` (no training)."""
    try:
        reports = [json.loads(Path(p).read_text()) for p in paths]
        table = summary_markdown(reports, [Path(p).stem for p in paths], rows, against)
    except (OSError, ValueError, KeyError, StopIteration) as error:
        print(f"error: cannot summarise {paths}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    target = Path(out) / f"{name}.md"
    io.atomic_write_text(target, table, overwrite=True)
    print(table)
    print(f"wrote {target}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = quality.one_setting_parser(__doc__.split("\n\n")[0], "hippocampus/erode_dilate", "unseen",
                                        training_budget=True)
    parser.add_argument("--methods", default="clcs,distill,cleansing,coseg,adele",
                        help="comma-separated methods besides the ceiling and floor")
    parser.add_argument("--n-test", type=int, default=None,
                        help="held-out images (default: the full profile's, 20 hippocampus volumes)")
    parser.add_argument("--split", default="unseen", choices=["unseen", "benchmark"],
                        help="unseen: images no tracked file names (default); benchmark: quality.py's full split, "
                             "for data sets that have no unnamed images (BBBC039)")
    parser.add_argument("--seed", type=int, default=0, help="noise draw")
    parser.add_argument("--train-seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--work", default=None, help="keep the commands' folders here (a new folder)")
    parser.add_argument("--summarise", nargs="+", metavar="JSON", default=None,
                        help="no training: one table over these result files of this script, as --out/--name .md")
    parser.add_argument("--params", action="append", default=[],
                        help="METHOD.NAME=VALUE (repeatable): a method parameter for its noisyseg train")
    parser.add_argument("--retrain", action="store_true",
                        help="after the floor and each method, train a fresh baseline on its corrected labels "
                             "(every proposal accepted) with the same budget: rows '<row> → retrain'")
    parser.add_argument("--retrain-with-decisions", action="store_true",
                        help="after each method, the viewer's 'Retrain with decisions' with every proposal "
                             "accepted: noisyseg apply --accept-above 0, then the same method on the cleaned "
                             "labels with --trust and --from its run: "
                             "rows '<method> → accept all → <method> (trust)'")
    parser.add_argument("--retrain-with-decisions-afresh", action="store_true",
                        help="as --retrain-with-decisions, but the method trains on the cleaned labels as a first "
                             "run (no --from): what ADELE's Retrain did before adele.refit; "
                             "rows '<method> → accept all → <method> (trust, afresh)'")
    parser.add_argument("--against", default=FLOOR,
                        help=f"with --summarise: the row the paired columns compare with (default {FLOOR!r}; "
                             f"e.g. {FLOOR + RETRAIN!r})")
    parser.add_argument("--rows", default=None,
                        help="with --summarise: comma-separated method rows to keep (the ceiling and floor always)")
    args = parser.parse_args(argv)
    if args.summarise:
        rows = quality.comma_list(args.rows) or None
        return summarise(args.summarise, args.out, args.name, rows, args.against)
    methods = quality.comma_list(args.methods)
    unknown = [m for m in methods if m not in quality.REGISTRY]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; registered: {sorted(quality.REGISTRY)}")
    try:
        params = quality.parse_params(args.params)
    except ValueError as error:
        parser.error(str(error))
    try:
        setting, _, profile = one_setting(args.setting)
    except ValueError as error:
        parser.error(str(error))
    if args.n_train is not None:
        profile = quality.with_n_train(profile, args.n_train)
    args.epochs = args.epochs or profile.train["epochs"]
    report = {**quality.budget_report(argv, SCRIPT, "unseen", setting, profile, args),
              "seed": args.seed, "train_seed": args.train_seed}
    del report["runs"]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="noisyseg_unseen_"))
    if args.work and work.exists() and any(work.iterdir()):
        parser.error(f"--work {work} is not empty")
    try:
        report.update(run(args.data, args.setting, methods, profile.n_train, args.n_test or profile.n_test,
                          args.epochs, args.lr_schedule, args.seed, args.train_seed, work, split=args.split,
                          params=params, retrain=args.retrain, decided=args.retrain_with_decisions,
                          decided_afresh=args.retrain_with_decisions_afresh))
    except (quality.DataError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    quality.save_and_print(report, args.out, args.name, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
