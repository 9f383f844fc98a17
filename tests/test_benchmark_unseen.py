"""benchmarks/unseen.py: the noisyseg commands end to end on images no tracked file names."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import unseen  # noqa: E402

SAMPLE = ROOT / "sample_data" / "hippocampus"


def test_named_stems_finds_names_in_paths_and_text_not_prefixes(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "case_7.nii.gz").write_bytes(b"")
    (repo / "notes.md").write_text("trained on case_12 and case_3a\n")
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "benchmarks" / "results" / "unseen_x.json").write_text('{"train": ["case_5"]}')
    stems = ["case_1", "case_12", "case_3", "case_5", "case_7"]
    # case_1 is only a prefix of case_12; case_3a is another name; the script's own results do not count.
    assert unseen.named_stems(stems, repo) == {"case_12", "case_7"}
    split = unseen.unseen_split(stems, 1, 2, repo)
    assert split["n_unseen"] == 3 and set(split["train"] + split["test"]) == {"case_1", "case_3", "case_5"}


def test_the_repository_names_its_sample_volumes():
    named = unseen.named_stems(["hippocampus_148", "hippocampus_165", "hippocampus_" + "9" * 5])
    assert named == {"hippocampus_148", "hippocampus_165"}


def _unnamed_volumes(tmp_path) -> None:
    """``tmp_path/data/hippocampus``: two volumes under names no file of the repository holds
    (built, not written here), plus one under a name it does."""
    if not (SAMPLE / "labels_clean").is_dir():
        pytest.fail("sample_data/hippocampus is missing; run `python sample_data/make_sample_data.py`")
    data = tmp_path / "data" / "hippocampus"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    copies = {f"vol_{i}{i}x": source for i, source in enumerate(["hippocampus_148", "hippocampus_165"])}
    copies["hippocampus_148"] = "hippocampus_148"
    for name, source in copies.items():
        shutil.copy(SAMPLE / "images" / f"{source}.nii.gz", data / "images" / f"{name}.nii.gz")
        shutil.copy(SAMPLE / "labels_clean" / f"{source}.nii.gz", data / "masks" / f"{name}.nii.gz")


def test_commands_end_to_end_on_unnamed_volumes(tmp_path, capsys):
    _unnamed_volumes(tmp_path)
    said = []
    work = tmp_path / "work"
    # --retrain and both --retrain-with-decisions rows as well: they ride on this run's floor and method
    # (one run, seven trainings).
    result = unseen.run(tmp_path / "data", "hippocampus/erode_dilate", ["clcs"], 1, 1, 1, "cosine", 0, 0,
                        work, say=said.append, retrain=True, decided=True, decided_afresh=True)
    assert result["split"]["n_unseen"] == 2 and "hippocampus_148" not in result["split"]["train"] + \
        result["split"]["test"]
    floor_retrain, clcs_retrain = unseen.FLOOR + unseen.RETRAIN, "clcs" + unseen.RETRAIN
    clcs_decided, clcs_afresh = "clcs → accept all → clcs (trust)", "clcs → accept all → clcs (trust, afresh)"
    assert [r["row"] for r in result["rows"]] == [unseen.CEILING, unseen.FLOOR, floor_retrain, "clcs", clcs_retrain,
                                                  clcs_decided, clcs_afresh]
    assert 0.0 < result["noisy"]["dice"] < 1.0  # the simulator corrupted the training labels
    assert 0.0 < result["prior"]["ap"] < 1.0
    for row in result["rows"]:
        assert 0.0 <= row["test"]["dice"] <= 1.0 and len(row["test"]["dice_per_class"]) == 3
    for row in result["rows"][1:]:
        assert 0.0 <= row["corrected"]["dice"] <= 1.0 and 0.0 <= row["noise"]["auroc"] <= 1.0
    commands = [c["command"].split()[1] for c in result["commands"]]
    assert commands.count("train") == 7 and commands.count("predict") == 7 and commands[0] == "simulate"
    assert commands.count("apply") == 1  # both decided rows train on the same accepted proposals
    # Each retrain row is a baseline on the preceding run's corrected labels, never on the noisy ones.
    trains = [c["command"] for c in result["commands"] if c["command"].split()[1] == "train"]
    for command, source in ((trains[2], "floor_noisy"), (trains[4], "clcs")):
        assert "--method baseline" in command and f"--labels {work / 'runs' / source / 'corrected'} " in command
    # The viewer's "Retrain with decisions": every proposal of the clcs run accepted, then clcs again with trust.
    applied = work / "applied" / "clcs"
    apply_command = next(c["command"] for c in result["commands"] if c["command"].split()[1] == "apply")
    assert f"--run {work / 'runs' / 'clcs'} " in apply_command and "--accept-above 0 " in apply_command
    assert "--method clcs" in trains[5] and f"--labels {applied / 'cleaned'} " in trains[5]
    assert f"--trust {applied / 'trust'} --from {work / 'runs' / 'clcs'} " in trains[5]
    # ... and afresh: the same labels and trust masks, trained as a first run.
    assert f"--labels {applied / 'cleaned'} " in trains[6] and f"--trust {applied / 'trust'} " in trains[6]
    assert "--from" not in trains[6] and result["rows"][6]["cleaned"] == result["rows"][5]["cleaned"]
    assert len(list((applied / "cleaned").iterdir())) == 1 and len(list((applied / "trust").iterdir())) == 1
    # Accepting every proposed region reproduces the first round's corrected labels.
    assert result["rows"][5]["cleaned"] == result["rows"][3]["corrected"]
    assert all(c["returncode"] == 0 for c in result["commands"])
    # The folders the commands wrote: a user's run, readable by the plugin.
    assert (tmp_path / "work" / "runs" / "clcs" / "model.safetensors").is_file()
    assert len(list((tmp_path / "work" / "runs" / "clcs" / "test").iterdir())) == 1
    report = {**unseen.quality.run_metadata([], unseen.SCRIPT), "setting": "hippocampus/erode_dilate", "seed": 0,
              "train_seed": 0, "epochs": 1, "lr_schedule": "cosine", "n_train": 1, **result}
    table = unseen.markdown(report)
    assert table.count("\n| ") == 8 and "| clcs |" in table and f"| {clcs_retrain} |" in table
    assert f"| {clcs_decided} |" in table and f"| {clcs_afresh} |" in table
    assert f"trained on: clcs {result['rows'][5]['cleaned']['dice']:.3f} (" in table and "; clcs" not in table
    json.dumps(report)
    # Several runs: each method paired with the floor of its own run.
    second = json.loads(json.dumps(report))
    second["seed"] = second["train_seed"] = 1
    second["rows"][1]["test"]["dice"] += 0.25
    summary = unseen.summary_markdown([report, second], ["run0", "run1"])
    clcs, floor = result["rows"][3]["test"]["dice"], result["rows"][1]["test"]["dice"]
    delta = [clcs - floor, clcs - floor - 0.25]
    clcs_line = summary.split("| clcs |")[1].splitlines()[0]
    assert f"({sum(d > 0 for d in delta)}/2)" in clcs_line
    assert f"{unseen.paired_t(delta)['t']:.2f} (".replace("-", "−") in clcs_line
    # Corrected labels against the floor's argmax of the same run (unchanged by the floor's test Dice).
    corrected = result["rows"][3]["corrected"]["dice"] - result["rows"][1]["corrected"]["dice"]
    assert f"{corrected:+.3f} ± 0.000 ({2 * int(corrected > 0)}/2)".replace("-", "−") in clcs_line
    assert "0:0, 1:1" in summary and "[run1](run1.md)" in summary
    # A retrain row is paired with its run's floor as a method row is.
    retrained = result["rows"][4]["test"]["dice"] - floor
    retrain_line = summary.split(f"| {clcs_retrain} |")[1].splitlines()[0]
    assert f"({int(retrained > 0) + int(retrained - 0.25 > 0)}/2)" in retrain_line
    out = tmp_path / "summary"
    paths = []
    for name, r in (("a", report), ("b", second)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(r))
    assert unseen.main(["--summarise", *map(str, paths), "--out", str(out), "--name", "s"]) == 0
    assert (out / "s.md").read_text().startswith("# Never-seen images")
    assert unseen.main(["--summarise", *map(str, paths), "--rows", "distill", "--out", str(out), "--name", "t"]) == 0
    kept = (out / "t.md").read_text()
    assert "| clcs |" not in kept and f"| {unseen.FLOOR} |" in kept and f"| {unseen.CEILING} |" in kept
    # --against: the paired columns compare with another row of the same run (here the floor's self-training).
    assert unseen.main(["--summarise", *map(str, paths), "--against", floor_retrain, "--rows", clcs_retrain,
                        "--out", str(out), "--name", "u"]) == 0
    against = (out / "u.md").read_text()
    over_self_training = result["rows"][4]["test"]["dice"] - result["rows"][2]["test"]["dice"]
    line = against.split(f"| {clcs_retrain} |")[1].splitlines()[0]
    assert f"{over_self_training:+.3f} ± 0.000".replace("-", "−") in line and f"Δ `{floor_retrain}`" in against
    assert "| clcs |" not in against and f"| {floor_retrain} |" in against
    assert unseen.main(["--summarise", *map(str, paths), "--against", "nope", "--out", str(out), "--name", "v"]) == 2
    assert "has no row 'nope'" in capsys.readouterr().err
    # quality.py's split (--split benchmark) says so instead of claiming unseen images.
    report["split"] = {"kind": "benchmark", "train": ["a"], "test": ["b", "c"]}
    assert unseen.markdown(report).startswith("# quality.py's split through the command line")
    assert "(train 1 images, test 2)" in unseen.markdown(report)


def test_paired_t_against_zero():
    # Differences 1, 2, 3: mean 2, sample std 1, t = 2 / (1 / sqrt 3).
    test = unseen.paired_t([1.0, 2.0, 3.0])
    assert test["t"] == pytest.approx(2 * np.sqrt(3)) and 0.05 < test["p"] < 0.1
    assert unseen.paired_t([-1.0, -2.0, -3.0])["t"] == pytest.approx(-2 * np.sqrt(3))
    assert unseen.paired_t([0.5]) is None and unseen.paired_t([0.1, 0.1]) is None


def test_method_params_reach_its_train_command():
    params = unseen.quality.parse_params(["adele.match_area=true", "coseg.epsilon=0.3"])
    assert unseen.param_args(params, "adele") == ["--param", "match_area=true"]
    assert unseen.param_args(params, "coseg") == ["--param", "epsilon=0.3"] and unseen.param_args(params, "baseline") == []


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        unseen.main(["--methods", "nope"])
    assert "unknown method(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        unseen.main(["--setting", "hippocampus/none"])
    assert "hippocampus/none" in capsys.readouterr().err
    assert unseen.main(["--data", str(tmp_path / "none"), "--work", str(tmp_path / "w")]) == 2
    assert "not found" in capsys.readouterr().err
