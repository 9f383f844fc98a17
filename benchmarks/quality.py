"""Quality benchmark: does each method see through simulated annotation noise?

Usage (from the repository root)::

    python benchmarks/quality.py [--data ../shared/data] [--quick] [--methods baseline,confident]
        [--settings bbbc039/erode_dilate,hippocampus] [--seeds 0,1] [--train-seeds 0,1,2]
        [--minutes M | --epochs E] [--n-train N]
        [--params confident.folds=2 ...] [--out benchmarks/results] [--list]
    python benchmarks/quality.py --render benchmarks/results/NAME.json   # rewrite NAME.md only

For every dataset × noise setting × method × seed:

1. the dataset's images are split into train and test by sorted file stem (fixed);
2. noise is simulated on the TRAIN labels only (``simulate_noise``, seed = the run's
   seed), the method trains on the train images with the noisy labels (same seed, or
   each of ``--train-seeds`` in turn: the same noise draw trained several times);
3. scores: test Dice (mean foreground and per class) and HD95 of the method's final
   model against the CLEAN test labels; gap recovered between the floor (``baseline``
   on noisy labels) and the ceiling (``baseline`` on clean labels, trained once per
   dataset × training seed); noise detection (pixel AUROC, AP, F1 at 0.5) of ``result.noise``
   against the true noise mask of the train split; Dice(corrected, clean) against
   Dice(noisy, clean) on the train split; wall time. Gap recovered is not reported
   when the ceiling beats the floor by less than ``MIN_GAP`` (0.01) Dice. Each method
   is also paired with the floor of its own run (same noise and training seed): the
   tables give the mean ± std of that difference and in how many runs it is positive.

Reference rows: ``boundary prior`` (``exp(-d/3)`` to the nearest noisy-label edge, no
learning: a noise map only counts where its AP beats this one, column ``AP>prior``) and
``cleanlab`` (``cleanlab.segmentation.filter.find_label_issues`` on the ``confident``
method's out-of-fold probabilities), when ``confident`` runs.

Writes ``<out>/quality.json`` (every number, the command line, git commit, machine,
per-method config) and ``<out>/quality.md`` (tables, mean ± sample std over seeds,
also printed); ``--quick`` writes ``quality_quick.*`` so it never overwrites the full
results. Settings, datasets and profiles are data (``SETTINGS``, ``DATASETS``,
``PROFILES``): add a row to extend the benchmark.

Choices (ours)
--------------
- Test Dice is the mean over test images (volumes, for hippocampus) of each image's
  Dice; images where a class is absent from both maps do not count for that class.
  Noise-detection and correction scores pool every train pixel (micro average): noise
  is rare and per-image APs of near-empty images would be meaningless.
- Hippocampus volumes are trained slice-wise (mode ``volume``), noise is per slice
  (``per_slice=True``), the boundary prior is computed per slice (what the noise
  simulator and the 2D methods see); test Dice is computed on whole volumes.
- ``--quick`` trains BBBC039 on centre crops (256 × 256) of a few images and tests on
  whole images; methods get an epoch budget (deterministic, unlike a time budget on a
  shared machine). ``--minutes`` switches every run to a time budget instead.
- A method that raises is recorded with its error and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from napari_noisyseg import __version__  # noqa: E402
from napari_noisyseg.core import io, metrics  # noqa: E402
from napari_noisyseg.core.dataset import build_dataset  # noqa: E402
from napari_noisyseg.core.model_noise import simulate_model_noise  # noqa: E402
from napari_noisyseg.core.noise import simulate_noise  # noqa: E402
from napari_noisyseg.engine.device import numeric_path, resolve_device  # noqa: E402
from napari_noisyseg.engine.infer import predict_many  # noqa: E402
from napari_noisyseg.engine.train import LR_SCHEDULES  # noqa: E402
from napari_noisyseg.methods import REGISTRY, TrainConfig, get_method  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_OUT = ROOT / "benchmarks" / "results"
PRIOR_ROW = "boundary prior"
PEER_ROW = "cleanlab"
CEILING_ROW = "ceiling (clean)"
FLOOR_METHOD = "baseline"
# Gap recovered is left out (None) when the ceiling beats the floor by less than this Dice:
# dividing by a gap of noise-level size gives meaningless ratios (±100).
MIN_GAP = 0.01
PEER_SOURCE = "confident"


# ----------------------------------------------------------------------------- the benchmark as data


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset lives under ``--data`` and how its pairs become samples."""

    name: str
    folder: str
    images: str
    labels: str
    mode: str  # build_dataset mode: "2d" or "volume" (trained slice-wise)
    note: str = ""


@dataclass(frozen=True)
class DatasetProfile:
    """How much of a dataset a profile uses and how it trains on it.

    ``train`` holds :class:`TrainConfig` fields (epochs, patch_size, batch_size, width, depth...).
    ``train_crop`` (H, W) centre-crops the train images (None = whole images).
    """

    n_train: int
    n_test: int
    train: dict
    train_crop: tuple | None = None


@dataclass(frozen=True)
class Setting:
    """One noise setting: a protocol of :func:`simulate_noise` applied to a dataset's train labels."""

    name: str
    dataset: str
    protocol: str
    fraction: float = 1.0
    severity: float = 1.0
    params: dict = field(default_factory=dict)
    per_slice: bool = False
    note: str = ""
    quick: bool = True  # part of ``--quick`` when no --settings are named


DATASETS = {
    "bbbc039": DatasetSpec("bbbc039", "bbbc039", "images", "labels", "2d",
                           "BBBC039 nuclei, 520 × 696, binary"),
    "hippocampus": DatasetSpec("hippocampus", "hippocampus", "images", "masks", "volume",
                               "MSD hippocampus MRI, 2 classes, trained slice-wise"),
}

