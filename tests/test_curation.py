"""The curation model (core.curation): regions, decisions, hand edits, undo, trust, log; its export (core.export).

Headless: no Qt, no napari. Small arrays with known answers, plus crops of the
BBBC039 sample data for the round trips through a real (tiny) training.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_noisyseg.core import io
from napari_noisyseg.core.curation import LOG_COLUMNS, CurationSession, read_decisions
from napari_noisyseg.core.export import export_session, export_stems, export_targets
from napari_noisyseg.pipeline import predict_result


# ----------------------------------------------------------------------------- fixtures


def _stack_case():
    """A 3-slice stack with one square object per slice and known proposals.

    Slice 0: add a 10x10 square at (20:30, 20:30), likelihood 0.9.
    Slice 1: add the same square (likelihood 0.4) and remove the left half of the
             object (5:15, 5:10), likelihood 0.7.
    Slice 2: nothing proposed.
    """
    given = np.zeros((3, 40, 40), np.int32)
    given[:, 5:15, 5:15] = 1
    corrected = given.copy()
    corrected[0, 20:30, 20:30] = 1
    corrected[1, 20:30, 20:30] = 1
    corrected[1, 5:15, 5:10] = 0
    noise = np.zeros(given.shape, np.float32)
    noise[0, 20:30, 20:30] = 0.9
    noise[1, 20:30, 20:30] = 0.4
    noise[1, 5:15, 5:10] = 0.7
    return given, corrected, noise


@pytest.fixture
def session():
    given, corrected, noise = _stack_case()
    s = CurationSession([given], ["stack labels"], ["stack"], min_area=4, user="tester")
    s.set_proposals([noise], [corrected], [np.array([0.9, 0.2, 1.0])], method="test")
    return s


def _by(session, sample, kind):
    (region,) = [r for r in session.regions.values() if r.sample == sample and r.kind == kind]
    return region


# ----------------------------------------------------------------------------- regions


def test_regions_are_per_slice_of_a_stack_with_unique_ids(session):
    regions = sorted(session.regions.values(), key=lambda r: r.id)
    assert [r.id for r in regions] == [1, 2, 3]
    add0 = _by(session, "stack labels[0]", "add")
    add1 = _by(session, "stack labels[1]", "add")
    remove1 = _by(session, "stack labels[1]", "remove")
    assert (add0.area, add1.area, remove1.area) == (100, 100, 50)
    assert add0.bbox == (0, 20, 20, 1, 30, 30)
    assert remove1.bbox == (1, 5, 5, 2, 15, 10)
    assert remove1.centroid == pytest.approx((1.0, 9.5, 7.0))
    assert add0.mean_noise == pytest.approx(0.9) and remove1.mean_noise == pytest.approx(0.7)
    assert add0.reliability == pytest.approx(0.9) and add1.reliability == pytest.approx(0.2)
    # The region map holds the ids on exactly the changed pixels.
    assert np.array_equal(session.region_maps[0] > 0, session.corrected[0] != session.given[0])
    assert session.counts() == {"pending": 3, "accepted": 0, "rejected": 0}


def test_ids_unique_across_sources_and_3d_regions_of_a_volume():
    flat = np.zeros((30, 30), np.int32)
    flat_corr = flat.copy()
    flat_corr[2:8, 2:8] = 1
    volume = np.zeros((4, 20, 20), np.int32)
    volume_corr = volume.copy()
    volume_corr[1:3, 5:10, 5:10] = 2  # one region spanning two slices
    s = CurationSession([flat, volume], ["a", "b"], ["2d", "volume"], min_area=1)
    s.set_proposals([np.full((30, 30), 0.5, np.float32), np.full((4, 20, 20), 0.6, np.float32)],
                    [flat_corr, volume_corr])
    ids = sorted(s.regions)
    assert ids == [1, 2]
    a, b = s.regions[1], s.regions[2]
    assert (a.source, a.source_index, a.kind, a.area) == ("a", 0, "add", 36)
    assert (b.source, b.source_index, b.kind, b.area, b.to_class) == ("b", 1, "add", 50, 2)
    assert b.bbox == (1, 5, 5, 3, 10, 10)


def test_min_area_drops_stray_pixels():
    given = np.zeros((20, 20), np.int32)
    corrected = given.copy()
    corrected[0, 0] = 1
    corrected[10:13, 10:13] = 1
    s = CurationSession([given], ["x"], min_area=4)
    s.set_proposals([np.zeros((20, 20), np.float32)], [corrected])
    assert [r.area for r in s.regions.values()] == [9]


def test_sorting_by_likelihood_and_by_sample_reliability(session):
    by_likelihood = [r.mean_noise for r in session.sorted_regions("likelihood")]
    assert by_likelihood == sorted(by_likelihood, reverse=True)
    by_sample = session.sorted_regions("reliability")
    # Sample 1 (reliability 0.2) first; inside it the more likely region first.
    assert [(r.sample, r.kind) for r in by_sample] == [
        ("stack labels[1]", "remove"), ("stack labels[1]", "add"), ("stack labels[0]", "add")]
    with pytest.raises(ValueError, match="sort by"):
        session.sorted_regions("area")


# ----------------------------------------------------------------------------- decisions


def test_accept_reject_undo_change_exactly_the_region(session):
    given = session.given[0]
    add0 = _by(session, "stack labels[0]", "add")
    remove1 = _by(session, "stack labels[1]", "remove")

    assert session.accept(add0.id) == 100
    expected = given.copy()
    expected[0, 20:30, 20:30] = 1
    assert np.array_equal(session.cleaned[0], expected)
    assert session.accept(add0.id) == 0  # already accepted: no-op, not logged
    assert len(session.log) == 1

    assert session.reject(remove1.id) == 0  # the original stays
    assert np.array_equal(session.cleaned[0], expected)
    assert session.counts() == {"pending": 1, "accepted": 1, "rejected": 1}

    assert session.undo() == [remove1.id]
    assert remove1.status == "pending"
    assert session.undo() == [add0.id]
    assert np.array_equal(session.cleaned[0], given)
    assert session.undo() == []
    assert [(row["decision"], row["region"], row["previous"], row["status"], row["pixels_changed"])
            for row in session.log] == [
        ("accept", add0.id, "pending", "accepted", 100),
        ("reject", remove1.id, "pending", "rejected", 0),
        ("undo", remove1.id, "rejected", "pending", 0),
        ("undo", add0.id, "accepted", "pending", 100),
    ]
    assert all(row["user"] == "tester" and row["time"].endswith("Z") for row in session.log)
    assert all(set(row) == set(LOG_COLUMNS) for row in session.log)


def test_changing_ones_mind_rejects_an_accepted_region(session):
    add0 = _by(session, "stack labels[0]", "add")
    session.accept(add0.id)
    assert session.reject(add0.id) == 100
    assert np.array_equal(session.cleaned[0], session.given[0])
    assert session.undo() == [add0.id]
    assert add0.status == "accepted" and session.cleaned[0][0, 25, 25] == 1


def test_hand_edits_are_never_reverted(session):
    add0 = _by(session, "stack labels[0]", "add")
    cleaned = session.cleaned[0]
    cleaned[2, 0:3, 0:3] = 1          # a stroke far from any region
    cleaned[0, 20:22, 20:30] = 5      # a stroke inside the region, before deciding
    assert session.manual_edits(0).sum() == 9 + 20

    changed = session.accept(add0.id)
    assert changed == 80  # the 20 hand-painted pixels keep their value
    assert (cleaned[0, 20:22, 20:30] == 5).all() and (cleaned[0, 22:30, 20:30] == 1).all()
    assert (cleaned[2, 0:3, 0:3] == 1).all()

    cleaned[0, 29, 20:30] = 0         # repaint part of the accepted change
    session.undo()
    assert (cleaned[0, 22:29, 20:30] == 0).all()   # what the decision wrote is undone...
    assert (cleaned[0, 20:22, 20:30] == 5).all()   # ...hand edits stay, before and after
    assert (cleaned[0, 29, 20:30] == 0).all()
    assert (cleaned[2, 0:3, 0:3] == 1).all()
    assert session.original_unchanged()


def test_bulk_accept_with_preview_count_is_one_undo_step(session):
    assert session.count_above(0.95) == 0
    assert session.count_above(0.6) == 2
    assert session.count_above(0.0) == 3
    ids = session.accept_above(0.6)
    assert sorted(ids) == sorted([_by(session, "stack labels[0]", "add").id,
                                  _by(session, "stack labels[1]", "remove").id])
    assert session.count_above(0.6) == 0
    steps = {row["step"] for row in session.log}
    assert len(steps) == 1 and len(session.log) == 2
    assert sorted(session.undo()) == sorted(ids)
    assert np.array_equal(session.cleaned[0], session.given[0])
    assert session.counts()["pending"] == 3


def test_trust_masks_are_decided_regions_and_hand_edits(session):
    add0 = _by(session, "stack labels[0]", "add")
    remove1 = _by(session, "stack labels[1]", "remove")
    session.accept(add0.id)
    session.reject(remove1.id)
    session.cleaned[0][2, 35:37, 35:37] = 1
    (trust,) = session.trust_masks()
    expected = np.zeros(trust.shape, bool)
    expected[0, 20:30, 20:30] = True
    expected[1, 5:15, 5:10] = True
    expected[2, 35:37, 35:37] = True
    assert np.array_equal(trust, expected)
    assert session.trust_masks(include_manual=False)[0].sum() == 150


def test_original_is_never_modified():
    given, corrected, noise = _stack_case()
    before = given.copy()
    s = CurationSession([given], ["x"], ["stack"])
    s.set_proposals([noise], [corrected])
    s.accept_above(0.0)
    s.cleaned[0][:] = 7
    assert np.array_equal(given, before)
    assert np.array_equal(s.given[0], before)
    assert not s.given[0].flags.writeable
    assert s.original_unchanged()


def test_decisions_apply_to_fortran_ordered_labels():
    # A NIfTI file reads as a Fortran-ordered array; decisions must still reach the cleaned labels.
    given = np.zeros((4, 20, 20), np.int32)
    given[:, 5:10, 5:10] = 1
    corrected = given.copy()
    corrected[:, 12:16, 12:16] = 1
    session = CurationSession([np.asfortranarray(given)], min_area=1)
    session.set_proposals([np.full(given.shape, 0.9, np.float32)], [np.asfortranarray(corrected)])
    (rid,) = session.regions
    assert session.accept(rid) == 64
    np.testing.assert_array_equal(session.cleaned[0], corrected)
    np.testing.assert_array_equal(session.trust_masks()[0], corrected != given)
    session.undo()
    np.testing.assert_array_equal(session.cleaned[0], given)


def test_a_new_round_keeps_decisions_and_proposes_nothing_on_trusted_pixels(session):
    add0 = _by(session, "stack labels[0]", "add")
    remove1 = _by(session, "stack labels[1]", "remove")
    session.accept(add0.id)
    session.reject(remove1.id)
    # A new result that disagrees with every decision and proposes one new change.
    given = session.given[0]
    corrected = given.copy()
    corrected[1, 5:15, 5:10] = 0       # the rejected removal again
    corrected[0, 20:30, 20:30] = 0     # undo the accepted addition
    corrected[2, 30:35, 30:35] = 1     # something new
    new = session.set_proposals([np.full(given.shape, 0.5, np.float32)], [corrected], method="again")
    assert [r.bbox for r in new] == [(2, 30, 30, 3, 35, 35)]
    assert new[0].id == 4 and new[0].round == 2
    assert set(session.regions) == {add0.id, remove1.id, 4}  # the old pending one is gone
    assert add0.status == "accepted" and remove1.status == "rejected"
    assert session.cleaned[0][0, 25, 25] == 1


# ----------------------------------------------------------------------------- log files


def test_log_exports_and_decision_files_replay(session, tmp_path):
    given, corrected, noise = _stack_case()
    add0 = _by(session, "stack labels[0]", "add")
    remove1 = _by(session, "stack labels[1]", "remove")
    session.accept(add0.id)
    session.accept_above(0.0)
    session.undo()
    session.reject(remove1.id)
    (tmp_path / "log.csv").write_text(session.log_csv())
    (tmp_path / "log.json").write_text(session.log_json())
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["decision"] for r in rows] == [row["decision"] for row in session.log]
    document = json.loads((tmp_path / "log.json").read_text())
    assert document["counts"] == session.counts()
    assert document["sources"][0]["sha256"] == session.hashes[0]
    assert len(document["regions"]) == 3

    for name in ("log.csv", "log.json"):
        replay = CurationSession([given], ["stack labels"], ["stack"], min_area=4)
        replay.set_proposals([noise], [corrected], [np.array([0.9, 0.2, 1.0])])
        replay.apply_decisions(tmp_path / name)
        assert np.array_equal(replay.cleaned[0], session.cleaned[0]), name
        assert {r.id: r.status for r in replay.regions.values()} == {
            r.id: r.status for r in session.regions.values()}


def test_simple_decision_file_and_mismatches_are_refused(session, tmp_path):
    add1 = _by(session, "stack labels[1]", "add")
    good = tmp_path / "decisions.csv"
    good.write_text(f"region,decision\n{add1.id},accepted\n")
    assert session.apply_decisions(good)["accept"] == 1
    assert add1.status == "accepted"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"region": 1, "decision": "reject", "area": 999}]))
    before = session.cleaned[0].copy()
    with pytest.raises(ValueError, match="row 1: region 1 has area 100"):
        session.apply_decisions(bad)
    (tmp_path / "unknown.csv").write_text("region,decision\n77,accept\n")
    with pytest.raises(ValueError, match="no region 77"):
        session.apply_decisions(tmp_path / "unknown.csv")
    (tmp_path / "verb.csv").write_text("region,decision\n1,maybe\n")
    with pytest.raises(ValueError, match="unknown decision"):
        session.apply_decisions(tmp_path / "verb.csv")
    assert np.array_equal(session.cleaned[0], before)
    text_file = tmp_path / "decisions.txt"
    text_file.write_text("region,decision\n1,accept\n")
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        read_decisions(text_file)


# ----------------------------------------------------------------------------- export


def test_export_writes_what_the_log_says_and_never_overwrites(session, tmp_path):
    session.accept(_by(session, "stack labels[0]", "add").id)
    session.reject(_by(session, "stack labels[1]", "remove").id)
    out = tmp_path / "out"
    written = export_session(session, out, ".tif")
    names = sorted(p.name for p in written)
    assert names == ["curation_log.csv", "curation_log.json", "stack_labels_cleaned.tif", "stack_labels_noise.tif"]
    cleaned, _ = io.read_labels(out / "stack_labels_cleaned.tif")
    noise, _ = io.read_array(out / "stack_labels_noise.tif")
    assert np.array_equal(cleaned, session.cleaned[0]) and noise.dtype == np.float32
    # Exactly the accepted change, relative to the original.
    diff = np.argwhere(cleaned != session.given[0])
    assert len(diff) == 100 and (diff[:, 0] == 0).all()
    rows = list(csv.DictReader((out / "curation_log.csv").open()))
    assert [(r["decision"], r["status"]) for r in rows] == [("accept", "accepted"), ("reject", "rejected")]

    marker = (out / "curation_log.csv").read_bytes()
    session.accept(_by(session, "stack labels[1]", "add").id)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_session(session, out, ".tif")
    assert (out / "curation_log.csv").read_bytes() == marker  # nothing written
    export_session(session, out, ".tif", overwrite=True)
    assert (out / "curation_log.csv").read_bytes() != marker


def test_exports_are_named_after_the_labels_file_where_there_is_one():
    """napari names a second layer of the same file stem "x [1]": the export keeps the file's
    own stem; drawn labels keep their layer name; clashing file stems fall back to layer names."""
    assert export_stems(["hippocampus_001 [1]", "drawn labels"], ["hippocampus_001", None]) == [
        "hippocampus_001", "drawn_labels"]
    assert export_stems(["a [1]", "a [2]"], ["a", "a"]) == ["a_1", "a_2"]
    assert export_stems(["nuclei labels"]) == ["nuclei_labels"]


def test_export_png_per_slice_and_nifti_with_affine(session, tmp_path):
    targets = export_targets(session, tmp_path, ".png", ("cleaned", "noise"))
    assert [p.name for p in targets["cleaned"]] == ["stack_labels_0.png", "stack_labels_1.png",
                                                    "stack_labels_2.png"]
    assert targets["noise"][0].name == "stack_labels_noise.tif"
    export_session(session, tmp_path / "png", ".png", ("cleaned",))
    slice1, _ = io.read_labels(tmp_path / "png" / "stack_labels_cleaned" / "stack_labels_1.png")
    assert np.array_equal(slice1, session.cleaned[0][1])

    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (10.0, -5.0, 3.0)
    export_session(session, tmp_path / "nii", ".nii.gz", ("cleaned", "noise"),
                   metas=[io.ImageMeta(affine=affine)])
    labels, meta = io.read_labels(tmp_path / "nii" / "stack_labels_cleaned.nii.gz")
    assert np.array_equal(labels, session.cleaned[0])
    np.testing.assert_allclose(meta.affine, affine)
    with pytest.raises(ValueError, match="no trained model"):
        export_session(session, tmp_path / "x", ".npy", ("checkpoint",))


# ----------------------------------------------------------------------------- with a real result


def test_session_from_a_real_training_and_a_loaded_model(bbbc_sample, tmp_path):
    import torch

    from napari_noisyseg.core.checkpoint import load_checkpoint
    from napari_noisyseg.core.dataset import build_dataset
    from napari_noisyseg.methods import TrainConfig, fit

    torch.set_num_threads(1)
    images = [bbbc_sample["image"][i, :96, :128] for i in (0, 1)]
    labels = [bbbc_sample["noisy"][i, :96, :128] for i in (0, 1)]
    dataset = build_dataset(images, labels, ["a", "b"])
    config = TrainConfig(method="baseline", epochs=1, patch_size=64, batch_size=4, width=8, depth=3)
    result = fit(dataset, config)
    session = CurationSession.from_result(dataset, result, min_area=4)
    assert session.names == ["a", "b"] and session.modes == ["2d", "2d"]
    for s in range(2):
        changed = session.corrected[s] != labels[s]
        assert (session.region_maps[s] > 0).sum() <= changed.sum()
        assert np.array_equal(session.noise[s], result.noise[s])
    assert all(0.0 <= r.reliability <= 1.0 for r in session.regions.values())

    out = tmp_path / "export"
    session.accept_above(0.0)
    written = export_session(session, out, ".npy", ("cleaned", "checkpoint"), result=result)
    assert (out / "model.safetensors") in written
    checkpoint = load_checkpoint(out / "model.safetensors")
    loaded = predict_result(checkpoint, dataset, device="cpu")
    for s in range(2):
        np.testing.assert_array_equal(loaded.corrected[s], result.corrected[s])
    # Trusted pixels keep their label and get zero noise in a loaded model's result too.
    trusted = build_dataset(images, labels, ["a", "b"], trust=session.trust_masks())
    again = predict_result(checkpoint, trusted, device="cpu")
    for s in range(2):
        t = trusted.samples[s].trust
        assert (again.noise[s][t] == 0).all() and (again.corrected[s][t] == labels[s][t]).all()


def test_prepared_proposals_skip_regions_decided_or_painted_meanwhile(session):
    """A retrain's regions are found off the GUI thread against snapshots; whatever the
    person decided or painted in the meantime wins over the new proposals."""
    given = session.given[0]
    cleaned_then, protected_then = session.cleaned_labels(), session.trust_masks()
    corrected = given.copy()
    corrected[0, 20:30, 20:30] = 1   # overlaps the pending region 'add' of slice 0
    corrected[2, 0:4, 30:40] = 1     # painted over below before the round is applied
    corrected[2, 30:36, 0:6] = 1     # untouched: stays
    prepared = session.prepare_proposals([np.full(given.shape, 0.5, np.float32)], [corrected],
                                         cleaned=cleaned_then, protected=protected_then)
    assert session.round == 1 and len(session.regions) == 3  # preparing changes nothing
    session.accept(_by(session, "stack labels[0]", "add").id)
    session.cleaned[0][2, 0, 30] = 3
    new = session.apply_proposals(prepared)
    assert [r.bbox for r in new] == [(2, 30, 0, 3, 36, 6)]
    assert session.round == 2
    with pytest.raises(ValueError, match="earlier state"):
        session.apply_proposals(prepared)


def test_focus_point_is_on_a_slice_that_shows_the_region():
    volume = np.zeros((6, 12, 12), np.int32)
    corrected = volume.copy()
    corrected[0, 2:6, 2:6] = 1   # a U-shaped 3D region: its centroid slice (2) holds 1 of its 41 pixels
    corrected[4, 2:6, 2:6] = 1
    corrected[0:5, 2, 8] = 1
    corrected[0, 2, 6:9] = 1
    corrected[4, 2, 6:9] = 1
    s = CurationSession([volume], ["v"], ["volume"], min_area=1)
    s.set_proposals([np.zeros(volume.shape, np.float32)], [corrected])
    (region,) = s.regions.values()
    z, y, x = s.focus_point(region.id)
    assert s.region_mask(region.id)[int(z)].any()
    assert z in (0.0, 4.0)
