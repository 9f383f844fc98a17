"""Method comparison: agreement maths, the curation core's agreement, ``noisyseg compare``, the widget.

The agreement functions run on small constructed arrays with known answers.
The command line and the widget train tiny networks (1 epoch, width 8, depth 2,
64-pixel patches) on crops of the repository's BBBC039 sample data.
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
from napari_noisyseg.core.agreement import (
    MethodAgreement,
    agreement_maps,
    dice_iou,
    flag_agreement,
    pairwise_agreement,
    region_agreement,
    region_flagged_by,
    spearman,
)
from napari_noisyseg.core.curation import CurationSession
from napari_noisyseg.core.proposals import CSV_COLUMNS, find_regions, regions_to_csv

from helpers import sample_folders

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
TINY = ["--epochs", "1", "--patch-size", "64", "--width", "8", "--depth", "2", "--batch-size", "4",
        "--seed", "0", "--device", "cpu", "--quiet"]


# ----------------------------------------------------------------------------- agreement maths


def test_flag_agreement_counts_the_methods_at_or_above_the_threshold():
    a = np.array([[0.9, 0.5], [0.1, np.nan]], np.float32)
    b = np.array([[0.8, 0.49], [0.6, 0.7]], np.float32)
    c = np.array([[0.2, 0.5], [0.0, 1.0]], np.float32)
    agreement = flag_agreement([a, b, c])
    assert agreement.dtype == np.float32 and agreement.shape == (2, 2)
    # 0.5 counts (>=), NaN never flags.
    np.testing.assert_allclose(agreement, [[2 / 3, 2 / 3], [1 / 3, 2 / 3]], rtol=1e-6)
    np.testing.assert_allclose(flag_agreement([a, b, c], threshold=0.85), [[1 / 3, 0], [0, 1 / 3]], rtol=1e-6)
    np.testing.assert_array_equal(flag_agreement([a]), [[1, 1], [0, 0]])
    # Per source from {method: [maps]}.
    maps = agreement_maps({"x": [a, a[:1]], "y": [b, b[:1]]})
    np.testing.assert_allclose(maps[0], [[1, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(maps[1], [[1, 0.5]])


def test_mismatched_shapes_are_refused_naming_the_method():
    good = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="confident.*differs from coseg"):
        flag_agreement([good, np.zeros((4, 5))], names=["coseg", "confident"])
    with pytest.raises(ValueError, match="cleansing: noise map of source 1"):
        pairwise_agreement({"coseg": [good, good], "cleansing": [good, np.zeros((3, 3))]})
    with pytest.raises(ValueError, match="cleansing: 1 noise maps, but coseg has 2"):
        agreement_maps({"coseg": [good, good], "cleansing": [good]})
    with pytest.raises(ValueError, match="threshold"):
        flag_agreement([good], threshold=1.5)
    with pytest.raises(ValueError, match="at least one"):
        flag_agreement([])


def test_pairwise_dice_iou_and_rank_correlation():
    a = np.zeros((4, 4), np.float32)
    b = np.zeros((4, 4), np.float32)
    a[0, :4] = 0.9  # a flags 4 pixels
    b[0, :2] = 0.8  # b flags 2 of them ...
    b[1, :2] = 0.7  # ... and 2 others
    ramp = np.arange(16, dtype=np.float32).reshape(4, 4) / 15
    table = pairwise_agreement({"a": [a], "b": [b], "up": [ramp], "down": [1 - ramp], "flat": [np.zeros((4, 4))]})
    assert list(table)[:4] == [("a", "b"), ("a", "up"), ("a", "down"), ("a", "flat")]
    assert table[("a", "b")]["dice"] == pytest.approx(0.5)  # 2*2 / (4+4)
    assert table[("a", "b")]["iou"] == pytest.approx(2 / 6)
    assert table[("up", "down")]["spearman"] == pytest.approx(-1.0)
    assert table[("up", "down")]["n_ranked"] == 16
    assert table[("a", "flat")]["spearman"] is None  # a constant map has no ranking
    assert table[("a", "flat")]["dice"] == 0.0  # a flags, flat does not
    # Both flag nothing: they agree.
    assert dice_iou(np.zeros(5, bool), np.zeros(5, bool)) == (1.0, 1.0)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    # Ties take average ranks: ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4) correlate 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / np.sqrt(10))
    from scipy.stats import spearmanr

    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(spearmanr([1, 2, 2, 3], [1, 3, 2, 4])[0])


def test_rank_correlation_subsample_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.random((200, 200)).astype(np.float32)
    y = (x + 0.3 * rng.random((200, 200))).astype(np.float32)
    first = pairwise_agreement({"x": [x], "y": [y]}, max_pixels=5000, seed=3)[("x", "y")]
    again = pairwise_agreement({"x": [x], "y": [y]}, max_pixels=5000, seed=3)[("x", "y")]
    full = pairwise_agreement({"x": [x], "y": [y]}, max_pixels=10**6)[("x", "y")]
    assert first == again and first["n_ranked"] == 5000 and full["n_ranked"] == 40000
    assert abs(first["spearman"] - full["spearman"]) < 0.03 and full["spearman"] > 0.9


def test_region_agreement_and_flagged_by():
    region_map = np.zeros((4, 6), np.int32)
    region_map[0, 0:2] = 1
    region_map[2:4, 3:6] = 7
    agreement = np.zeros((4, 6), np.float32)
    agreement[0, 0] = 1.0
    agreement[0, 1] = 0.5
    agreement[2:4, 3:6] = 0.25
    assert region_agreement(region_map, agreement) == {1: pytest.approx(0.75), 7: pytest.approx(0.25)}
    noise_a = np.where(region_map == 1, 0.9, 0.2).astype(np.float32)
    noise_b = np.where(region_map > 0, 0.6, 0.0).astype(np.float32)
    assert region_flagged_by(region_map, {"a": noise_a, "b": noise_b}) == {1: ("a", "b"), 7: ("b",)}
    assert region_flagged_by(region_map, {"a": noise_a, "b": noise_b}, threshold=0.7) == {1: ("a",), 7: ()}
    with pytest.raises(ValueError, match="b: noise map"):
        region_flagged_by(region_map, {"b": noise_b[:2]})
    assert region_agreement(np.zeros((3, 3), np.int32), np.ones((3, 3))) == {}


def test_proposals_csv_takes_extra_columns():
    given = np.zeros((8, 8), np.int32)
    corrected = given.copy()
    corrected[1:3, 1:3] = 1
    _, regions = find_regions(given, corrected)
    text = regions_to_csv(regions, {"agreement": {1: 0.123456}, "flagged_by": {1: "coseg confident"}})
    rows = list(csv.DictReader(text.splitlines()))
    assert text.splitlines()[0].split(",") == [*CSV_COLUMNS, "agreement", "flagged_by"]
    assert rows[0]["agreement"] == "0.1235" and rows[0]["flagged_by"] == "coseg confident"
    with pytest.raises(ValueError, match="replace standard"):
        regions_to_csv(regions, {"area": {}})


# ----------------------------------------------------------------------------- curation core


def _two_region_case():
    """One 2D source, two proposed additions: region A (left) and region B (right)."""
    given = np.zeros((20, 30), np.int32)
    corrected = given.copy()
    corrected[2:6, 2:6] = 1  # A
    corrected[10:16, 20:26] = 1  # B
    noise = np.zeros(given.shape, np.float32)
    noise[2:6, 2:6] = 0.9  # the reference says A is most likely wrong ...
    noise[10:16, 20:26] = 0.6
    other = np.zeros(given.shape, np.float32)
    other[10:16, 20:26] = 0.8  # ... but only B is flagged by the other method too
    other[2:6, 2:6] = 0.1
    agreement = MethodAgreement.from_noise({"ref": [noise], "other": [other]})
    return given, corrected, noise, agreement


def test_session_regions_carry_agreement_and_sort_by_it():
    given, corrected, noise, agreement = _two_region_case()
    session = CurationSession([given], ["labels"], min_area=4, user="tester")
    session.set_proposals([noise], [corrected], method="ref", agreement=agreement)
    assert session.has_agreement
    by_likelihood = session.sorted_regions("likelihood")
    by_agreement = session.sorted_regions("agreement")
    a, b = by_likelihood
    assert (a.agreement, b.agreement) == (pytest.approx(0.5), pytest.approx(1.0))
    assert a.flagged_by == ("ref",) and b.flagged_by == ("ref", "other")
    assert [r.id for r in by_agreement] == [b.id, a.id]
    row = b.to_row()
    assert row["agreement"] == 1.0 and row["flagged_by"] == "ref other"
    assert json.loads(session.log_json())["comparison"] == {"methods": ["ref", "other"], "threshold": 0.5}
    # A decision keeps the agreement; a later round without a comparison drops it.
    session.accept(b.id)
    session.set_proposals([noise], [corrected], method="ref")
    assert not session.has_agreement
    assert session.regions[b.id].agreement == pytest.approx(1.0)
    assert all(r.agreement is None for r in session.regions.values() if r.status == "pending")
    with pytest.raises(ValueError, match="compare several methods first"):
        session.sorted_regions("agreement")
    # Attaching a comparison afterwards annotates every region.
    session.set_agreement(agreement)
    assert session.has_agreement and session.sorted_regions("agreement")[0].id == b.id
    session.set_agreement(None)
    assert not session.has_agreement and all(r.agreement is None for r in session.regions.values())


def test_session_refuses_a_comparison_of_other_sources():
    given, corrected, noise, agreement = _two_region_case()
    session = CurationSession([given, given], ["one", "two"], user="tester")
    with pytest.raises(ValueError, match="1 sources, this session 2"):
        session.set_proposals([noise, noise], [corrected, corrected], agreement=agreement)
    small = MethodAgreement.from_noise({"ref": [noise[:10]], "other": [noise[:10]]})
    single = CurationSession([given], ["one"], user="tester")
    with pytest.raises(ValueError, match="differ in shape"):
        single.set_proposals([noise], [corrected], agreement=small)


# ----------------------------------------------------------------------------- pipeline


def test_method_list_and_parameters_are_checked():
    from napari_noisyseg.pipeline import resolve_methods, split_method_params

    assert resolve_methods(" coseg, confident ") == ["coseg", "confident"]
    with pytest.raises(ValueError, match="unknown method 'nope'; known: adele, baseline"):
        resolve_methods(["coseg", "nope"])
    with pytest.raises(ValueError, match="at least two"):
        resolve_methods("coseg")
    with pytest.raises(ValueError, match="coseg given twice"):
        resolve_methods("coseg,coseg")
    from napari_noisyseg.methods import get_method

    key = next(iter(get_method("coseg").DEFAULTS))
    params = split_method_params({f"coseg.{key}": 1}, ["coseg", "baseline"])
    assert params == {"coseg": {key: 1}, "baseline": {}}
    with pytest.raises(ValueError, match="not one of the compared methods"):
        split_method_params({f"adele.{key}": 1}, ["coseg", "baseline"])
    with pytest.raises(ValueError, match="no compared method has a parameter 'bogus'"):
        split_method_params({"bogus": 1}, ["coseg", "baseline"])


def _crop_dataset(size=64):
    from napari_noisyseg.core.dataset import build_dataset

    image, _ = io.read_array(next(iter(io.list_files(SAMPLE / "bbbc039" / "images"))))
    stem = io.split_stem(io.list_files(SAMPLE / "bbbc039" / "images")[0])[0]
    labels, _ = io.read_labels(SAMPLE / "bbbc039" / "labels_noisy" / f"{stem}.png")
    crop = (slice(100, 100 + size), slice(100, 100 + size))
    return build_dataset([image[crop]], [labels[crop]], ["crop"])


def test_compare_methods_stops_between_and_inside_methods():
    from napari_noisyseg.engine.events import Progress, StateEvent
    from napari_noisyseg.pipeline import compare_methods

    dataset = _crop_dataset()
    seen = []

    def listen(event):
        if isinstance(event, StateEvent) and event.state == "comparing":
            seen.append(event.message)
            if len(seen) == 2:
                progress.request_stop()  # while the second method starts: it stops within a step

    progress = Progress(listen)
    kwargs = dict(epochs=1, patch_size=64, width=4, depth=2, batch_size=2, device="cpu", seed=0)
    comparison = compare_methods(dataset, ["baseline", "confident", "coseg"], kwargs, progress)
    assert seen == ["Method 1/3: baseline (1 epoch).", "Method 2/3: confident (1 epoch)."]
    assert comparison.methods == ["baseline", "confident"] and comparison.not_run == ["coseg"]
    assert comparison.stopped and comparison.runs["confident"].stopped and not comparison.runs["baseline"].stopped
    assert comparison.reference == "baseline" and comparison.reference_result.method == "baseline"
    assert comparison.agreement.maps[0].shape == (64, 64)
    with pytest.raises(ValueError, match="may not set 'method'"):
        compare_methods(dataset, ["baseline", "coseg"], {"method": "coseg"})
    with pytest.raises(ValueError, match="Unknown parameters for method 'baseline'"):
        compare_methods(dataset, ["baseline", "coseg"], kwargs, params={"baseline": {"bogus": 1}})


# ----------------------------------------------------------------------------- command line


def _bbbc_folder(root: Path, count: int = 2, size: int = 96) -> tuple[Path, Path, list[str]]:
    """Crops with the sample's noisy labels (see helpers.sample_folders)."""
    return sample_folders(root, count, size, "labels_noisy")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    images, labels, stems = _bbbc_folder(root)
    out = root / "out"
    code = main(["compare", "--images", str(images), "--labels", str(labels), "--methods", "baseline,confident",
                 *TINY, "--out", str(out)])
    return dict(root=root, images=images, labels=labels, stems=stems, out=out, code=code)