PROFILES = {
    # 2 CPU cores, all default methods, < 15 min: tiny subsets, small patches, narrow U-Net.
    "quick": {
        "bbbc039": DatasetProfile(n_train=8, n_test=3, train_crop=(256, 256),
                                  train=dict(epochs=16, patch_size=128, batch_size=8, width=8, depth=3)),
        # 12 epochs (≈ 170 steps) left the network at train Dice 0.26 even on clean labels;
        # 40 epochs on 6 volumes reached 0.80 train / 0.61 test. 30 epochs on 4 keeps the time.
        "hippocampus": DatasetProfile(n_train=4, n_test=4,
                                      train=dict(epochs=30, patch_size=64, batch_size=16, width=8, depth=3)),
    },
    # The README table. Estimated from the quick run's per-method costs (every method
    # together ≈ 16 baseline runs per setting) and ~0.6 s per 8 × 256² step at width 16:
    # ≈ 2 h for one seed of every setting and method on 2 idle CPU cores.
    "full": {
        "bbbc039": DatasetProfile(n_train=40, n_test=10,
                                  train=dict(epochs=6, patch_size=256, batch_size=8, width=16, depth=4)),
        "hippocampus": DatasetProfile(n_train=40, n_test=20,
                                      train=dict(epochs=8, patch_size=64, batch_size=16, width=16, depth=4)),
    },
}

SETTINGS = [
    Setting("bbbc039/erode_dilate", "bbbc039", "erode_dilate", 1.0, 1.0, {"radius": (2, 5)},
            note="every image, each nucleus eroded or dilated by r ~ U{2..5} px"),
    # Co-Seg's own regime (sample-level noise): image sifting needs clean images to find.
    Setting("bbbc039/erode_dilate_half", "bbbc039", "erode_dilate", 0.5, 1.0, {"radius": (2, 5)},
            note="half the images (alpha = 0.5), each nucleus eroded or dilated by r ~ U{2..5} px; "
                 "the others clean", quick=False),
    # One annotator who draws every nucleus too large, the other exact: noise the floor learns as a
    # bias (every dilated boundary pulls its boundary outwards) and image sifting is meant to drop.
    Setting("bbbc039/dilate_half", "bbbc039", "erode_dilate", 0.5, 1.0, {"mode": "dilate", "radius": (2, 5)},
            note="half the images (alpha = 0.5), each nucleus dilated by r ~ U{2..5} px; the others clean",
            quick=False),
    # The mirror image: one annotator draws every nucleus too small. Measured on dilate_half, the
    # CE + Dice networks fit the dilated annotator (see README); here that bias favours the exact one.
    Setting("bbbc039/erode_half", "bbbc039", "erode_dilate", 0.5, 1.0, {"mode": "erode", "radius": (2, 5)},
            note="half the images (alpha = 0.5), each nucleus eroded by r ~ U{2..5} px (capped at half its "
                 "inscribed radius); the others clean", quick=False),
    Setting("bbbc039/missing+spurious", "bbbc039", "missing+spurious", 1.0, 1.0, {"p": 0.3},
            note="30% of nuclei dropped, then false blobs added (p = 0.3)"),
    Setting("bbbc039/markov_boundary", "bbbc039", "markov_boundary", 1.0, 1.0, {"steps": 70},
            note="T = 70 steps (≈ ±3.5 px boundary drift; the default T = 200 moves ≈ ±10 px and "
                 "erases most nuclei), theta3 = 0.2 boundary flips"),
    Setting("hippocampus/erode_dilate", "hippocampus", "erode_dilate", 1.0, 1.0, {"radius": (2, 5)},
            per_slice=True,
            note="every slice, each structure eroded or dilated by r ~ U{2..5} px (capped at half "
                 "its inscribed radius), both classes"),
    # Noise that makes the minority class suffer (issue 5).
    Setting("hippocampus/minority_erode", "hippocampus", "minority_erode", 1.0, 1.0,
            {"mode": "erode", "radius": (2, 5)}, per_slice=True,
            # On hippocampus slices the radius is always cut to half the structure's inscribed radius,
            # so every seed draws the same labels here (checked on the 40 training volumes).
            note="every slice, only the smaller class (by area) eroded by r ~ U{2..5} px", quick=False),
    # Co-Seg's own regime on volumes: two annotators, one of whom draws both structures too small
    # on every slice of the volumes they annotated (half of them); sample sifting has clean slices to find.
    Setting("hippocampus/erode_half", "hippocampus", "erode_dilate", 0.5, 1.0, {"mode": "erode", "radius": (2, 5)},
            per_slice=True,
            note="half the volumes (alpha = 0.5), every slice's structures eroded by r ~ U{2..5} px (capped at "
                 "half the inscribed radius), both classes; the other volumes clean", quick=False),
    Setting("hippocampus/class_flip", "hippocampus", "class_flip", 1.0, 1.0, {"p": 0.3}, per_slice=True,
            note="every slice, each structure relabelled to the other class with p = 0.3", quick=False),
    # The protocol's default (20 steps, 128-px patches) gave Dice(noisy, clean) 0.002 here: the weak
    # network had not found the hippocampus yet. 400 steps on 64-px patches: 0.64-0.83 per volume.
    Setting("hippocampus/model_noise", "hippocampus", "model_noise", 1.0, 1.0,
            {"steps": 400, "patch_size": 64, "batch_size": 16},
            note="labels replaced by a weak U-Net's predictions (METHODS.md §8): trained 400 steps on "
                 "2 training volumes, every volume's labels are its slice-wise predictions", quick=False),
]


# ----------------------------------------------------------------------------- data


class DataError(RuntimeError):
    """The data folder or a dataset in it is missing or unreadable."""


def comma_list(text: str | None, convert=str) -> list:
    """``"a, b,,c"`` → ``["a", "b", "c"]`` (each through ``convert``); None or "" → []."""
    return [convert(part.strip()) for part in (text or "").split(",") if part.strip()]


def with_n_train(profile: DatasetProfile, n_train: int) -> DatasetProfile:
    """``profile`` training on ``n_train`` images (volumes), everything else unchanged.

    The test split does not depend on ``n_train`` (:func:`split_stems`), so runs with
    fewer training images are scored on the same held-out images. Fewer images for more
    epochs is where a network has the steps to memorise its labels' noise.
    """
    if int(n_train) < 1:
        raise ValueError(f"n_train must be at least 1, not {n_train}")
    return replace(profile, n_train=int(n_train))


def split_stems(stems: list, n_train: int, n_test: int) -> tuple[list, list]:
    """Fixed split by sorted stem.

    Test = ``n_test`` stems evenly spread over the sorted list; train = ``n_train``
    stems evenly spread over the rest.
    """
    stems = sorted(stems)
    if n_train < 1 or n_test < 1 or n_train + n_test > len(stems):
        raise DataError(f"cannot split {len(stems)} images into {n_train} train + {n_test} test")
    test_index = sorted({int(round(x)) for x in np.linspace(0, len(stems) - 1, n_test)})
    rest = [s for i, s in enumerate(stems) if i not in set(test_index)]
    train_index = sorted({int(round(x)) for x in np.linspace(0, len(rest) - 1, n_train)})
    return [rest[i] for i in train_index], [stems[i] for i in test_index]


