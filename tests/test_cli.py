"""The ``noisyseg`` command line: help, the documented output layout end to end, errors.

Runs ``napari_noisyseg.cli.main`` in-process (the same entry point as the console
script) on tiny folders made from the repository's sample data; the console
script itself is run once as a subprocess.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_noisyseg.cli import main
from napari_noisyseg.core import io

from helpers import sample_folders

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
TRAIN = ["--method", "baseline", "--epochs", "2", "--patch-size", "64", "--width", "8", "--depth", "2", "--batch-size", "4",
         "--seed", "0", "--quiet"]


def _bbbc_folder(root: Path, count: int = 3) -> tuple[Path, Path, list[str]]:
    """128 x 128 crops with nuclei and their clean labels (see helpers.sample_folders)."""
    return sample_folders(root, count, 128, "labels_clean")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pipeline_2d(tmp_path_factory):
    """simulate -> train -> predict -> evaluate on three BBBC039 crops; returns paths and outputs."""
    root = tmp_path_factory.mktemp("cli2d")
    images, labels, stems = _bbbc_folder(root)
    sim, run, pred, report = root / "sim", root / "run", root / "pred", root / "report.json"
    codes = {
        "simulate": main(["simulate", "--labels", str(labels), "--noise", "erode_dilate", "--fraction", "1",
                          "--seed", "1", "--param", "radius=[2,4]", "--out", str(sim)]),
        "train": main(["train", "--images", str(images), "--labels", str(sim / "labels"), *TRAIN,
                       "--out", str(run)]),
        "predict": main(["predict", "--model", str(run), "--images", str(images), "--out", str(pred)]),
        "evaluate": main(["evaluate", "--pred", str(run / "corrected"), "--truth", str(labels),
                          "--noise", str(run / "noise"), "--noise-truth", str(sim / "noise_mask"),
                          "--json", str(report)]),
    }
    return dict(root=root, images=images, labels=labels, stems=stems, sim=sim, run=run, pred=pred,
                report=report, codes=codes)


# ----------------------------------------------------------------------------- help


def test_console_script_help():
    script = Path(sys.executable).with_name("noisyseg")
    assert script.exists(), f"console script missing: {script}"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for word in ("simulate", "train", "predict", "evaluate", "methods"):
        assert word in done.stdout
    done = subprocess.run([str(script), "evaluate"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--pred" in done.stderr  # argparse: missing required options


@pytest.mark.parametrize(
    "command, options",
    [
        ("simulate", ["--labels", "--images", "--noise", "--fraction", "--severity", "--seed", "--per-slice",
                      "--param", "--out", "--overwrite", "erode_dilate", "model_noise", "noise_mask"]),
        ("train", ["--images", "--labels", "--method", "--epochs", "--minutes", "--device", "--precision",
                   "--seed", "--mode", "--patch-size", "--batch-size", "--width", "--depth", "--lr-schedule", "--param",
                   "--trust", "--out", "--overwrite", "model.safetensors", "proposals.csv"]),
        ("apply", ["--run", "--labels", "--decisions", "--accept-above", "--out", "--overwrite", "cleaned", "trust",
                   "curation_log.csv"]),
        ("predict", ["--model", "--images", "--out", "--device", "--overwrite"]),
        ("evaluate", ["--pred", "--truth", "--noise", "--noise-truth", "--json"]),
        ("methods", []),
    ],
)
def test_subcommand_help(capsys, command, options):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"noisyseg {command}" in text
    for option in options:
        assert option in text, f"{command} --help does not mention {option}"


def test_methods_lists_baseline(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    assert any(line.split()[0] == "baseline" and "U-Net" in line for line in out.splitlines())


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and "napari-noisyseg" in capsys.readouterr().out


# ----------------------------------------------------------------------------- end to end


def test_pipeline_exit_codes(pipeline_2d):
    assert pipeline_2d["codes"] == {"simulate": 0, "train": 0, "predict": 0, "evaluate": 0}


def test_simulate_layout(pipeline_2d):
    sim, stems = pipeline_2d["sim"], pipeline_2d["stems"]
    assert sorted(p.name for p in sim.iterdir()) == ["labels", "noise_mask", "simulate.json"]
    assert sorted(p.name for p in (sim / "labels").iterdir()) == sorted(f"{s}.png" for s in stems)
    assert sorted(p.name for p in (sim / "noise_mask").iterdir()) == sorted(f"{s}.tif" for s in stems)
    record = json.loads((sim / "simulate.json").read_text())
    assert record["files"] == sorted(stems) and record["corrupted"] == [True] * 3
    assert record["params"]["seed"] == 1 and record["params"]["protocols"] == ["erode_dilate"]
    assert record["params"]["steps"][0]["params"]["radius"] == [2, 4]
    for stem, fraction in zip(record["files"], record["noise_fraction"]):
        clean, _ = io.read_labels(pipeline_2d["labels"] / f"{stem}.png")
        noisy, _ = io.read_labels(sim / "labels" / f"{stem}.png")
        mask, _ = io.read_array(sim / "noise_mask" / f"{stem}.tif")
        assert mask.dtype == np.uint8 and mask.shape == clean.shape
        np.testing.assert_array_equal(mask.astype(bool), noisy != clean)
        assert mask.mean() == pytest.approx(fraction) and 0 < fraction < 0.5


def test_train_layout(pipeline_2d):
    run, stems = pipeline_2d["run"], pipeline_2d["stems"]
    assert sorted(p.name for p in run.iterdir()) == [
        "corrected", "history.json", "model.safetensors", "noise", "proposals.csv"]
    assert sorted(p.name for p in (run / "noise").iterdir()) == sorted(f"{s}.tif" for s in stems)
    assert sorted(p.name for p in (run / "corrected").iterdir()) == sorted(f"{s}.tif" for s in stems)
    for stem in stems:
        given, _ = io.read_labels(pipeline_2d["sim"] / "labels" / f"{stem}.png")
        noise, _ = io.read_array(run / "noise" / f"{stem}.tif")
        corrected, _ = io.read_array(run / "corrected" / f"{stem}.tif")
        assert noise.dtype == np.float32 and noise.shape == given.shape == (128, 128)
        assert 0.0 <= noise.min() and noise.max() <= 1.0
        assert np.issubdtype(corrected.dtype, np.integer) and corrected.shape == (128, 128)
        assert set(np.unique(corrected)) <= {0, 1}
    history = json.loads((run / "history.json").read_text())
    assert history["method"] == "baseline" and history["stopped"] is False
    assert history["config"]["epochs"] == 2 and history["config"]["width"] == 8
    assert history["config"]["lr_schedule"] == "constant"
    assert history["history"]["epoch"] == [0, 1] and len(history["history"]["loss"]) == 2
    assert sorted(history["sample_reliability"]) == sorted(stems)
    with open(run / "proposals.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
        handle.seek(0)
        header = handle.readline().strip().split(",")
    assert header == ["id", "source", "kind", "area", "mean_noise", "from_class", "to_class",
                      "centroid", "bbox", "status"]
    assert history["n_proposals"] == len(rows)
    assert sorted(history["labels_sha256"]) == sorted(stems) and history["trusted_pixels"] == 0
    assert [int(r["id"]) for r in rows] == list(range(1, len(rows) + 1))
    assert {r["source"] for r in rows} <= set(stems) and {r["kind"] for r in rows} <= {"add", "remove", "relabel"}
    assert all(len(r["centroid"].split()) == 2 and len(r["bbox"].split()) == 4 for r in rows)


def test_predict_layout(pipeline_2d):
    pred, stems = pipeline_2d["pred"], pipeline_2d["stems"]
    assert sorted(p.name for p in pred.iterdir()) == sorted(f"{s}.tif" for s in stems)
    for stem in stems:
        labels, _ = io.read_array(pred / f"{stem}.tif")
        corrected, _ = io.read_array(pipeline_2d["run"] / "corrected" / f"{stem}.tif")
        assert labels.shape == (128, 128) and np.issubdtype(labels.dtype, np.integer)
        # The saved model reproduces the run's own argmax (same network, same images).
        assert (labels == corrected).mean() > 0.99


def test_evaluate_report(pipeline_2d, capsys):
    report = json.loads(pipeline_2d["report"].read_text())
    seg = report["segmentation"]
    assert report["n_images"] == 3 and len(seg["dice_per_class"]) == 2
    assert all(0.0 <= d <= 1.0 for d in seg["dice_per_class"])
    assert seg["dice_per_class"][0] > 0.8  # background
    noise = report["noise_detection"]
    assert {"auroc", "ap", "f1", "threshold", "prevalence"} <= set(noise)
    code, out, _ = run_cli(capsys, "evaluate", "--pred", pipeline_2d["labels"], "--truth", pipeline_2d["labels"])
    assert code == 0 and "mean foreground Dice: 1.0000" in out


def test_commands_that_train_nothing_start_without_torch(pipeline_2d, tmp_path):
    """simulate, apply and evaluate never load torch, and listing methods never loads
    scikit-learn: each costs seconds of every command's start."""
    script = ("import sys; from napari_noisyseg.cli import main; code = main(sys.argv[1:]); "
              "print('loaded:', *sorted(m for m in ('torch', 'sklearn') if m in sys.modules)); sys.exit(code)")

    def loaded(*args) -> list:
        done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout.split("loaded:")[1].split()

    assert "torch" not in loaded("simulate", "--labels", pipeline_2d["labels"], "--noise", "erode_dilate",
                                 "--seed", "1", "--param", "radius=[2,4]", "--out", tmp_path / "sim")
    np.testing.assert_array_equal(*(io.read_labels(sim / "labels" / f"{pipeline_2d['stems'][0]}.png")[0]
                                    for sim in (tmp_path / "sim", pipeline_2d["sim"])))  # the same draw as in-process
    assert "torch" not in loaded("apply", "--run", pipeline_2d["run"], "--labels", pipeline_2d["sim"] / "labels",
                                 "--accept-above", "0", "--out", tmp_path / "applied")
    assert len(list((tmp_path / "applied" / "cleaned").iterdir())) == len(pipeline_2d["stems"])
    assert "torch" not in loaded("evaluate", "--pred", pipeline_2d["labels"], "--truth", pipeline_2d["labels"])
    assert "sklearn" not in loaded("methods")


