"""The quality benchmark's core on a minuscule in-repo setting (sample_data/, 1 epoch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402

SAMPLE_SPEC = quality.DatasetSpec("bbbc039", "bbbc039", "images", "labels_clean", "2d")
TINY_PROFILE = {
    "bbbc039": quality.DatasetProfile(
        n_train=2, n_test=1, train_crop=(128, 128),
        train=dict(epochs=1, patch_size=64, batch_size=4, width=8, depth=3),
    )
}
TINY_SETTING = quality.Setting("tiny/erode_dilate", "bbbc039", "erode_dilate", 1.0, 1.0, {"radius": (2, 5)},
                               note="test")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    pytest.importorskip("cleanlab")
    if not (ROOT / "sample_data" / "bbbc039" / "labels_clean").is_dir():
        pytest.fail("sample_data/bbbc039 is missing; run `python sample_data/make_sample_data.py`")
    lines = []
    result = quality.run_benchmark(
        ROOT / "sample_data", settings=[TINY_SETTING], methods=["baseline", "confident"], seeds=[0],
        profile=TINY_PROFILE, datasets={"bbbc039": SAMPLE_SPEC}, log=lines.append,
    )
    out = tmp_path_factory.mktemp("results")
    paths = quality.write_report(result, out, "quality")
    return result, paths


def test_rows_cover_floor_ceiling_prior_and_peer(report):
    result, _ = report
    rows = {row["row"]: row for row in result["rows"]}
    assert set(rows) == {quality.CEILING_ROW, "baseline", "confident", quality.PRIOR_ROW, quality.PEER_ROW}
    assert rows[quality.CEILING_ROW]["kind"] == "ceiling" and rows["baseline"]["kind"] == "floor"
    for name in (quality.CEILING_ROW, "baseline", "confident"):
        test = rows[name]["test"]
        assert 0.0 <= test["dice"] <= 1.0 and len(test["dice_per_class"]) == 2
    for name in ("baseline", "confident", quality.PRIOR_ROW, quality.PEER_ROW):
        noise = rows[name]["noise"]
        assert 0.0 <= noise["auroc"] <= 1.0 and 0.0 < noise["ap"] <= 1.0
    # The boundary prior alone already finds erode/dilate noise far above chance.
    assert rows[quality.PRIOR_ROW]["noise"]["auroc"] > 0.7
    assert isinstance(rows["confident"]["beats_prior"], bool)
    assert rows["baseline"]["gap_recovered"] in (0.0, None)
    given = rows["confident"]["correction"]["dice_given"]
    assert 0.5 < given < 1.0 and given == rows["baseline"]["correction"]["dice_given"]
    assert rows["confident"]["history"]["folds"] == 2  # only two train images: K falls to 2


def test_summary_json_and_markdown(report):
    result, (json_path, md_path) = report
    saved = json.loads(json_path.read_text())
    assert saved["splits"]["bbbc039"]["test"] == ["IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB"]
    assert set(saved["configs"]["bbbc039"]) == {"baseline", "confident"}
    assert saved["configs"]["bbbc039"]["confident"]["params"]["folds"] == 3
    summary = {s["row"]: s for s in saved["summary"]}
    assert summary["confident"]["metrics"]["ap"]["n"] == 1
    assert 0.0 < saved["noise"][0]["noise_fraction"] < 0.5
    table = md_path.read_text()
    assert "## tiny/erode_dilate" in table and "| baseline (floor) |" in table and "| boundary prior |" in table


def test_merge_combines_seeds_and_later_rows_win(report, tmp_path):
    from benchmarks import merge_quality

    result, (json_path, _) = report
    saved = json.loads(json_path.read_text())
    # A second run: seed 1 of the same setting, with known test Dice values.
    other = json.loads(json.dumps(saved))
    for row in other["rows"]:
        row["seed"] = 1
        if row.get("test"):
            row["test"]["dice"] = 0.5
    for entry in other["noise"]:
        entry["seed"] = 1
    # A rerun of one method for seed 0 (after a change): its row replaces the first run's.
    rerun = json.loads(json.dumps(saved))
    rerun["rows"] = [row for row in rerun["rows"] if row["row"] == "confident"]
    rerun["rows"][0]["test"]["dice"] = 0.9
    merged = merge_quality.merge_reports([saved, other, rerun])
    assert merged["seeds"] == [0, 1] and len(merged["noise"]) == 2
    summary = {s["row"]: s["metrics"] for s in merged["summary"]}
    assert summary["confident"]["test_dice"]["n"] == 2
    assert summary["confident"]["test_dice"]["mean"] == pytest.approx((0.9 + 0.5) / 2)
    floor = {row["row"]: row for row in saved["rows"]}["baseline"]["test"]["dice"]
    assert summary["baseline"]["test_dice"]["mean"] == pytest.approx((floor + 0.5) / 2)
    assert [source["seeds"] for source in merged["sources"]] == [[0], [0], [0]]
    # The command line writes the same tables quality.py writes.
    inputs = []
    for index, data in enumerate((saved, other, rerun)):
        inputs.append(tmp_path / f"run{index}.json")
        inputs[-1].write_text(json.dumps(data))
    code = merge_quality.main([*map(str, inputs), "--name", "merged", "--out", str(tmp_path)])
    assert code == 0
    table = (tmp_path / "merged.md").read_text()
    assert "seeds 0, 1" in table and "| confident | 0.700 ± 0.283 |" in table
    assert merge_quality.main([str(inputs[0]), "--name", "x", "--out", str(tmp_path), "--settings", "nope"]) == 2
    # A merged table can be merged again; a run with another epoch budget cannot join it.
    again = merge_quality.merge_reports([json.loads((tmp_path / "merged.json").read_text()), rerun])
    assert again["summary"] == merged["summary"] and again["budgets"] == merged["budgets"]
    longer = json.loads(json.dumps(rerun))
    for by_method in longer["configs"].values():
        for config in by_method.values():
            config["epochs"] = 3 * config["epochs"]
    with pytest.raises(ValueError, match="different training budgets"):
        merge_quality.merge_reports([saved, longer])
    # Nor one with another learning-rate schedule (runs from before it existed were constant).
    cosine = json.loads(json.dumps(rerun))
    for by_method in cosine["configs"].values():
        for config in by_method.values():
            config["lr_schedule"] = "cosine"
    assert "cosine learning rate" in quality.markdown(cosine) and "learning rate" not in quality.markdown(rerun)
    with pytest.raises(ValueError, match="different training budgets.*cosine"):
        merge_quality.merge_reports([saved, cosine])
    for config in (c for by_method in saved["configs"].values() for c in by_method.values()):
        config.pop("lr_schedule", None)
    assert merge_quality.merge_reports([saved, rerun])["budgets"] == merged["budgets"]
    # The same seed on another kind of CPU: its floor differs, so its methods were judged
    # against another floor. The merge stops unless told, then records the difference.
    elsewhere = json.loads(json.dumps(rerun))
    elsewhere["rows"] = [dict(row, test=dict(row["test"], dice=row["test"]["dice"] + 0.001))
                         for row in saved["rows"] if row["kind"] == "floor"]
    elsewhere["machine"] = {"cpu_model": "Another CPU"}
    with pytest.raises(ValueError, match="floor/ceiling row.*differ.*Another CPU"):
        merge_quality.merge_reports([saved, elsewhere])
    drifted = merge_quality.merge_reports([saved, elsewhere], allow_reference_drift=True)
    [entry] = drifted["reference_drift"]
    assert (entry["row"], entry["seed"]) == ("baseline", 0)
    assert entry["later"] - entry["earlier"] == pytest.approx(0.001)
    assert drifted["sources"][1]["cpu_model"] == "Another CPU"
    assert "differed between the merged runs" in quality.markdown(drifted)
    assert merge_quality.merge_reports([saved, saved])["reference_drift"] == []
    inputs.append(tmp_path / "elsewhere.json")
    inputs[-1].write_text(json.dumps(elsewhere))
    assert merge_quality.main([str(inputs[0]), str(inputs[-1]), "--name", "y", "--out", str(tmp_path)]) == 2
    assert merge_quality.main([str(inputs[0]), str(inputs[-1]), "--name", "y", "--out", str(tmp_path),
                               "--allow-reference-drift"]) == 0


def test_split_is_fixed_by_sorted_stem():
    stems = [f"s{i:02d}" for i in range(50)]
    train, test = quality.split_stems(stems[::-1], 40, 10)
    assert test == [f"s{i:02d}" for i in (0, 5, 11, 16, 22, 27, 33, 38, 44, 49)]
    assert len(train) == 40 and not set(train) & set(test)
    with pytest.raises(quality.DataError):
        quality.split_stems(stems, 45, 10)
    # Fewer training images (--n-train) leave the test split as it was.
    fewer = quality.with_n_train(quality.PROFILES["full"]["hippocampus"], 8)
    assert fewer.n_train == 8 and fewer.train == quality.PROFILES["full"]["hippocampus"].train
    assert quality.split_stems(stems, fewer.n_train, 10)[1] == test
    with pytest.raises(ValueError, match="n_train"):
        quality.with_n_train(fewer, 0)


def test_missing_data_fails_clearly(tmp_path, capsys):
    code = quality.main(["--data", str(tmp_path / "nowhere"), "--quick", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "nowhere not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_settings_are_selectable_by_dataset():
    chosen = quality.select_settings(["hippocampus"])
    assert [s.name for s in chosen] == ["hippocampus/erode_dilate", "hippocampus/minority_erode",
                                        "hippocampus/erode_half", "hippocampus/class_flip", "hippocampus/model_noise"]
    assert all(s.per_slice for s in chosen[:4])
    # --quick without names: the settings marked quick; named settings run whatever the profile.
    quick = [s.name for s in quality.select_settings([], quick=True)]
    assert "hippocampus/erode_dilate" in quick and "hippocampus/model_noise" not in quick
    assert quality.select_settings(["hippocampus/model_noise"], quick=True)[0].protocol == "model_noise"
    with pytest.raises(ValueError):
        quality.select_settings(["nope"])


def test_floor_variability_is_deterministic_per_seed_pair(tmp_path):
    from benchmarks import floor_variability

    data = quality.load_split(ROOT / "sample_data", SAMPLE_SPEC, TINY_PROFILE["bbbc039"])
    args = (data, SAMPLE_SPEC, TINY_PROFILE["bbbc039"], TINY_SETTING)
    first = floor_variability.floor_run(*args, noise_seed=0, train_seed=0)
    again = floor_variability.floor_run(*args, noise_seed=0, train_seed=0)
    assert 0.0 <= first["test_dice"] <= 1.0 and len(first["train"]) == 2 and len(first["test"]) == 1
    # Eroded or dilated nuclei: the noisy labels' foreground differs from the clean one's.
    assert all(abs(image["noisy_change"]) > 0.01 for image in first["train"])
    first.pop("wall_s"), again.pop("wall_s")
    assert first == again
    assert floor_variability.parse_pairs("0:1, 2:0") == [(0, 1), (2, 0)]
    # Its record names its own script (it shares quality.py's run metadata).
    meta = quality.run_metadata(["--pairs", "0:1"], "benchmarks/floor_variability.py")
    assert meta["command"] == "python benchmarks/floor_variability.py --pairs 0:1" and meta["machine"]["cpu_model"]
    argv = ["--lr-schedule", "cosine", "--n-train", "1"]
    options = quality.one_setting_parser("d", "bbbc039/markov_boundary", "x", training_budget=True).parse_args(argv)
    header = quality.budget_report(argv, "benchmarks/floor_variability.py", "floor_variability", TINY_SETTING,
                                   TINY_PROFILE["bbbc039"], options)
    assert (header["benchmark"], header["setting"], header["lr_schedule"], header["runs"]) == (
        "floor_variability", "tiny/erode_dilate", "cosine", [])
    assert header["epochs"] == TINY_PROFILE["bbbc039"].train["epochs"] and options.n_train == 1
    assert header["n_train"] == TINY_PROFILE["bbbc039"].n_train
    assert header["command"] == "python benchmarks/floor_variability.py --lr-schedule cosine --n-train 1"
    with pytest.raises(ValueError, match="NOISE:TRAIN"):
        floor_variability.parse_pairs("3")
    assert floor_variability.main(["--data", str(tmp_path), "--setting", "bbbc039"]) == 2
    assert floor_variability.main(["--data", str(tmp_path / "none"), "--setting", "bbbc039/markov_boundary"]) == 2
    # sample_data/bbbc039 has images/ but no labels/ folder (its labels are labels_clean/): named, exit 2.
    assert floor_variability.main(["--data", str(ROOT / "sample_data"), "--out", str(tmp_path)]) == 2


def test_training_seeds_run_apart_from_the_noise_seed(report, tmp_path, capsys):
    """--train-seeds trains every row once per training seed on one noise draw; each
    method is paired with its own run's floor, and the run with training seed = noise
    seed is the default run, to the last digit."""
    from benchmarks import merge_quality

    default, _ = report
    partials = []
    result = quality.run_benchmark(
        ROOT / "sample_data", settings=[TINY_SETTING], methods=["baseline", "confident"], seeds=[0],
        profile=TINY_PROFILE, datasets={"bbbc039": SAMPLE_SPEC}, log=lambda line: None, train_seeds=[0, 1],
        on_partial=partials.append,
    )
    assert result["train_seeds"] == [0, 1] and len(result["noise"]) == 1
    # A run stopped after the first training seed keeps that seed's rows.
    [partial] = partials
    assert partial["partial"] and {row["train_seed"] for row in partial["rows"]} == {0}
    by_run = {(row["row"], row["train_seed"]): row for row in result["rows"]}
    assert set(by_run) == {(name, t) for name in (quality.CEILING_ROW, "baseline", "confident", quality.PEER_ROW)
                           for t in (0, 1)} | {(quality.PRIOR_ROW, 0)}
    assert all(row["seed"] == 0 for row in result["rows"])
    for row in default["rows"]:
        same = by_run[(row["row"], 0)]
        assert same.get("test") == row.get("test") and same.get("noise") == row.get("noise")
    # Same noisy labels, another training run: another network.
    assert by_run[("baseline", 1)]["correction"]["dice_given"] == by_run[("baseline", 0)]["correction"]["dice_given"]
    assert by_run[("baseline", 1)]["test"]["dice"] != by_run[("baseline", 0)]["test"]["dice"]
    differences = [by_run[("confident", t)]["test"]["dice"] - by_run[("baseline", t)]["test"]["dice"] for t in (0, 1)]
    summary = {s["row"]: s["metrics"] for s in result["summary"]}
    assert summary["confident"]["dice_minus_floor"]["mean"] == pytest.approx(sum(differences) / 2)
    assert summary["confident"]["above_floor"]["mean"] == sum(d > 0 for d in differences) / 2
    assert summary["baseline"]["test_dice"]["n"] == 2 and summary[quality.PRIOR_ROW]["ap"]["n"] == 1
    assert "dice_minus_floor" not in summary["baseline"] and "dice_minus_floor" not in summary[quality.CEILING_ROW]
    table = quality.markdown(result)
    assert "seeds 0 × training seeds 0, 1" in table
    assert f"({sum(d > 0 for d in differences)}/2) |" in table
    # Merged with the default run: its rows are the training-seed-0 rows (no drift), seed 1's join.
    merged = merge_quality.merge_reports([default, result])
    assert merged["reference_drift"] == [] and merged["train_seeds"] == [0, 1]
    assert len(merged["rows"]) == len(result["rows"])
    assert merge_quality.merge_reports([default])["train_seeds"] is None
    assert quality.main(["--data", str(tmp_path / "data"), "--train-seeds", "", "--out", str(tmp_path / "o")]) == 2
    assert "train_seeds is empty" in capsys.readouterr().err


def test_render_rewrites_tables_from_the_numbers(report, tmp_path, capsys):
    """--render rewrites X.md beside X.json from its rows, with this version's summary."""
    result, (json_path, md_path) = report
    saved = json.loads(json_path.read_text())
    saved["summary"] = []  # as if written by a version without these columns
    copy = tmp_path / "old.json"
    copy.write_text(json.dumps(saved))
    assert quality.main(["--render", str(copy)]) == 0
    assert (tmp_path / "old.md").read_text() == md_path.read_text()
    assert copy.read_text() == json.dumps(saved)  # the numbers are never rewritten
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert quality.main(["--render", str(bad)]) == 2
    assert "bad.json is not a quality report" in capsys.readouterr().err
    assert not (tmp_path / "bad.md").exists()