def centre_crop(array: np.ndarray, size) -> np.ndarray:
    """Centre crop of the last two axes to ``size`` (H, W) (no-op on smaller axes)."""
    if size is None:
        return array
    height, width = array.shape[-2:]
    top, left = max(0, (height - size[0]) // 2), max(0, (width - size[1]) // 2)
    return np.ascontiguousarray(array[..., top : top + size[0], left : left + size[1]])


def check_data(data_dir, datasets: list) -> Path:
    """The data folder, resolved; raises :class:`DataError` naming what is missing."""
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise DataError(
            f"data folder {data_dir} not found: pass --data DIR, the folder holding "
            f"{', '.join(d.folder + '/' for d in datasets)} (see /work/shared/data/README.md)"
        )
    for spec in datasets:
        for sub in (spec.images, spec.labels):
            if not (data_dir / spec.folder / sub).is_dir():
                raise DataError(f"{data_dir / spec.folder / sub} not found: the {spec.name} data set is "
                                f"expected as {spec.folder}/{spec.images}/ and {spec.folder}/{spec.labels}/")
    return data_dir


def load_split(data_dir: Path, spec: DatasetSpec, profile: DatasetProfile) -> dict:
    """Read the train and test pairs of one dataset (train images cropped per the profile)."""
    pairs = io.pair_files(data_dir / spec.folder / spec.images, data_dir / spec.folder / spec.labels)
    by_stem = {stem: (image_path, label_path) for stem, image_path, label_path in pairs}
    train, test = split_stems(list(by_stem), profile.n_train, profile.n_test)
    out = {"train": train, "test": test}
    for part, stems in (("train", train), ("test", test)):
        images, labels = [], []
        for stem in stems:
            image_path, label_path = by_stem[stem]
            image, _ = io.read_image(image_path)
            label, _ = io.read_labels(label_path)
            image, label = io.validate_pair(image, label, str(image_path), str(label_path))
            if part == "train":
                image, label = centre_crop(image, profile.train_crop), centre_crop(label, profile.train_crop)
            images.append(image)
            labels.append(np.asarray(label, np.int64))
        out[f"{part}_images"], out[f"{part}_labels"] = images, labels
    out["n_classes"] = int(max(int(lab.max(initial=0)) for lab in out["train_labels"] + out["test_labels"]) + 1)
    out["n_classes"] = max(2, out["n_classes"])
    return out


# ----------------------------------------------------------------------------- scoring


def final_predictions(result, dataset) -> list:
    """Argmax labels of ``result``'s final model on every source of ``dataset`` (reassembled)."""
    device, _ = resolve_device(result.config.device)
    model = result.models[result.final_model].to(device)
    return model_predictions(model, dataset, numeric_path(device, result.config.precision),
                             result.history.get("patch_size", result.config.patch_size))


def model_predictions(model, dataset, path, patch_size: int) -> list:
    """Argmax labels (int64) of ``model`` on every source of ``dataset``, reassembled.

    ``path`` is the numeric path (precision) to predict with and ``patch_size`` the
    patch size the model trained on (the smallest input it is given).
    """
    probabilities = predict_many(model, [s.image for s in dataset.samples], path,
                                 tile=max(512, patch_size), multiple=2 ** model.depth, min_size=patch_size)
    return dataset.reassemble([p.argmax(0).astype(np.int64) for p in probabilities])


def test_scores(result, test_dataset, test_labels: list, n_classes: int) -> dict:
    """Dice/IoU/HD95 of the final model on the clean test labels."""
    return prediction_scores(final_predictions(result, test_dataset), test_labels, n_classes)


def prediction_scores(predictions: list, test_labels: list, n_classes: int) -> dict:
    """Dice/IoU/HD95 of label maps (:func:`final_predictions`) against the clean test labels."""
    report = metrics.evaluate_segmentation(predictions, test_labels, n_classes)
    return {
        "dice": report["mean_fg_dice"],
        "dice_per_class": report["dice_per_class"],
        "iou": report["mean_fg_iou"],
        "hd95": report["mean_fg_hd95"],
        "hd95_inf": report["hd95_inf_per_class"],
    }


def _pooled(arrays: list) -> np.ndarray:
    return np.concatenate([np.asarray(a).ravel() for a in arrays])


def detection_scores(noise_maps: list, truth_flat: np.ndarray) -> dict:
    """AUROC/AP/F1 (at 0.5) of per-source noise maps against the pooled true noise mask."""
    scores = metrics.noise_detection_scores(_pooled(noise_maps).astype(np.float32), truth_flat)
    return {k: scores[k] for k in ("auroc", "ap", "f1", "precision", "recall")}


def correction_scores(corrected: list, noisy: list, clean: list, n_classes: int) -> dict:
    """Pooled Dice(corrected, clean) and Dice(noisy, clean) over the train split."""
    flat = lambda arrays: _pooled(arrays).reshape(1, -1)  # noqa: E731
    return metrics.correction_dice(flat(corrected), flat(noisy), flat(clean), n_classes=n_classes)


def history_digest(history: dict) -> dict:
    """The history's run-level entries (not the per-epoch curves), for the JSON."""
    n_epochs = len(history.get("epoch", []))
    return {k: v for k, v in history.items()
            if not (isinstance(v, list) and len(v) == n_epochs and n_epochs > 0)}


# ----------------------------------------------------------------------------- running


def make_config(method: str, seed: int, profile: DatasetProfile, params: dict, minutes=None, epochs=None,
                device="auto", lr_schedule=None) -> TrainConfig:
    train = dict(profile.train)
    if epochs is not None:
        train["epochs"] = int(epochs)
    if lr_schedule is not None:
        train["lr_schedule"] = lr_schedule
    config = TrainConfig(method=method, seed=seed, device=device, params=dict(params), **train)
    if minutes:
        config.minutes = float(minutes)
    return config


def fit_method(method: str, dataset, config, log):
    """(result, wall seconds, error text or None)."""
    start = time.perf_counter()
    try:
        result = get_method(method).fit(dataset, config)
    except Exception:  # a method under development must not stop the benchmark
        error = traceback.format_exc()
        log(f"    {method} FAILED:\n{error}")
        return None, time.perf_counter() - start, error.strip().splitlines()[-1]
    return result, time.perf_counter() - start, None


def simulate_setting(setting: Setting, data: dict, seed: int):
    """``setting``'s noise on the train labels of ``data`` (:func:`load_split`), drawn with ``seed``."""
    if setting.protocol == "model_noise":  # needs the images: a weak network predicts the labels
        return simulate_model_noise(data["train_images"], data["train_labels"], fraction=setting.fraction,
                                    severity=setting.severity, seed=seed, names=data["train"], **setting.params)
    return simulate_noise(data["train_labels"], setting.protocol, fraction=setting.fraction,
                          severity=setting.severity, seed=seed, per_slice=setting.per_slice, **setting.params)


class Benchmark:
    """Runs settings × seeds × methods and collects rows (see :func:`run_benchmark`)."""

    def __init__(self, data_dir, settings, methods, seeds, profile, datasets, method_params, minutes, epochs,
                 device, log, lr_schedule=None):
        self.data_dir = data_dir
        self.settings = settings
        self.methods = methods
        self.seeds = seeds
        self.profile = profile
        self.datasets = datasets
        self.method_params = method_params
        self.minutes = minutes
        self.epochs = epochs
        self.lr_schedule = lr_schedule
        self.device = device
        self.log = log
        self.rows: list = []
        self.noise_stats: list = []
        self.splits: dict = {}
        self.configs: dict = {}
        self.devices: set = set()
        self._data: dict = {}
        self._ceilings: dict = {}

    def data(self, name: str) -> dict:
        if name not in self._data:
            spec = self.datasets[name]
            self.log(f"loading {name} ...")
            self._data[name] = load_split(self.data_dir, spec, self.profile[name])
            self.splits[name] = {"train": self._data[name]["train"], "test": self._data[name]["test"]}
        return self._data[name]

    def config(self, method, seed, dataset_name):
        config = make_config(method, seed, self.profile[dataset_name], self.method_params.get(method, {}),
                             self.minutes, self.epochs, self.device, self.lr_schedule)
        module = get_method(method)
        self.configs.setdefault(dataset_name, {})[method] = {
            **config.to_dict(), "params": {**getattr(module, "DEFAULTS", {}), **config.params},
        }
        return config

    def ceiling(self, dataset_name: str, seed: int, test_dataset) -> dict:
        """Baseline on the clean train labels, once per dataset × training seed."""
        key = (dataset_name, seed)
        if key not in self._ceilings:
            data = self.data(dataset_name)
            spec = self.datasets[dataset_name]
            clean = build_dataset(data["train_images"], data["train_labels"], data["train"], modes=spec.mode,
                                  n_classes=data["n_classes"])
            self.log(f"  [{dataset_name} seed {seed}] ceiling: baseline on clean labels")
            config = self.config(FLOOR_METHOD, seed, dataset_name)
            result, wall, error = fit_method(FLOOR_METHOD, clean, config, self.log)
            row = {"row": CEILING_ROW, "kind": "ceiling", "method": FLOOR_METHOD, "wall_s": wall, "error": error}
            if result is not None:
                row["test"] = test_scores(result, test_dataset, data["test_labels"], data["n_classes"])
                row["device"] = result.history.get("device")
                self.devices.add(row["device"])
            self._ceilings[key] = row
            del result
            gc.collect()
        return dict(self._ceilings[key])

    def run_setting(self, setting: Setting, seed: int, train_seeds=None, after_run=None) -> None:
        """Simulate ``setting``'s noise with ``seed``, then train every method once per
        training seed (default: ``seed`` itself) on those labels; ``after_run(train_seed)``
        after each."""
        data = self.data(setting.dataset)
        spec = self.datasets[setting.dataset]
        n_classes = data["n_classes"]
        simulated = simulate_setting(setting, data, seed)
        noisy, clean = simulated.noisy, data["train_labels"]
        truth_flat = _pooled(simulated.noise_masks).astype(bool)
        given = correction_scores(noisy, noisy, clean, n_classes)["dice_given"]
        self.noise_stats.append({"setting": setting.name, "seed": seed, "noise_fraction": float(truth_flat.mean()),
                                 "dice_noisy_vs_clean": given, "simulation": simulated.params})
        self.log(f"  [{setting.name} seed {seed}] noise: {100 * truth_flat.mean():.1f}% of train pixels, "
                 f"Dice(noisy, clean) {given:.3f}")
        train = build_dataset(data["train_images"], noisy, data["train"], modes=spec.mode, n_classes=n_classes)
        test = build_dataset(data["test_images"], data["test_labels"], data["test"], modes=spec.mode,
                             n_classes=n_classes)
        prior = train.reassemble([metrics.boundary_prior(s.labels) for s in train.samples])
        prior_row = {"row": PRIOR_ROW, "kind": "prior", "noise": detection_scores(prior, truth_flat)}
        for index, train_seed in enumerate([seed] if train_seeds is None else train_seeds):
            # The prior needs no training: one row per noise draw, not per training seed.
            rows = [self.ceiling(setting.dataset, train_seed, test)] + ([prior_row] if index == 0 else [])
            self.train_methods(rows, setting, seed, train_seed, train, test, truth_flat, noisy, clean)
            self.finish_rows(rows, setting, seed, train_seed, prior_row["noise"]["ap"])
            if after_run is not None:
                after_run(train_seed)

    def train_methods(self, rows, setting, seed, train_seed, train, test, truth_flat, noisy, clean) -> None:
        """The floor, then every method, trained with ``train_seed``; one row each into ``rows``."""
        data = self.data(setting.dataset)
        n_classes = data["n_classes"]
        tag = f"[{setting.name} seed {seed}" + ("" if train_seed == seed else f", training seed {train_seed}") + "]"
        methods = [FLOOR_METHOD] + [m for m in self.methods if m != FLOOR_METHOD]
        for method in methods:
            self.log(f"  {tag} {method} ...")
            config = self.config(method, train_seed, setting.dataset)
            result, wall, error = fit_method(method, train, config, self.log)
            row = {"row": method, "kind": "floor" if method == FLOOR_METHOD else "method", "method": method,
                   "wall_s": wall, "error": error, "in_methods": method in self.methods}
            if result is not None:
                eval_start = time.perf_counter()
                row["test"] = test_scores(result, test, data["test_labels"], n_classes)
                row["noise"] = detection_scores(train.reassemble(result.noise), truth_flat)
                row["correction"] = correction_scores(train.reassemble(result.corrected), noisy, clean, n_classes)
                row["stopped"] = bool(result.stopped)
                row["final_model"] = result.final_model
                row["history"] = history_digest(result.history)
                row["eval_s"] = time.perf_counter() - eval_start
                self.devices.add(result.history.get("device"))
                self.log(f"    {method}: test Dice {row['test']['dice']:.3f}, noise AP {row['noise']['ap']:.3f}, "
                         f"{wall:.0f} s")
                if method == PEER_SOURCE:
                    rows.append(self.peer_row(result, train, truth_flat, noisy, clean, n_classes))
            rows.append(row)
            del result
            gc.collect()

    def peer_row(self, result, train, truth_flat, noisy, clean, n_classes) -> dict:
        """cleanlab's find_label_issues on the confident method's out-of-fold probabilities."""
        start = time.perf_counter()
        try:
            from benchmarks.cleanlab_peer import cleanlab_issues, cleanlab_noise_map

            labels = [s.labels for s in train.samples]
            exclude = [s.ignore for s in train.samples]
            issues, quality = cleanlab_issues(result.probabilities, labels, exclude)
            noise = cleanlab_noise_map(issues, quality)
            corrected = [np.where(i, p.argmax(0), y) for i, p, y in zip(issues, result.probabilities, labels)]
            row = {"row": PEER_ROW, "kind": "peer", "source": f"{PEER_SOURCE} out-of-fold probabilities",
                   "noise": detection_scores(train.reassemble(noise), truth_flat),
                   "correction": correction_scores(train.reassemble(corrected), noisy, clean, n_classes),
                   "flagged_fraction": float(_pooled(issues).mean()), "error": None}
        except Exception:
            error = traceback.format_exc()
            self.log(f"    cleanlab FAILED:\n{error}")
            row = {"row": PEER_ROW, "kind": "peer", "error": error.strip().splitlines()[-1]}
        row["wall_s"] = time.perf_counter() - start
        return row

    def finish_rows(self, rows: list, setting: Setting, seed: int, train_seed: int, prior_ap) -> None:
        """Gap recovered and beats-prior, then store."""
        ceiling = next(r for r in rows if r["kind"] == "ceiling").get("test", {}).get("dice")
        floor = next((r for r in rows if r["kind"] == "floor"), {}).get("test", {}).get("dice")
        for row in rows:
            row.update(setting=setting.name, dataset=setting.dataset, seed=seed, train_seed=train_seed)
            dice = row.get("test", {}).get("dice")
            if dice is not None:
                measurable = ceiling is not None and floor is not None and ceiling - floor >= MIN_GAP
                row["gap_recovered"] = metrics.gap_recovered(dice, floor, ceiling) if measurable else None
            ap = row.get("noise", {}).get("ap")
            if row["kind"] != "prior" and ap is not None and prior_ap is not None:
                row["beats_prior"] = bool(ap > prior_ap)
            self.rows.append(metrics.to_json_safe(row))


def select_settings(names, settings=None, quick: bool = False) -> list:
    """Settings by exact name or by dataset name (``bbbc039`` = all its settings);
    with no names every setting, or with ``quick`` those marked ``quick``."""
    settings = SETTINGS if settings is None else settings
    if not names:
        return [s for s in settings if s.quick or not quick]
    chosen = []
    for name in names:
        hits = [s for s in settings if s.name == name or s.dataset == name]
        if not hits:
            raise ValueError(f"unknown setting {name!r}; known: {', '.join(s.name for s in settings)}")
        chosen += [s for s in hits if s not in chosen]
    return chosen


def run_benchmark(data_dir, settings=None, methods=None, seeds=(0,), profile="quick", datasets=None,
                  method_params=None, minutes=None, epochs=None, device="auto", log=None,
                  on_partial=None, train_seeds=None, lr_schedule=None, n_train=None) -> dict:
    """Run the quality benchmark and return the report (JSON-safe dict).

    Parameters
    ----------
    data_dir : path
        Folder holding each dataset's folder (read only).
    settings : list of Setting, optional
        Default :data:`SETTINGS`.
    methods : list of str, optional
        Registered method names; default every registered method. ``baseline`` (the
        floor) always runs.
    seeds : sequence of int
        Each seed sets the noise simulation and, unless ``train_seeds`` is given, the
        training seed.
    profile : str or dict
        A :data:`PROFILES` key or ``{dataset name: DatasetProfile}``.
    datasets : dict, optional
        ``{name: DatasetSpec}``; default :data:`DATASETS`.
    method_params : dict, optional
        ``{method: {param: value}}`` passed as ``TrainConfig.params``.
    minutes, epochs : float, int, optional
        Override every run's budget (a time budget replaces the epoch budget).
    device : str
    log : callable, optional
        Progress lines (default: stderr).
    on_partial : callable, optional
        Called with the report so far (``"partial": True``) after every setting × seed
        × training seed, so that a long run that is stopped keeps what it finished.
    lr_schedule : {"constant", "cosine"}, optional
        Override every run's ``TrainConfig.lr_schedule`` (default: the profile's,
        constant).
    train_seeds : sequence of int, optional
        Train every method (floor and ceiling included) once per training seed on each
        noise draw, so that the spread from training alone is measured apart from the
        noise draw's. Default: one run per seed, trained with that seed.
    n_train : int, optional
        Train on this many images (volumes) of every dataset instead of the profile's
        (:func:`with_n_train`); the test split stays the profile's.

    Returns
    -------
    dict
        ``rows`` (one per setting × seed × training seed × row; the prior row once per
        setting × seed), ``summary`` (mean/std over runs, and each row's difference to
        the floor of its own run),
        ``settings``, ``methods``, ``configs``, ``splits``, ``noise``, run metadata.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    settings = list(SETTINGS if settings is None else settings)
    datasets = dict(DATASETS if datasets is None else datasets)
    profile_name = profile if isinstance(profile, str) else "custom"
    profile = PROFILES[profile] if isinstance(profile, str) else dict(profile)
    if n_train is not None:
        profile = {name: with_n_train(p, n_train) for name, p in profile.items()}
        profile_name = f"{profile_name}, n_train={n_train}"
    methods = list(REGISTRY) if not methods else list(methods)
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; registered: {', '.join(REGISTRY)}")
    train_seeds = None if train_seeds is None else [int(t) for t in train_seeds]
    if train_seeds is not None and not train_seeds:
        raise ValueError("train_seeds is empty; leave it out to train with each noise seed")
    needed = [datasets[name] for name in dict.fromkeys(s.dataset for s in settings)]
    data_dir = check_data(data_dir, needed)
    started = time.perf_counter()
    bench = Benchmark(data_dir, settings, methods, list(seeds), profile, datasets, dict(method_params or {}),
                      minutes, epochs, device, log, lr_schedule)
    done = []
    last = (settings[-1], seeds[-1], seeds[-1] if train_seeds is None else train_seeds[-1])

    def after_run(setting, seed, train_seed):
        if setting not in done:
            done.append(setting)
        if on_partial is not None and (setting, seed, train_seed) != last:
            on_partial({**_report(bench, done, profile_name, profile, methods, seeds, needed, started,
                                  train_seeds), "partial": True})

    for setting in settings:
        for seed in seeds:
            bench.run_setting(setting, seed, train_seeds,
                              after_run=lambda train_seed: after_run(setting, seed, train_seed))
    return _report(bench, settings, profile_name, profile, methods, seeds, needed, started, train_seeds)


def _report(bench, settings, profile_name, profile, methods, seeds, needed, started, train_seeds=None) -> dict:
    report = {
        "benchmark": "quality",
        "profile": profile_name,
        "profile_config": {name: asdict(p) for name, p in profile.items() if name in {d.name for d in needed}},
        "methods": {m: get_method(m).SUMMARY for m in methods},
        "seeds": list(seeds),
        "train_seeds": train_seeds,
        "settings": [asdict(s) for s in settings],
        "datasets": {d.name: asdict(d) for d in needed},
        "splits": bench.splits,
        "configs": bench.configs,
        "noise": bench.noise_stats,
        "rows": bench.rows,
        "summary": summarise(bench.rows),
        "devices": sorted(d for d in bench.devices if d),
        "wall_s": time.perf_counter() - started,
    }
    return metrics.to_json_safe(report)


# ----------------------------------------------------------------------------- summary and tables


ROW_ORDER = {"ceiling": 0, "floor": 1, "method": 2, "peer": 3, "prior": 4}


def _flat_metrics(row: dict) -> dict:
    test, noise, corr = row.get("test") or {}, row.get("noise") or {}, row.get("correction") or {}
    out = {
        "test_dice": test.get("dice"), "test_dice_per_class": test.get("dice_per_class"),
        "test_hd95": test.get("hd95"), "gap_recovered": row.get("gap_recovered"),
        "auroc": noise.get("auroc"), "ap": noise.get("ap"), "f1": noise.get("f1"),
        "dice_corrected": corr.get("dice_corrected"), "dice_given": corr.get("dice_given"),
        "wall_s": row.get("wall_s"),
    }
    if "beats_prior" in row:
        out["beats_prior"] = float(row["beats_prior"])
    return {k: v for k, v in out.items() if v is not None}


def run_budgets(report: dict) -> dict:
    """``{dataset: {(epochs, minutes, lr_schedule)}}`` of a report's training runs (a merged
    report's own record; runs from before the schedule existed were constant)."""
    if "budgets" in report:
        return {name: {(tuple(budget) + ("constant",))[:3]} for name, budget in report["budgets"].items()}
    return {name: {(config.get("epochs"), config.get("minutes"), config.get("lr_schedule", "constant"))
                   for config in by_method.values()}
            for name, by_method in report.get("configs", {}).items()}


def run_key(row: dict) -> tuple:
    """(setting, noise seed, training seed) of a row; runs before ``--train-seeds``
    existed trained with the noise seed."""
    return row["setting"], row["seed"], row.get("train_seed", row["seed"])


def _paired_with_floor(row: dict, floors: dict) -> dict:
    """The row's test Dice minus the floor's of the same run, and whether it is above."""
    dice, floor = (row.get("test") or {}).get("dice"), floors.get(run_key(row))
    if row["kind"] not in ("method", "peer") or dice is None or floor is None:
        return {}
    return {"dice_minus_floor": dice - floor, "above_floor": float(dice > floor)}


def summarise(rows: list) -> list:
    """Mean/std/n over runs (seeds × training seeds) of every metric, per setting × row.

    Each method's test Dice is also paired with the floor of its own run
    (``dice_minus_floor``, ``above_floor``): the floor moves between runs by more than
    some methods' margins, and a paired difference removes what the runs share.
    """
    floors = {run_key(row): row["test"]["dice"] for row in rows
              if row["kind"] == "floor" and not row.get("error") and row.get("test")}
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["setting"], row["row"]), []).append(row)
    summary = []
    for (setting, name), members in groups.items():
        ok = [m for m in members if not m.get("error")]
        summary.append({
            "setting": setting, "row": name, "kind": members[0]["kind"], "n_seeds": len(members),
            "errors": [m["error"] for m in members if m.get("error")],
            "metrics": metrics.aggregate_scores([{**_flat_metrics(m), **_paired_with_floor(m, floors)}
                                                 for m in ok]) if ok else {},
        })
    return metrics.to_json_safe(summary)