def test_evaluate_scores_an_all_foreground_prediction_and_refuses_such_truth(pipeline_2d, tmp_path, capsys):
    full = tmp_path / "full"
    truth_paths = sorted(Path(pipeline_2d["labels"]).iterdir())
    for path in truth_paths:  # what a network that never learnt background predicts
        labels, meta = io.read_array(path)
        io.write_labels(full / f"{path.name.split('.')[0]}.tif", np.ones_like(labels), meta)
    code, out, err = run_cli(capsys, "evaluate", "--pred", full, "--truth", pipeline_2d["labels"])
    assert code == 0, err
    dice = float(out.split("mean foreground Dice: ")[1].split()[0])
    assert 0.0 < dice < 0.9  # scored, and scored as the bad prediction it is
    code, _, err = run_cli(capsys, "evaluate", "--pred", pipeline_2d["labels"], "--truth", full)
    assert code != 0 and "all foreground" in err and "full" in err


# ----------------------------------------------------------------------------- 3D


def test_3d_nifti_volume_trains_slice_wise(tmp_path, capsys):
    stem = "hippocampus_148"
    image, image_meta = io.read_array(SAMPLE / "hippocampus" / "images" / f"{stem}.nii.gz")
    labels, label_meta = io.read_array(SAMPLE / "hippocampus" / "labels_clean" / f"{stem}.nii.gz")
    crop = slice(8, 22)  # 14 slices (48 x 32) holding both hippocampus classes
    io.write_array(tmp_path / "images" / f"{stem}.nii.gz", image[crop], image_meta)
    io.write_labels(tmp_path / "labels" / f"{stem}.nii.gz", labels[crop], label_meta)
    shape = labels[crop].shape
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--images", tmp_path / "images", "--labels", tmp_path / "labels",
                             "--epochs", "1", "--patch-size", "64", "--width", "8", "--depth", "2",
                             "--batch-size", "8", "--out", run)
    assert code == 0, err
    assert "epoch 2/2" in out  # the default Co-Seg: one co-teaching epoch in front of the 1-epoch budget
    noise, _ = io.read_array(run / "noise" / f"{stem}.tif")
    corrected, _ = io.read_array(run / "corrected" / f"{stem}.tif")
    assert noise.shape == corrected.shape == shape == (14, 48, 32)
    assert noise.dtype == np.float32 and set(np.unique(corrected)) <= {0, 1, 2}
    history = json.loads((run / "history.json").read_text())
    assert len(history["sample_reliability"]) == 14  # one per slice
    assert f"{stem}[0]" in history["sample_reliability"]
    assert history["history"]["patch_size"] == 48  # slices smaller than the patch: one padded patch
    with open(run / "proposals.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(len(r["centroid"].split()) == 3 and len(r["bbox"].split()) == 6 for r in rows)
    code, _, err = run_cli(capsys, "predict", "--model", run / "model.safetensors", "--images",
                           tmp_path / "images", "--out", tmp_path / "pred")
    assert code == 0, err
    predicted, _ = io.read_array(tmp_path / "pred" / f"{stem}.tif")
    assert predicted.shape == shape


# ----------------------------------------------------------------------------- errors


def test_mismatched_shapes_exit_2_naming_the_file(tmp_path, capsys):
    images, labels, stems = _bbbc_folder(tmp_path, count=2)
    bad, _ = io.read_labels(labels / f"{stems[1]}.png")
    io.write_labels(labels / f"{stems[1]}.png", bad[:, :120], overwrite=True)
    code, _, err = run_cli(capsys, "train", "--images", images, "--labels", labels, *TRAIN,
                           "--out", tmp_path / "run")
    assert code == 2
    assert err.startswith("noisyseg train: error:")
    assert f"{stems[1]}.png" in err and "(128, 120)" in err and "(128, 128)" in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_missing_label_exit_2_naming_the_image(tmp_path, capsys):
    images, labels, stems = _bbbc_folder(tmp_path, count=2)
    (labels / f"{stems[0]}.png").unlink()
    code, _, err = run_cli(capsys, "train", "--images", images, "--labels", labels, *TRAIN,
                           "--out", tmp_path / "run")
    assert code == 2 and stems[0] in err and "no label file" in err
    code, _, err = run_cli(capsys, "train", "--images", tmp_path / "nowhere", "--labels", labels, *TRAIN,
                           "--out", tmp_path / "run")
    assert code == 2 and "nowhere" in err


def test_a_minutes_budget_prints_its_epoch_plan_as_an_estimate(tmp_path, capsys):
    """Under --minutes the run re-plans its epochs as it learns its speed: the printed
    total carries "≈" (an --epochs run prints an exact total, test_3d_nifti_volume_...)."""
    images, labels, _ = _bbbc_folder(tmp_path, count=2)
    train = [a for a in TRAIN if a != "--quiet"]
    train[train.index("--epochs"):train.index("--epochs") + 2] = ["--minutes", "0.05"]
    code, out, err = run_cli(capsys, "train", "--images", images, "--labels", labels, *train, "--out", tmp_path / "run")
    assert code == 0, err
    assert "epoch 1/≈" in out and not re.search(r"epoch \d+/\d", out)
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert history["closing_reserve_s"] == pytest.approx(0.15 * 3.0)  # one short pass fits in the 15 %


def test_non_empty_out_is_refused_without_overwrite(tmp_path, capsys):
    images, labels, _ = _bbbc_folder(tmp_path, count=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for argv in (
        ["simulate", "--labels", labels, "--noise", "missing", "--out", out],
        ["train", "--images", images, "--labels", labels, *TRAIN, "--out", out],
        ["predict", "--model", out, "--images", images, "--out", out],
    ):
        code, stdout, err = run_cli(capsys, *argv)
        assert code == 2, argv[0]
        assert "not empty" in err and "--overwrite" in err and str(out) in err
        assert "image/label pairs" not in stdout  # refused before any training started
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, "simulate", "--labels", labels, "--noise", "missing", "--out", out, "--overwrite")
    assert code == 0, err
    assert (out / "keep.txt").read_text() == "mine" and (out / "simulate.json").is_file()


def test_bad_checkpoint_exit_2_naming_the_file(tmp_path, capsys):
    images, _, _ = _bbbc_folder(tmp_path, count=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"not a model")
    code, _, err = run_cli(capsys, "predict", "--model", tmp_path / "run", "--images", images,
                           "--out", tmp_path / "pred")
    assert code == 2 and "model.safetensors: not a readable safetensors checkpoint" in err
    assert not (tmp_path / "pred").exists()


def test_bad_protocol_and_params_exit_2(tmp_path, capsys):
    _, labels, _ = _bbbc_folder(tmp_path, count=1)
    code, _, err = run_cli(capsys, "simulate", "--labels", labels, "--noise", "smudge", "--out", tmp_path / "a")
    assert code == 2 and "unknown noise protocol 'smudge'" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_cli(capsys, "simulate", "--labels", labels, "--noise", "missing", "--param", "beta=0.5",
                           "--out", tmp_path / "b")
    assert code == 2 and "beta" in err


# ----------------------------------------------------------------------------- model_noise


def test_simulate_model_noise_from_the_command_line(tmp_path, capsys):
    images, labels, stems = _bbbc_folder(tmp_path, count=3)
    code, _, err = run_cli(capsys, "simulate", "--labels", labels, "--noise", "model_noise",
                           "--out", tmp_path / "none")
    assert code == 2 and "--images" in err
    code, _, err = run_cli(capsys, "simulate", "--labels", labels, "--noise", "model_noise+missing",
                           "--images", images, "--out", tmp_path / "combo")
    assert code == 2 and "cannot be combined" in err
    code, _, err = run_cli(capsys, "simulate", "--labels", labels, "--images", images, "--noise", "model_noise",
                           "--param", "stepz=3", "--out", tmp_path / "typo")
    assert code == 2 and "stepz" in err and "n_train_images" in err
    sim = tmp_path / "sim"
    code, out, err = run_cli(capsys, "simulate", "--labels", labels, "--images", images, "--noise", "model_noise",
                             "--fraction", "0.34", "--seed", "2", "--param", "steps=6", "--param", "patch_size=64",
                             "--param", "depth=2", "--param", "n_train_images=1", "--out", sim)
    assert code == 0, err
    assert "3 label files, 1 corrupted" in out
    record = json.loads((sim / "simulate.json").read_text())
    assert record["images"] == str(images.resolve()) and record["files"] == sorted(stems)
    params = record["params"]
    assert params["protocols"] == ["model_noise"] and len(params["train_names"]) == 1
    assert params["steps"][0]["params"]["steps"] == 6 and params["training"]["steps_done"] == 6
    (chosen,) = params["corrupted_indices"]
    assert params["train_indices"] != [chosen]  # the weak model did not see the image it corrupts
    for index, stem in enumerate(record["files"]):
        clean, _ = io.read_labels(labels / f"{stem}.png")
        noisy, _ = io.read_labels(sim / "labels" / f"{stem}.png")
        mask, _ = io.read_array(sim / "noise_mask" / f"{stem}.tif")
        np.testing.assert_array_equal(mask.astype(bool), noisy != clean)
        assert mask.any() == (index == chosen)


def test_default_method_is_coseg():
    """Co-Seg is the plugin's default method (DESIGN.md), in the CLI as in the viewer."""
    from napari_noisyseg.cli import build_parser
    from napari_noisyseg.methods import DEFAULT_METHOD

    args = build_parser().parse_args(["train", "--images", "i", "--labels", "l", "--out", "o"])
    assert args.method == DEFAULT_METHOD == "coseg"
