"""Merge quality-benchmark result files into one table (mean ± spread over every seed).

Usage (from the repository root)::

    python benchmarks/merge_quality.py RESULT.json [RESULT.json ...] --name NAME
        [--settings hippocampus/erode_dilate,...] [--out benchmarks/results]

Each input is a ``benchmarks/quality.py`` JSON. Rows are keyed by (setting, row,
seed); a later file replaces an earlier file's row with the same key, so list the
runs oldest first (e.g. the full table, then a rerun of one method after a change,
then extra seeds). Only use this on runs whose floor and ceiling rows agree for the
seeds they share: the benchmark is deterministic for a given seed and commit, and
the merged JSON records every source's command and commit so that can be checked.

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


def _budgets(report: dict) -> dict:
    """``{dataset: {(epochs, minutes)}}`` of a report's training runs (a merged report's own record)."""
    if "budgets" in report:
        return {name: {tuple(budget)} for name, budget in report["budgets"].items()}
    return {name: {(config.get("epochs"), config.get("minutes")) for config in by_method.values()}
            for name, by_method in report.get("configs", {}).items()}


def merge_reports(reports: list, settings: list | None = None) -> dict:
    """One report from several ``quality.py`` reports (later rows win per setting × row × seed).

    Parameters
    ----------
    reports : list of dict
        Parsed ``quality.py`` JSON reports, oldest first.
    settings : list of str, optional
        Setting names to keep (default: every setting any report has).

    Returns
    -------
    dict
        ``profile``, ``seeds``, ``settings``, ``noise``, ``rows``, ``summary`` (as
        ``quality.py`` writes them), ``budgets`` (``{dataset: [epochs, minutes]}``) and
        ``sources`` (command, commit, date per input).

    Raises
    ------
    ValueError
        No reports, different profiles, or different training budgets for one dataset
        (e.g. an ``--epochs 18`` run with the default budget's runs).
    """
    if not reports:
        raise ValueError("no reports to merge")
    profiles = {r.get("profile") for r in reports}
    if len(profiles) > 1:
        raise ValueError(f"cannot merge different profiles: {sorted(map(str, profiles))}")
    budgets: dict = {}
    for report in reports:
        for dataset, budget in _budgets(report).items():
            budgets.setdefault(dataset, set()).update(budget)
    if mixed := {name: sorted(b, key=str) for name, b in budgets.items() if len(b) > 1}:
        raise ValueError(f"cannot merge runs with different training budgets (epochs, minutes): {mixed}")
    keep = set(settings) if settings else None
    rows: dict = {}
    noise: dict = {}
    setting_info: dict = {}
    for report in reports:
        for setting in report["settings"]:
            if keep is None or setting["name"] in keep:
                setting_info.setdefault(setting["name"], setting)
        for entry in report["noise"]:
            if entry["setting"] in setting_info:
                noise[(entry["setting"], entry["seed"])] = entry
        for row in report["rows"]:
            if row["setting"] in setting_info:
                rows[(row["setting"], row["row"], row["seed"])] = row
    if keep is not None and (missing := keep - set(setting_info)):
        raise ValueError(f"no report has the settings {sorted(missing)}")
    merged_rows = list(rows.values())
    return {
        "profile": reports[0].get("profile"),
        "seeds": sorted({row["seed"] for row in merged_rows}),
        "settings": list(setting_info.values()),
        "noise": list(noise.values()),
        "rows": merged_rows,
        "summary": quality.summarise(merged_rows),
        "budgets": {name: list(next(iter(b))) for name, b in budgets.items()},
        "sources": [{key: r.get(key) for key in ("command", "git_commit", "git_dirty", "date", "seeds", "methods")}
                    for r in reports],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="quality.py JSON files, oldest first")
    parser.add_argument("--name", required=True, help="output file stem")
    parser.add_argument("--settings", default="", help="comma-separated setting names to keep (default: all)")
    parser.add_argument("--out", default=str(quality.DEFAULT_OUT), help="results folder")
    args = parser.parse_args(argv)
    try:
        reports = [json.loads(Path(path).read_text()) for path in args.inputs]
        settings = [s.strip() for s in args.settings.split(",") if s.strip()] or None
        merged = merge_reports(reports, settings)
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