def _fmt(stat, digits=3) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    mean, std, n = stat["mean"], stat.get("std"), stat.get("n", 1)
    text = f"{mean:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if n and n > 1 and std is not None else text


def _fmt_classes(stat) -> str:
    if not stat or not isinstance(stat.get("mean"), list):
        return "—"
    return " / ".join("—" if m is None else f"{m:.3f}" for m in stat["mean"][1:])


def _fmt_paired(m: dict) -> str:
    """``+0.012 ± 0.010 (2/3)``: mean difference to the run's floor, runs above it."""
    delta, above = m.get("dice_minus_floor"), m.get("above_floor")
    if not delta or delta.get("mean") is None:
        return "—"
    text = f"{delta['mean']:+.3f}"
    if delta.get("n", 1) > 1 and delta.get("std") is not None:
        text += f" ± {delta['std']:.3f}"
    return f"{text} ({round(above['mean'] * above['n'])}/{above['n']})"


def markdown(report: dict) -> str:
    """One Markdown table per setting (mean ± sample std over runs)."""
    runs = f"seeds {', '.join(map(str, report['seeds']))}"
    if report.get("train_seeds"):
        runs += f" × training seeds {', '.join(map(str, report['train_seeds']))}"
    schedules = {budget[2] for budgets in run_budgets(report).values() for budget in budgets}
    if schedules - {"constant"}:
        runs += f", {'/'.join(sorted(schedules))} learning rate"
    lines = [f"# Quality benchmark ({report['profile']}, {runs})", ""]
    if report.get("partial"):
        lines += ["**Partial report**: the run was still going (or was stopped); only the settings below "
                  "finished.", ""]
    noise_by_setting: dict = {}
    for entry in report["noise"]:
        noise_by_setting.setdefault(entry["setting"], []).append(entry)
    for setting in report["settings"]:
        name = setting["name"]
        entries = noise_by_setting.get(name, [])
        rows = sorted((s for s in report["summary"] if s["setting"] == name),
                      key=lambda s: (ROW_ORDER.get(s["kind"], 9), s["row"]))
        multi = any(isinstance(s["metrics"].get("test_dice_per_class", {}).get("mean"), list)
                    and len(s["metrics"]["test_dice_per_class"]["mean"]) > 2 for s in rows)
        lines.append(f"## {name}")
        lines.append("")
        if entries:
            frac = np.mean([e["noise_fraction"] for e in entries])
            given = np.mean([e["dice_noisy_vs_clean"] for e in entries])
            lines.append(f"{setting['note']}. Noise: {100 * frac:.1f}% of train pixels; "
                         f"Dice(noisy, clean) = {given:.3f}.")
            lines.append("")
        header = ["row", "test Dice"] + (["per class"] if multi else []) + [
            "HD95", "gap rec.", "Δ floor (runs above)", "AUROC", "AP", "F1@0.5", "AP>prior", "Dice corrected",
            "wall s"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for summary in rows:
            m = summary["metrics"]
            label = summary["row"] + (" (floor)" if summary["kind"] == "floor" else "")
            if summary["errors"] and not m:
                cells = [label, f"error: {summary['errors'][0][:60]}"] + [""] * (len(header) - 2)
                lines.append("| " + " | ".join(cells) + " |")
                continue
            beats = m.get("beats_prior")
            beats_text = "—" if not beats else (
                f"{'yes' if beats['mean'] > 0.5 else 'no'} ({round(beats['mean'] * beats['n'])}/{beats['n']})")
            cells = [label, _fmt(m.get("test_dice"))]
            if multi:
                cells.append(_fmt_classes(m.get("test_dice_per_class")))
            cells += [_fmt(m.get("test_hd95"), 1), _fmt(m.get("gap_recovered"), 2), _fmt_paired(m),
                      _fmt(m.get("auroc")),
                      _fmt(m.get("ap")), _fmt(m.get("f1")), beats_text,
                      _fmt(m.get("dice_corrected")), _fmt(m.get("wall_s"), 0)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Test Dice/HD95: final model on the held-out CLEAN labels (mean over test images, foreground "
                 "classes; per class = class 1 / class 2). gap rec. = (Dice − floor) / (ceiling − floor), — when "
                 "ceiling − floor < 0.01. Δ floor: test Dice minus the floor of the same run (noise and training "
                 "seed), mean ± std over runs, and the runs where it is above the floor. AUROC, AP, "
                 "F1@0.5: `noise` vs the true noise mask, pooled over the train split. AP>prior: AP above the "
                 "boundary prior's (seeds where it is). Dice corrected: Dice(corrected, clean) on the train split "
                 "(compare with Dice(noisy, clean) above). wall s: training time.")
    if report.get("reference_drift"):
        lines += ["", "Floor/ceiling rows that differed between the merged runs (the later one is in the tables; "
                      "each run's methods were measured against its own run's):", ""]
        lines += [f"- {d['setting']} {d['row']} seed {d['seed']}"
                  + (f", training seed {d['train_seed']}" if d.get("train_seed", d["seed"]) != d["seed"] else "")
                  + f": {d['earlier']:.4f} → {d['later']:.4f} "
                  f"({d['earlier_source']} → {d['later_source']})" for d in report["reference_drift"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what :mod:`platform` says.

    Recorded because the same seed and commit reproduce to the last digit only on the
    same kind of CPU: its vector units pick the bf16/fp32 kernels, and so the rounding.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata(argv, script: str = "benchmarks/quality.py") -> dict:
    """Command line (``python SCRIPT ARGV``), commit, date and machine of a benchmark run."""
    import torch

    # The result files this run rewrites as it goes do not make the code dirty.
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {
        "command": " ".join(["python", script, *argv]),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "package_version": __version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "nice": os.nice(0),
        },
    }


def write_report(report: dict, out_dir, name: str, render_markdown=None) -> tuple[Path, Path]:
    """Write ``<name>.json`` and ``<name>.md`` into ``out_dir`` (replacing earlier ones).

    ``render_markdown(report) -> str`` makes the table (default: this benchmark's :func:`markdown`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    # to_json_safe: NaN/inf become null (a correlation of a constant series, a mean over no pixel).
    text = json.dumps(metrics.to_json_safe(report), indent=2, allow_nan=False) + "\n"
    io.atomic_write_text(json_path, text, overwrite=True)
    io.atomic_write_text(md_path, (render_markdown or markdown)(report), overwrite=True)
    return json_path, md_path


def load_full_setting(data_dir, name: str, n_train=None) -> tuple:
    """``(setting, spec, profile, data)`` of the one setting ``name`` names, its data loaded in full mode
    (on ``n_train`` training images when given, :func:`with_n_train`).

    Raises ValueError when ``name`` names no setting or several, :class:`DataError` when the data is missing.
    """
    settings = select_settings([name])
    if len(settings) != 1:
        raise ValueError(f"--setting {name!r} names {len(settings)} settings; name one, e.g. "
                         "bbbc039/markov_boundary")
    [setting] = settings
    spec, profile = DATASETS[setting.dataset], PROFILES["full"][setting.dataset]
    if n_train is not None:
        profile = with_n_train(profile, n_train)
    return setting, spec, profile, load_split(check_data(Path(data_dir), [spec]), spec, profile)


def budget_report(argv, script: str, benchmark: str, setting: Setting, profile: DatasetProfile, args) -> dict:
    """The header of a one-setting report whose parser has ``training_budget``: :func:`run_metadata`, the
    benchmark's name, the setting, the epochs actually trained, the rate schedule, the number of training
    images, and an empty ``runs``."""
    return {**run_metadata(argv, script), "benchmark": benchmark, "setting": setting.name,
            "epochs": args.epochs or profile.train["epochs"], "lr_schedule": args.lr_schedule,
            "n_train": profile.n_train, "runs": []}


def budget_title(report: dict) -> str:
    """The title suffix of a :func:`budget_report`: its rate schedule unless constant, and its number of
    training images where recorded (files written before --n-train have none), e.g.
    ``", cosine learning rate, 4 training images"``."""
    schedule = report.get("lr_schedule", "constant")
    return (("" if schedule == "constant" else f", {schedule} learning rate")
            + (f", {report['n_train']} training images" if report.get("n_train") else ""))


def one_setting_parser(description: str, default_setting: str, default_name: str,
                       setting_help: str = "a quality.py setting name",
                       training_budget: bool = False) -> argparse.ArgumentParser:
    """The arguments every script over one full-mode setting takes: --data, --setting, --out, --name;
    with ``training_budget`` also --epochs, --lr-schedule and --n-train (defaults: the full profile's,
    constant)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding bbbc039/ and hippocampus/")
    parser.add_argument("--setting", default=default_setting, help=setting_help)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results folder")
    parser.add_argument("--name", default=default_name, help=f"output file stem (default {default_name})")
    if training_budget:
        parser.add_argument("--epochs", type=int, default=None, help="epoch budget (default: the full profile's)")
        parser.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                            help="learning-rate schedule (default constant, as quality.py)")
        parser.add_argument("--n-train", type=int, default=None,
                            help="training images (volumes) (default: the full profile's; test split unchanged)")
    return parser


def save_and_print(report: dict, out_dir, name: str, render_markdown) -> None:
    """:func:`write_report` with ``render_markdown``, then print the table and where it went."""
    json_path, md_path = write_report(report, out_dir, name, render_markdown)
    print(render_markdown(report))
    print(f"wrote {json_path} and {md_path}")


def render(json_paths) -> int:
    """Rewrite ``X.md`` beside each ``X.json`` from its numbers (no training): tables of
    earlier runs in this version's layout. Exit status 2 names a file that is not a report."""
    for path in map(Path, json_paths):
        try:
            report = json.loads(path.read_text())
            # The summary in the file is from the version that wrote it; the rows are the numbers.
            text = markdown({**report, "summary": summarise(report["rows"])})
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"error: {path} is not a quality report ({type(error).__name__}: {error})", file=sys.stderr)
            return 2
        io.atomic_write_text(path.with_suffix(".md"), text, overwrite=True)
        print(f"wrote {path.with_suffix('.md')}")
    return 0


def parse_params(items) -> dict:
    """``["confident.folds=2"]`` -> ``{"confident": {"folds": 2}}`` (values parsed as JSON when possible)."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--params expects METHOD.NAME=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[param] = parsed
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding bbbc039/ and hippocampus/")
    parser.add_argument("--quick", action="store_true", help="tiny subsets and budgets (< 15 min on 2 cores)")
    parser.add_argument("--methods", default="", help="comma-separated registered methods (default: all)")
    parser.add_argument("--settings", default="", help="comma-separated setting or dataset names (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0)")
    parser.add_argument("--train-seeds", default=None,
                        help="comma-separated training seeds, each run on every noise seed "
                             "(default: train with the noise seed)")
    parser.add_argument("--minutes", type=float, default=None, help="time budget per training run")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget per training run")
    parser.add_argument("--n-train", type=int, default=None,
                        help="training images (volumes) per dataset (default: the profile's; test split unchanged)")
    parser.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                        help="learning-rate schedule of every run (default: constant)")
    parser.add_argument("--params", action="append", default=[], help="METHOD.NAME=VALUE (repeatable)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is far faster on a busy machine)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results folder")
    parser.add_argument("--name", default=None, help="output file stem (default quality / quality_quick)")
    parser.add_argument("--list", action="store_true", help="list settings and methods, then exit")
    parser.add_argument("--render", nargs="+", metavar="JSON", default=None,
                        help="rewrite each result JSON's .md beside it with this version's tables, then exit")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.render:
        return render(args.render)
    if args.list:
        for s in SETTINGS:
            print(f"{s.name:32s} {s.protocol} α={s.fraction} S={s.severity} {s.params} — {s.note}")
        for name in REGISTRY:
            print(f"method {name}")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    profile = "quick" if args.quick else "full"
    seeds = comma_list(args.seeds or "0", int)
    train_seeds = None if args.train_seeds is None else comma_list(args.train_seeds, int)
    methods = comma_list(args.methods) or None
    data_dir, out_dir = Path(args.data).resolve(), Path(args.out).resolve()
    if out_dir == data_dir or data_dir in out_dir.parents:
        print(f"error: --out {out_dir} is inside the data folder {data_dir}; never write there", file=sys.stderr)
        return 2
    name = args.name or ("quality_quick" if args.quick else "quality")
    # The commit and dirty flag are the code this process imported, taken now: a commit made while
    # the run goes on must not become its provenance. Only the date is the write's.
    metadata = run_metadata(argv)

    def stamped(report: dict) -> dict:
        return {**metadata, "date": datetime.datetime.now().isoformat(timespec="seconds"), **report}

    def write_partial(partial: dict) -> None:
        write_report(stamped(partial), out_dir, name)

    try:
        settings = select_settings(comma_list(args.settings), quick=args.quick)
        report = run_benchmark(data_dir, settings, methods, seeds, profile, method_params=parse_params(args.params),
                               minutes=args.minutes, epochs=args.epochs, device=args.device,
                               on_partial=write_partial, train_seeds=train_seeds, lr_schedule=args.lr_schedule,
                               n_train=args.n_train)
    except (DataError, ValueError, io.InputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = stamped(report)
    json_path, md_path = write_report(report, out_dir, name)
    print(markdown(report))
    print(f"wrote {json_path} and {md_path} ({report['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