def test_compare_writes_the_documented_layout(compared):
    out, stems = compared["out"], compared["stems"]
    assert compared["code"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["agreement", "baseline", "comparison.json", "confident",
                                                     "proposals.csv"]
    noise = {}
    for method in ("baseline", "confident"):
        assert sorted(p.name for p in (out / method).iterdir()) == ["corrected", "history.json", "noise"]
        for stem in stems:
            given, _ = io.read_labels(compared["labels"] / f"{stem}.png")
            values, _ = io.read_array(out / method / "noise" / f"{stem}.tif")
            corrected, _ = io.read_array(out / method / "corrected" / f"{stem}.tif")
            assert values.dtype == np.float32 and values.shape == given.shape == (96, 96)
            assert 0.0 <= values.min() and values.max() <= 1.0
            assert np.issubdtype(corrected.dtype, np.integer) and corrected.shape == given.shape
            noise.setdefault(method, []).append(values)
        history = json.loads((out / method / "history.json").read_text())
        assert history["method"] == method and history["config"]["epochs"] == 1 and history["config"]["width"] == 8
    for s, stem in enumerate(stems):
        agreement, _ = io.read_array(out / "agreement" / f"{stem}.tif")
        assert agreement.dtype == np.float32 and agreement.shape == (96, 96)
        assert set(np.unique(agreement)) <= {0.0, 0.5, 1.0}
        np.testing.assert_array_equal(agreement, flag_agreement([noise["baseline"][s], noise["confident"][s]]))


def test_comparison_json_and_proposals(compared):
    out, stems = compared["out"], compared["stems"]
    document = json.loads((out / "comparison.json").read_text())
    assert document["format"] == "napari-noisyseg-comparison"
    assert document["methods"] == document["requested"] == ["baseline", "confident"]
    assert document["reference"] == "baseline" and document["not_run"] == [] and document["stopped"] is False
    assert document["threshold"] == 0.5 and document["files"] == stems
    assert document["config"]["epochs"] == 1 and document["config"]["seed"] == 0 and "method" not in document["config"]
    noise = {m: [io.read_array(out / m / "noise" / f"{s}.tif")[0] for s in stems] for m in ("baseline", "confident")}
    for method, row in document["per_method"].items():
        assert row["wall_s"] > 0
        everything = np.concatenate([n.ravel() for n in noise[method]])
        assert row["mean_noise"] == pytest.approx(float(everything.mean()), abs=1e-5)
        assert row["flagged_fraction"] == pytest.approx(float((everything >= 0.5).mean()))
        given = [io.read_labels(compared["labels"] / f"{s}.png")[0] for s in stems]
        corrected = [io.read_array(out / method / "corrected" / f"{s}.tif")[0] for s in stems]
        assert row["n_proposals"] == sum(len(find_regions(g, c)[1]) for g, c in zip(given, corrected))
    (pair,) = document["pairwise"]
    expected = pairwise_agreement(noise)[("baseline", "confident")]
    assert (pair["a"], pair["b"]) == ("baseline", "confident")
    assert pair["dice"] == pytest.approx(expected["dice"]) and pair["iou"] == pytest.approx(expected["iou"])
    assert pair["spearman"] == pytest.approx(expected["spearman"])
    assert document["per_method"]["baseline"]["dice_with_others"] == pytest.approx(pair["dice"])

    with open(out / "proposals.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
        handle.seek(0)
        header = handle.readline().strip().split(",")
    assert header == [*CSV_COLUMNS, "agreement", "flagged_by"]
    assert len(rows) == document["n_proposals"] == document["per_method"]["baseline"]["n_proposals"] > 0
    agreement = {s: io.read_array(out / "agreement" / f"{s}.tif")[0] for s in stems}
    offset = 0
    for s in stems:  # recompute each region's agreement from the files
        given, _ = io.read_labels(compared["labels"] / f"{s}.png")
        corrected, _ = io.read_array(out / "baseline" / "corrected" / f"{s}.tif")
        region_map, regions = find_regions(given, corrected, noise["baseline"][stems.index(s)], source=s,
                                           start_id=offset + 1)
        means = region_agreement(region_map, agreement[s])
        for region in regions:
            row = rows[region.id - 1]
            assert row["source"] == s and float(row["agreement"]) == pytest.approx(means[region.id], abs=1e-4)
            assert set(row["flagged_by"].split()) <= {"baseline", "confident"}
            if float(row["mean_noise"]) >= 0.5:
                assert "baseline" in row["flagged_by"].split()
        offset += len(regions)
    assert offset == len(rows)


def test_compare_prints_a_table(compared, capsys, tmp_path):
    code = main(["compare", "--images", str(compared["images"]), "--labels", str(compared["labels"]),
                 "--methods", "confident,baseline", *TINY, "--out", str(tmp_path / "again")])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.split() == ["method", "wall", "s", "mean", "noise", "flagged", "%", "proposals", "agreement"]
    assert any(line.split()[0] == "confident" and len(line.split()) == 6 for line in lines)
    assert any(line.startswith("confident vs baseline") for line in lines)
    assert "proposed regions of confident" in out


def test_compare_errors_exit_2(compared, capsys, tmp_path):
    base = ["compare", "--images", str(compared["images"]), "--labels", str(compared["labels"]), *TINY]
    code = main([*base, "--methods", "coseg,bogus", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method 'bogus'" in err and "known: adele, baseline, clcs" in err
    assert not (tmp_path / "x").exists()
    code = main([*base, "--methods", "baseline,confident", "--out", str(compared["out"])])
    err = capsys.readouterr().err
    assert code == 2 and "not empty" in err and "--overwrite" in err
    code = main([*base, "--methods", "baseline,confident", "--param", "bogus=1", "--out", str(tmp_path / "y")])
    assert code == 2 and "bogus" in capsys.readouterr().err


def test_compare_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--images", "--labels", "--methods", "--epochs", "--minutes", "--threshold", "--seed",
                   "--patch-size", "--width", "--depth", "--param", "--out", "--overwrite", "comparison.json",
                   "agreement"):
        assert option in text, option
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "compare" in capsys.readouterr().out


# ----------------------------------------------------------------------------- viewer


def _hash(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_compare_widget_adds_layers_and_the_review_sorts_by_agreement(make_napari_viewer, qtbot, bbbc_sample):
    import torch

    from napari_noisyseg.widgets.compare import CompareWidget
    from napari_noisyseg.widgets.review import AGREEMENT_COLUMN, NO_VALUE

    torch.set_num_threads(1)
    viewer = make_napari_viewer(show=True)
    crop = (slice(0, 2), slice(100, 164), slice(100, 196))
    viewer.add_image(bbbc_sample["image"][crop], name="crop image")
    original = viewer.add_labels(bbbc_sample["noisy"][crop].copy(), name="crop labels", metadata={"sample_axis": 0})
    before = _hash(original.data)
    _, review = viewer.window.add_plugin_dock_widget("napari-noisyseg", "Review")
    _, compare = viewer.window.add_plugin_dock_widget("napari-noisyseg", "Compare methods")
    assert isinstance(compare, CompareWidget) and compare.state is review.state
    assert review.sort.findData("agreement") < 0  # no comparison yet: not offered

    compare.set_pair("crop image", "crop labels")
    compare.set_methods(["baseline", "confident"])
    assert compare.methods() == ["baseline", "confident"]
    compare.epochs.setValue(1)
    compare.patch_size.setValue(64)
    compare.width.setValue(8)
    compare.depth.setValue(2)
    compare.batch_size.setValue(4)
    compare.device.setCurrentIndex(compare.device.findData("cpu"))
    assert compare.compare_button.isEnabled()
    from qtpy.QtCore import Qt

    qtbot.mouseClick(compare.compare_button, Qt.MouseButton.LeftButton)
    job = compare.state.job
    assert job is not None, compare.status.text()
    qtbot.waitUntil(lambda: not compare.state.busy and compare.job is None, timeout=120_000)
    assert job.outcome.error is None, job.outcome.error

    shape = original.data.shape
    layers = {name: viewer.layers[name] for name in
              ("crop labels noise [baseline]", "crop labels noise [confident]", "crop labels agreement")}
    for layer in layers.values():
        assert layer.data.shape == shape and layer.data.dtype == np.float32
        assert layer.blending == "additive" and tuple(layer.contrast_limits) == (0.0, 1.0)
    assert layers["crop labels noise [baseline]"].colormap.name == "magma"
    assert layers["crop labels noise [baseline]"].visible and not layers["crop labels noise [confident]"].visible
    np.testing.assert_array_equal(
        layers["crop labels agreement"].data,
        flag_agreement([layers["crop labels noise [baseline]"].data, layers["crop labels noise [confident]"].data]))
    assert "crop image" in [compare.pair.image.itemText(i) for i in range(compare.pair.image.count())]
    assert all(name not in [compare.pair.image.itemText(i) for i in range(compare.pair.image.count())]
               for name in layers)  # overlays are not offered as training images
    assert compare.results.rowCount() == 2 and compare.results.item(0, 0).text() == "baseline"
    assert compare.progress.format().startswith("2/2")  # the widget heard both methods start

    # The review lists the first method's proposals with their agreement, and sorts by it.
    session = compare.state.session
    assert session.has_agreement and session.method == "baseline"
    assert review.table.rowCount() == len(session.regions) > 0
    review.sort_by("agreement")
    values = [review.table.item(r, AGREEMENT_COLUMN).text() for r in range(review.table.rowCount())]
    assert NO_VALUE not in values
    assert [float(v) for v in values] == sorted((float(v) for v in values), reverse=True)
    assert review._order == [r.id for r in session.sorted_regions("agreement")]
    assert _hash(original.data) == before and session.original_unchanged()

    # Another method's proposals, without training again: a new round, earlier decisions kept.
    accepted = review._order[0]
    review.select(accepted)
    review.decide("accept")
    assert not compare.review_button.isEnabled()  # nothing selected
    compare.results.selectRow(0)
    assert not compare.review_button.isEnabled()  # baseline's are the ones under review
    compare.results.selectRow(1)
    assert compare.selected_method() == "confident" and compare.review_button.isEnabled()
    qtbot.mouseClick(compare.review_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not compare.state.busy and compare.job is None, timeout=60_000)
    assert compare.state.session is session and session.method == "confident" and session.round == 2
    assert compare.state.result is compare.comparison.runs["confident"].result
    assert session.regions[accepted].status == "accepted"
    assert all(r.agreement is not None for r in session.regions.values() if r.round == 2)
    assert compare.status.text().startswith("Reviewing confident's proposals")
    np.testing.assert_array_equal(viewer.layers["crop labels noise"].data, session.noise[0])
    np.testing.assert_allclose(session.noise[0], compare.comparison.noise["confident"][0])
    assert compare.results.item(1, 0).font().bold() and not compare.results.item(0, 0).font().bold()
    assert not compare.review_button.isEnabled()
    assert _hash(original.data) == before and session.original_unchanged()
