"""Merge quality-benchmark result files into one table (mean ± spread over every seed).

Usage (from the repository root)::

    python benchmarks/merge_quality.py RESULT.json [RESULT.json ...] --name NAME
        [--settings hippocampus/erode_dilate,...] [--out benchmarks/results]

Each input is a ``benchmarks/quality.py`` JSON. Rows are keyed by (setting, row,
seed, training seed); a later file replaces an earlier file's row with the same key, so list the
runs oldest first (e.g. the full table, then a rerun of one method after a change,
then extra seeds). The benchmark is deterministic for a given seed, commit and kind
of CPU, so runs that share a seed must agree on its floor and ceiling rows; a merge
that finds them different (another CPU, or a change to the baseline) stops, unless
``--allow-reference-drift`` keeps the later rows and records every difference in
the merged JSON (``reference_drift``) and under the Markdown tables.

Writes ``<out>/<name>.json`` and ``<out>/<name>.md`` (the same tables as
``quality.py``) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import quality  # noqa: E402  (the same module the tests import)


REFERENCE_KINDS = ("floor", "ceiling")
SOURCE_KEYS = ("command", "git_commit", "git_dirty", "date", "seeds", "methods")


def _source_label(report: dict) -> str:
    machine = report.get("machine") or {}
    where = machine.get("cpu_model") or "CPU not recorded"
    return f"{report.get('command') or 'merged report'} ({report.get('date') or 'no date'}; {where})"


def _drift(earlier: dict, later: dict) -> float | None:
    """How far two reference rows' test Dice differ (None when either has none)."""
    if not (earlier.get("test") and later.get("test")):
        return None
    return abs(float(later["test"]["dice"]) - float(earlier["test"]["dice"]))


def merge_reports(reports: list, settings: list | None = None, allow_reference_drift: bool = False) -> dict:
    """One report from several ``quality.py`` reports (later rows win per setting × row × seed).

    Parameters
    ----------
    reports : list of dict
        Parsed ``quality.py`` JSON reports, oldest first.
    settings : list of str, optional
        Setting names to keep (default: every setting any report has).
    allow_reference_drift : bool
        Merge even where two reports' floor or ceiling rows for the same setting and
        seed differ in test Dice (the later row is kept); default False raises.

    Returns
    -------
    dict
        ``profile``, ``seeds``, ``settings``, ``noise``, ``rows``, ``summary`` (as
        ``quality.py`` writes them), ``budgets`` (``{dataset: [epochs, minutes, lr_schedule]}``) and
        ``sources`` (command, commit, date, CPU per input) and ``reference_drift``
        (one entry per floor/ceiling row that differed; empty when none did).

    Raises
    ------
    ValueError
        No reports, different profiles, or different training budgets for one dataset
        (e.g. an ``--epochs 18`` run with the default budget's runs), or floor/ceiling
        rows that differ between reports without ``allow_reference_drift``.
    """
    if not reports:
        raise ValueError("no reports to merge")
    profiles = {r.get("profile") for r in reports}
    if len(profiles) > 1:
        raise ValueError(f"cannot merge different profiles: {sorted(map(str, profiles))}")
    budgets: dict = {}
    for report in reports:
        for dataset, budget in quality.run_budgets(report).items():
            budgets.setdefault(dataset, set()).update(budget)
    if mixed := {name: sorted(b, key=str) for name, b in budgets.items() if len(b) > 1}:
        raise ValueError(f"cannot merge runs with different training budgets (epochs, minutes, lr_schedule): {mixed}")
    keep = set(settings) if settings else None
    rows: dict = {}
    noise: dict = {}
    setting_info: dict = {}
    drift: list = []
    origin: dict = {}
    for report in reports:
        drift.extend(report.get("reference_drift", []))  # a merged report's own, already allowed
        source = _source_label(report)
        for setting in report["settings"]:
            if keep is None or setting["name"] in keep:
                setting_info.setdefault(setting["name"], setting)
        for entry in report["noise"]:
            if entry["setting"] in setting_info:
                noise[(entry["setting"], entry["seed"])] = entry
        for row in report["rows"]:
            if row["setting"] in setting_info:
                setting, seed, train_seed = quality.run_key(row)
                key = (setting, row["row"], seed, train_seed)
                if row.get("kind") in REFERENCE_KINDS and key in rows:
                    difference = _drift(rows[key], row)
                    if difference:
                        drift.append({"setting": setting, "row": row["row"], "seed": seed, "train_seed": train_seed,
                                      "earlier": rows[key]["test"]["dice"], "later": row["test"]["dice"],
                                      "earlier_source": origin[key], "later_source": source})
                rows[key] = row
                origin[key] = source
    if drift and not allow_reference_drift:
        first = drift[0]
        raise ValueError(
            f"{len(drift)} floor/ceiling row(s) differ between the runs, e.g. {first['setting']} "
            f"{first['row']} seed {first['seed']}: test Dice {first['earlier']:.4f} in "
            f"{first['earlier_source']} against {first['later']:.4f} in {first['later_source']}. "
            "The methods of each run were measured against their own run's floor; pass "
            "--allow-reference-drift to keep the later rows and record the differences.")
    if keep is not None and (missing := keep - set(setting_info)):
        raise ValueError(f"no report has the settings {sorted(missing)}")
    merged_rows = list(rows.values())
    train_seeds = sorted({quality.run_key(row)[2] for row in merged_rows})
    return {
        "profile": reports[0].get("profile"),
        "seeds": sorted({row["seed"] for row in merged_rows}),
        # Listed only when some run trained with a seed other than its noise seed.
        "train_seeds": train_seeds if any(quality.run_key(r)[1] != quality.run_key(r)[2] for r in merged_rows)
        else None,
        "settings": list(setting_info.values()),
        "noise": list(noise.values()),
        "rows": merged_rows,
        "summary": quality.summarise(merged_rows),
        "budgets": {name: list(next(iter(b))) for name, b in budgets.items()},
        "sources": [{**{key: r.get(key) for key in SOURCE_KEYS}, "cpu_model": (r.get("machine") or {}).get("cpu_model")}
                    for r in reports],
        "reference_drift": drift,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="quality.py JSON files, oldest first")
    parser.add_argument("--name", required=True, help="output file stem")
    parser.add_argument("--settings", default="", help="comma-separated setting names to keep (default: all)")
    parser.add_argument("--out", default=str(quality.DEFAULT_OUT), help="results folder")
    parser.add_argument("--allow-reference-drift", action="store_true",
                        help="merge even where runs' floor/ceiling rows differ (the later ones are kept)")
    args = parser.parse_args(argv)
    try:
        reports = [json.loads(Path(path).read_text()) for path in args.inputs]
        settings = quality.comma_list(args.settings) or None
        merged = merge_reports(reports, settings, allow_reference_drift=args.allow_reference_drift)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    merged["command"] = " ".join(["python", "benchmarks/merge_quality.py", *(argv or sys.argv[1:])])
    json_path, md_path = quality.write_report(merged, args.out, args.name)
    print(quality.markdown(merged))
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