def test_sifting_diagnostic_measures_where_the_boundary_sits(tmp_path):
    from benchmarks import sifting_diagnostic as sifting

    # A network that predicts the clean disk exactly, trained on labels dilated by 2 px.
    yy, xx = np.mgrid[:64, :64]
    clean = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 10 ** 2).astype(np.int64)
    dilated = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 12 ** 2).astype(np.int64)
    probabilities = np.stack([1.0 - clean, clean]).astype(np.float32)
    exact = sifting.image_measures(probabilities, clean, clean)
    grown = sifting.image_measures(probabilities, dilated, clean)
    assert exact["area_ratio"] == 1.0 and exact["dice"] == 1.0
    assert exact["p_fg_outside"] == 0.0 and exact["p_fg_inside"] == 1.0
    assert grown["area_ratio"] == pytest.approx(clean.sum() / dilated.sum())
    assert grown["ce"] > exact["ce"] and grown["dice"] < 1.0

    half = quality.Setting("tiny/dilate_half", "bbbc039", "erode_dilate", 0.5, 1.0,
                           {"mode": "dilate", "radius": (2, 5)}, note="test")
    data = quality.load_split(ROOT / "sample_data", SAMPLE_SPEC, TINY_PROFILE["bbbc039"])
    args = (data, SAMPLE_SPEC, TINY_PROFILE["bbbc039"])
    result = sifting.diagnose(*args, half, 0, 0, 2, "ce_dice", log=lambda line: None)
    assert result["corrupted_images"] == 1 and result["images"] == 2 and len(result["epochs"]) == 2
    for epoch in result["epochs"]:
        assert all(0.0 <= epoch[key] <= 1.0 for key in epoch if key.startswith("auroc"))
        assert epoch["area_ratio_corrupted"] >= 0 and 0.0 <= epoch["p_fg_outside_exact"] <= 1.0
    again = sifting.diagnose(*args, half, 0, 0, 2, "ce_dice", log=lambda line: None)
    drop = lambda r: [{k: v for k, v in e.items() if k != "train_s"} for e in r["epochs"]]  # noqa: E731
    assert drop(again) == drop(result)
    with pytest.raises(ValueError, match="corrupts 2 of 2"):
        sifting.diagnose(*args, TINY_SETTING, 0, 0, 1, "ce_dice", log=lambda line: None)
    table = sifting.markdown({**quality.run_metadata([], "benchmarks/sifting_diagnostic.py"),
                              "setting": half.name, **result})
    assert table.count("\n| ") == 3  # the header and two epochs
    # Written through quality.write_report: valid JSON even where a ring had no pixel (NaN -> null).
    report = {"setting": half.name, **result, "epochs": [{**result["epochs"][0], "p_fg_inside_exact": float("nan")}]}
    json_path, _ = quality.write_report(report, tmp_path, "sifting", lambda r: "table\n")
    assert json.loads(json_path.read_text())["epochs"][0]["p_fg_inside_exact"] is None
    assert sifting.main(["--data", str(tmp_path / "none"), "--setting", "bbbc039/dilate_half"]) == 2
    assert sifting.main(["--data", str(tmp_path), "--setting", "bbbc039"]) == 2  # names several settings


