"""``noisyseg apply`` and ``noisyseg train --trust``: the review step without a viewer.

A tiny real run (simulated noise on BBBC039 crops, a 2-epoch U-Net) gives real
proposals; decisions are applied to them from a file or by likelihood, the outputs
are checked pixel by pixel against the run's own corrected labels, and a retrain
with the trust masks keeps every decided pixel.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from napari_noisyseg.cli import main
from napari_noisyseg.core import io
from napari_noisyseg.core.proposals import find_regions

from helpers import sample_folders

TRAIN = ["--method", "baseline", "--epochs", "2", "--patch-size", "64", "--width", "8", "--depth", "2",
         "--batch-size", "4", "--seed", "0", "--quiet"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    """simulate -> train on three BBBC039 crops; the run's arrays read back per stem."""
    root = tmp_path_factory.mktemp("apply2d")
    images, clean, stems = sample_folders(root, 3, 128, "labels_clean")
    sim, run = root / "sim", root / "run"
    assert main(["simulate", "--labels", str(clean), "--noise", "erode_dilate", "--seed", "1",
                 "--param", "radius=[2,4]", "--out", str(sim)]) == 0
    assert main(["train", "--images", str(images), "--labels", str(sim / "labels"), *TRAIN, "--out", str(run)]) == 0
    given = {s: io.read_labels(sim / "labels" / f"{s}.png")[0] for s in stems}
    corrected = {s: io.read_array(run / "corrected" / f"{s}.tif")[0] for s in stems}
    noise = {s: io.read_array(run / "noise" / f"{s}.tif")[0] for s in stems}
    with open(run / "proposals.csv", newline="") as handle:
        proposals = list(csv.DictReader(handle))
    assert len(proposals) >= 4  # a 2-epoch network proposes plenty
    return dict(root=root, images=images, clean=clean, labels=sim / "labels", run=run, stems=stems,
                given=given, corrected=corrected, noise=noise, proposals=proposals)


def _region_masks(run_2d) -> dict:
    """Region id -> (stem, bool mask), found the way the run folder's proposals.csv was written."""
    masks, next_id = {}, 1
    for stem in run_2d["stems"]:
        region_map, regions = find_regions(run_2d["given"][stem], run_2d["corrected"][stem], run_2d["noise"][stem],
                                           source=stem, start_id=next_id)
        for region in regions:
            masks[region.id] = (stem, region_map == region.id)
        next_id += len(regions)
    return masks