def test_learning_curve_ends_where_quality_scores_the_floor(tmp_path, capsys):
    from benchmarks import learning_curve

    data = quality.load_split(ROOT / "sample_data", SAMPLE_SPEC, TINY_PROFILE["bbbc039"])
    args = (data, SAMPLE_SPEC, TINY_PROFILE["bbbc039"], TINY_SETTING, 0)
    noisy = learning_curve.curve(*args, "noisy", epochs=2)
    clean = learning_curve.curve(*args, "clean", epochs=2)
    assert [p["epoch"] for p in noisy["points"]] == [1, 2]
    assert all(0.0 <= p["dice"] <= 1.0 and p["train_loss"] > 0 for p in noisy["points"] + clean["points"])
    # Its last epoch is quality.py's floor for the same seed and budget: the same network, scored alike.
    simulated = quality.simulate_setting(TINY_SETTING, data, 0)
    train = quality.build_dataset(data["train_images"], simulated.noisy, data["train"], modes="2d",
                                  n_classes=data["n_classes"])
    test = quality.build_dataset(data["test_images"], data["test_labels"], data["test"], modes="2d",
                                 n_classes=data["n_classes"])
    config = quality.make_config(quality.FLOOR_METHOD, 0, TINY_PROFILE["bbbc039"], {}, epochs=2)
    floor = quality.get_method(quality.FLOOR_METHOD).fit(train, config)
    expected = quality.test_scores(floor, test, data["test_labels"], data["n_classes"])["dice"]
    assert noisy["points"][-1]["dice"] == pytest.approx(expected, abs=1e-9)
    # Its training images are scored the same way against the clean labels and the ones trained on.
    train_argmax = quality.final_predictions(floor, train)
    for labels, key in ((data["train_labels"], "train_dice_clean"), (simulated.noisy, "train_dice_given")):
        score = quality.prediction_scores(train_argmax, labels, data["n_classes"])["dice"]
        assert noisy["points"][-1][key] == pytest.approx(score, abs=1e-9)
    assert all(p["train_dice_clean"] == p["train_dice_given"] for p in clean["points"])
    report = {**quality.run_metadata([], "benchmarks/learning_curve.py"), "setting": TINY_SETTING.name,
              "runs": [clean, noisy]}
    table = learning_curve.markdown(report)
    assert table.count("\n| ") == 3 and "clean labels, seed 0: train vs given | noisy labels, seed 0: test" in table
    # A file written before the train columns existed renders as it did.
    for run in report["runs"]:
        for point in run["points"]:
            del point["train_dice_clean"], point["train_dice_given"]
    assert "| epoch | clean labels, seed 0 | noisy labels, seed 0 |" in learning_curve.markdown(report)
    assert learning_curve.main(["--data", str(tmp_path / "none")]) == 2
    assert learning_curve.main(["--data", str(ROOT / "sample_data"), "--labels", "dirty"]) == 2
    assert "--labels clean and/or noisy" in capsys.readouterr().err


def test_n_train_trains_on_fewer_images_and_tests_on_the_same_ones(report):
    default, _ = report
    result = quality.run_benchmark(
        ROOT / "sample_data", settings=[TINY_SETTING], methods=["baseline"], seeds=[0],
        profile=TINY_PROFILE, datasets={"bbbc039": SAMPLE_SPEC}, log=lambda line: None, n_train=1,
    )
    assert result["profile"] == "custom, n_train=1" and result["profile_config"]["bbbc039"]["n_train"] == 1
    assert len(result["splits"]["bbbc039"]["train"]) == 1
    assert result["splits"]["bbbc039"]["test"] == default["splits"]["bbbc039"]["test"]
    with pytest.raises(ValueError, match="n_train"):
        quality.run_benchmark(ROOT / "sample_data", settings=[TINY_SETTING], methods=["baseline"],
                              profile=TINY_PROFILE, datasets={"bbbc039": SAMPLE_SPEC}, n_train=0)