def _write_decisions(path: Path, rows: list, decisions: dict) -> Path:
    """proposals.csv rows with a decision column added (empty where undecided), as a person would."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) + ["decision"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "decision": decisions.get(int(row["id"]), "")})
    return path


def test_a_decision_file_accepts_and_rejects_exactly_its_regions(run_2d, tmp_path, capsys):
    rows = run_2d["proposals"]
    accepted, rejected = int(rows[0]["id"]), int(rows[1]["id"])
    decisions = _write_decisions(tmp_path / "decisions.csv", rows, {accepted: "accept", rejected: "reject"})
    before = _digests(run_2d["labels"])
    out = tmp_path / "out"
    code, text, err = run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["labels"],
                              "--decisions", decisions, "--out", out)
    assert code == 0, err
    assert f"1 accepted, 1 rejected, 0 undone, {len(rows) - 2} left pending of {len(rows)}" in text
    assert f"--labels {out / 'cleaned'} --trust {out / 'trust'}" in text
    assert _digests(run_2d["labels"]) == before  # the given files are only read
    masks = _region_masks(run_2d)
    for stem in run_2d["stems"]:
        given, corrected = run_2d["given"][stem], run_2d["corrected"][stem]
        cleaned, _ = io.read_labels(out / "cleaned" / f"{stem}.png")  # the given labels' format
        trust, _ = io.read_array(out / "trust" / f"{stem}.tif")
        expected, expected_trust = given.copy(), np.zeros(given.shape, bool)
        for rid in (accepted, rejected):
            source, mask = masks[rid]
            if source == stem:
                expected_trust |= mask
                if rid == accepted:
                    expected[mask] = corrected[mask]
        np.testing.assert_array_equal(cleaned, expected)
        np.testing.assert_array_equal(trust.astype(bool), expected_trust)
        # PNG holds no floats: the noise map is TIFF, as in the viewer's Export.
        np.testing.assert_array_equal(io.read_array(out / "noise" / f"{stem}.tif")[0], run_2d["noise"][stem])
    with open(out / "curation_log.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    assert [(int(r["region"]), r["decision"]) for r in log] == [(accepted, "accept"), (rejected, "reject")]
    document = json.loads((out / "curation_log.json").read_text())
    assert document["counts"]["accepted"] == 1 and document["counts"]["rejected"] == 1
    assert document["method"] == "baseline"


def test_accept_above_zero_takes_every_proposal(run_2d, tmp_path, capsys):
    out = tmp_path / "all"
    code, text, err = run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["labels"],
                              "--accept-above", "0", "--out", out)
    assert code == 0, err
    assert f"{len(run_2d['proposals'])} accepted" in text
    for stem in run_2d["stems"]:
        cleaned, _ = io.read_labels(out / "cleaned" / f"{stem}.png")
        trust, _ = io.read_array(out / "trust" / f"{stem}.tif")
        np.testing.assert_array_equal(cleaned, run_2d["corrected"][stem])
        np.testing.assert_array_equal(trust.astype(bool), run_2d["corrected"][stem] != run_2d["given"][stem])


def test_a_likelihood_threshold_accepts_only_the_regions_above_it(run_2d, tmp_path, capsys):
    likelihoods = sorted(float(r["mean_noise"]) for r in run_2d["proposals"])
    k = len(likelihoods) // 2
    while likelihoods[k - 1] == likelihoods[k]:
        k += 1
    threshold = (likelihoods[k - 1] + likelihoods[k]) / 2  # midway: proposals.csv rounds the likelihoods
    above = sum(value >= threshold for value in likelihoods)
    code, text, err = run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["labels"],
                              "--accept-above", threshold, "--out", tmp_path / "half")
    assert code == 0, err
    assert text.startswith(f"{above} accepted, 0 rejected") and 0 < above < len(likelihoods)


def test_retrain_with_trust_keeps_every_decided_pixel(run_2d, tmp_path, capsys):
    rows = run_2d["proposals"]
    decisions = _write_decisions(tmp_path / "d.csv", rows, {int(r["id"]): ("accept" if i % 2 else "reject")
                                                          for i, r in enumerate(rows[:6])})
    out, run2 = tmp_path / "out", tmp_path / "run2"
    assert run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["labels"], "--decisions", decisions,
                   "--out", out)[0] == 0
    code, text, err = run_cli(capsys, "train", "--images", run_2d["images"], "--labels", out / "cleaned",
                              "--trust", out / "trust", *TRAIN, "--seed", "3", "--out", run2)
    assert code == 0, err
    history = json.loads((run2 / "history.json").read_text())
    trusted_total = 0
    for stem in run_2d["stems"]:
        cleaned, _ = io.read_labels(out / "cleaned" / f"{stem}.png")
        trust = io.read_array(out / "trust" / f"{stem}.tif")[0].astype(bool)
        corrected, _ = io.read_array(run2 / "corrected" / f"{stem}.tif")
        noise, _ = io.read_array(run2 / "noise" / f"{stem}.tif")
        np.testing.assert_array_equal(corrected[trust], cleaned[trust])
        assert (noise[trust] == 0).all()
        trusted_total += int(trust.sum())
    assert trusted_total > 0 and history["trusted_pixels"] == trusted_total
    assert f"{trusted_total} trusted pixels" in text


def test_decisions_for_unknown_regions_write_nothing(run_2d, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("region,decision\n1,accept\n99999,reject\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["labels"],
                           "--decisions", bad, "--out", out)
    assert code == 2 and "bad.csv, row 2" in err and "no region 99999" in err
    assert not out.exists()


def test_decisions_made_for_other_proposals_are_refused(run_2d, tmp_path, capsys):
    row = run_2d["proposals"][0]
    other = tmp_path / "other.csv"
    other.write_text(f"region,area,decision\n{row['id']},{int(row['area']) + 1},accept\n")
    code, _, err = run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["labels"],
                           "--decisions", other, "--out", tmp_path / "out")
    assert code == 2 and "other.csv, row 1" in err and "other proposals" in err


def test_a_file_without_decisions_is_refused(run_2d, tmp_path, capsys):
    code, _, err = run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["labels"],
                           "--decisions", run_2d["run"] / "proposals.csv", "--out", tmp_path / "out")
    assert code == 2 and "proposals.csv: no decisions" in err and "'decision' column" in err
    assert not (tmp_path / "out").exists()


def test_labels_other_than_the_trained_ones_are_refused(run_2d, tmp_path, capsys):
    code, _, err = run_cli(capsys, "apply", "--run", run_2d["run"], "--labels", run_2d["clean"],
                           "--accept-above", "0", "--out", tmp_path / "out")
    assert code == 2 and "not the labels the run" in err and run_2d["stems"][0] in err


def test_a_folder_that_is_not_a_run_is_refused(run_2d, tmp_path, capsys):
    code, _, err = run_cli(capsys, "apply", "--run", run_2d["labels"], "--labels", run_2d["labels"],
                           "--accept-above", "0", "--out", tmp_path / "out")
    assert code == 2 and "is not a run folder" in err and "corrected" in err


def test_trust_masks_must_pair_and_match_the_labels(run_2d, tmp_path, capsys):
    trust = tmp_path / "trust"
    for stem in run_2d["stems"][:-1]:
        io.write_array(trust / f"{stem}.tif", np.zeros((128, 128), np.uint8))
    args = ["train", "--images", run_2d["images"], "--labels", run_2d["labels"], "--trust", trust, *TRAIN,
            "--out", tmp_path / "r"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "do not pair by name" in err and run_2d["stems"][-1] in err
    io.write_array(trust / f"{run_2d['stems'][-1]}.tif", np.zeros((64, 128), np.uint8))
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and f"{run_2d['stems'][-1]}.tif: shape (64, 128)" in err


@pytest.mark.parametrize("mode", ["volume", "stack"])
def test_a_3d_nifti_run_applies_and_keeps_the_affine(tmp_path, capsys, mode):
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus"
    stem = "hippocampus_148"
    image, image_meta = io.read_array(sample / "images" / f"{stem}.nii.gz")
    labels, label_meta = io.read_array(sample / "labels_clean" / f"{stem}.nii.gz")
    crop = slice(8, 22)  # 14 slices (48 x 32) holding both classes
    io.write_array(tmp_path / "images" / f"{stem}.nii.gz", image[crop], image_meta)
    io.write_labels(tmp_path / "labels" / f"{stem}.nii.gz", labels[crop], label_meta)
    run, out = tmp_path / "run", tmp_path / "out"
    code, text, err = run_cli(capsys, "train", "--images", tmp_path / "images", "--labels", tmp_path / "labels",
                              *[a for a in TRAIN if a != "--quiet"], "--epochs", "1", "--mode", mode, "--out", run)
    assert code == 0, err
    assert f"noisyseg apply --run {run} --labels {tmp_path / 'labels'}" in text  # train names the review step
    code, text, err = run_cli(capsys, "apply", "--run", run, "--labels", tmp_path / "labels", "--accept-above", "0",
                              "--out", out)
    assert code == 0, err
    cleaned, meta = io.read_labels(out / "cleaned" / f"{stem}.nii.gz", allow_full=True)  # a 1-epoch network
    corrected, _ = io.read_array(run / "corrected" / f"{stem}.tif")
    np.testing.assert_array_equal(cleaned, corrected)
    np.testing.assert_allclose(meta.affine, label_meta.affine)
    # The noise map as the viewer's Export writes it: NIfTI, the labels' affine, the run's values.
    noise, noise_meta = io.read_array(out / "noise" / f"{stem}.nii.gz")
    np.testing.assert_allclose(noise_meta.affine, label_meta.affine)
    np.testing.assert_array_equal(noise, io.read_array(run / "noise" / f"{stem}.tif")[0])


def test_retrain_from_a_coseg_run_continues_its_networks(run_2d, tmp_path, capsys):
    """``train --from RUN``: Co-Seg warm-starts from RUN's networks, as the viewer's Retrain does."""
    coseg = [*TRAIN[2:], "--method", "coseg", "--param", "epsilon=0.4"]
    first, out = tmp_path / "first", tmp_path / "out"
    assert run_cli(capsys, "train", "--images", run_2d["images"], "--labels", run_2d["labels"], *coseg,
                   "--out", first)[0] == 0
    assert run_cli(capsys, "apply", "--run", first, "--labels", run_2d["labels"], "--accept-above", "0",
                   "--out", out)[0] == 0
    retrain = ["train", "--images", run_2d["images"], "--labels", out / "cleaned", "--trust", out / "trust", *coseg]
    code, text, err = run_cli(capsys, *retrain, "--from", first, "--out", tmp_path / "warm")
    assert code == 0, err
    assert f"starting from the models of {first}" in text
    assert run_cli(capsys, *retrain, "--out", tmp_path / "fresh")[0] == 0
    warm, fresh = (json.loads((tmp_path / run / "history.json").read_text())["history"] for run in ("warm", "fresh"))
    # Warm: no second warm-up epoch (drop rate ε from the first epoch) and the final network continued.
    assert warm["keep_ratio"][0] == pytest.approx(0.6) and fresh["keep_ratio"][0] == pytest.approx(1.0)
    assert warm["stage4_start"] == "previous" and fresh["stage4_start"] != "previous"
    # A method without a warm start trains afresh and says so; a run of another method is refused.
    code, text, err = run_cli(capsys, "train", "--images", run_2d["images"], "--labels", out / "cleaned", *TRAIN,
                              "--from", run_2d["run"], "--out", tmp_path / "baseline")
    assert code == 0 and f"training afresh, not from {run_2d['run']} (baseline has no refit)" in text, err
    # Labels with a class the models lack: trained afresh, and the line printed before training says so.
    for stem in run_2d["stems"]:
        cleaned = io.read_labels(out / "cleaned" / f"{stem}.png", allow_full=True)[0].copy()
        cleaned[:8, :8] = 2
        io.write_labels(tmp_path / "three" / f"{stem}.png", cleaned)
    code, text, err = run_cli(capsys, "train", "--images", run_2d["images"], "--labels", tmp_path / "three", *coseg,
                              "--from", first, "--out", tmp_path / "classes")
    assert code == 0 and f"not from {first} (the labels hold 3 classes, its models 2)" in text, err
    history = json.loads((tmp_path / "classes" / "history.json").read_text())["history"]
    assert history["keep_ratio"][0] == pytest.approx(1.0) and history["stage4_start"] != "previous"
    code, _, err = run_cli(capsys, *retrain, "--from", run_2d["run"], "--out", tmp_path / "other")
    assert code == 2 and f"{run_2d['run']}: trained with method 'baseline', not 'coseg'" in err
    code, _, err = run_cli(capsys, *retrain, "--from", run_2d["labels"], "--out", tmp_path / "none")
    assert code == 2 and "not a run folder of `noisyseg train` (no model.safetensors or history.json)" in err
    assert not (tmp_path / "other").exists() and not (tmp_path / "none").exists()
