"""Review without a viewer: apply decisions to a training run's proposals.

``noisyseg train`` writes a run folder with the proposed labels
(``corrected/``), the noise maps (``noise/``) and one row per proposed region
(``proposals.csv``). :func:`apply_run_decisions` rebuilds those regions from the
run folder and the labels the run trained on, applies a decision file (or
accepts every region above a likelihood), and writes what the viewer's Export
writes plus the trust masks a retrain needs:

- ``OUT/cleaned/<stem>.<ext>``: the original labels with the accepted changes
  (same format as the given labels; NIfTI keeps its affine);
- ``OUT/trust/<stem>.tif``: uint8, 1 on decided pixels (accepted and rejected
  regions: a rejection says the original label was right);
- ``OUT/noise/<stem>.<ext>``: the run's noise likelihood (float32) in the labels'
  format and geometry (TIFF for PNG labels);
- ``OUT/curation_log.csv`` and ``OUT/curation_log.json``: one row per decision.

``noisyseg train --labels OUT/cleaned --trust OUT/trust --from RUN`` is then the
viewer's "Retrain with decisions". The given label files are only read.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .core import io
from .core.curation import CurationSession
from .core.export import float_map_format
from .folders import check_new_dir, ensure_new_dir

RUN_PARTS = ("corrected", "noise", "history.json")


def _check_paired(names, files: dict, what: str) -> None:
    """Refuse ``files`` (by stem) that do not pair one to one with ``names``; ``what`` describes both sides."""
    unmatched = sorted(set(names) ^ set(files))
    if unmatched:
        raise io.InputError(f"{what} do not pair by name ({', '.join(unmatched[:5])} only in one of them)")


def _read_run(run: Path) -> tuple[dict, dict, dict]:
    missing = [part for part in RUN_PARTS if not (run / part).exists()]
    if missing:
        raise io.InputError(f"{str(run)!r} is not a run folder of `noisyseg train` (no {', '.join(missing)})")
    try:
        history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise io.InputError(f"{run / 'history.json'}: not valid JSON ({error})") from None
    return history, io.files_by_stem(run / "corrected", "corrected label"), io.files_by_stem(run / "noise", "noise map")


def _check_proposals(run: Path, session: CurationSession) -> None:
    """Refuse a run whose proposals.csv is not the regions rebuilt from its folders."""
    path = run / "proposals.csv"
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        written = [(int(r["id"]), r["source"], r["kind"], int(r["area"])) for r in csv.DictReader(handle)]
    rebuilt = sorted((r.id, r.source, r.kind, r.area) for r in session.regions.values())
    if sorted(written) != rebuilt:
        raise io.InputError(
            f"{path} lists {len(written)} regions but the run's corrected labels and the given labels give "
            f"{len(rebuilt)} others: were these the labels the run trained on?"
        )


def apply_run_decisions(run_dir, labels_dir, out_dir, decisions=None, accept_above: float | None = None,
                        overwrite: bool = False, user: str | None = None) -> dict:
    """Apply review decisions to a training run's proposals and write the cleaned labels.

    Parameters
    ----------
    run_dir : str or Path
        The ``--out`` folder of ``noisyseg train``.
    labels_dir : str or Path
        The labels that run trained on (paired with ``RUN/corrected`` by file stem).
        Only read.
    out_dir : str or Path
        Created; a non-empty folder is refused unless ``overwrite``.
    decisions : str or Path, optional
        A CSV or JSON file with columns ``region`` (or ``id``) and ``decision``
        (accept / reject / undo; empty or ``pending`` rows are skipped), e.g.
        ``RUN/proposals.csv`` with a ``decision`` column added, or a curation log
        (see :meth:`CurationSession.apply_decisions`).
    accept_above : float, optional
        Instead of a file: accept every region whose mean noise likelihood is at
        least this (the viewer's "Accept all pending with likelihood ≥").
    user : str, optional
        Recorded in the log; default the login name.

    Returns
    -------
    dict
        ``counts`` (accept / reject / undo / skipped), ``regions`` (proposed),
        ``pixels_changed``, ``pixels_trusted``, ``files`` (written paths).

    Raises
    ------
    napari_noisyseg.core.io.InputError
        Not a run folder; labels that do not pair with, or are not, the labels
        the run trained on; shapes that differ.
    ValueError
        Neither or both of ``decisions`` and ``accept_above``; a decision file
        naming unknown regions or regions of other proposals (nothing is
        written then), or holding no decision at all.
    FileExistsError
        ``out_dir`` is not empty and ``overwrite`` is False.
    """
    if (decisions is None) == (accept_above is None):
        raise ValueError("give a decision file or a likelihood to accept above (one of them)")
    run, labels_dir, out = Path(run_dir), Path(labels_dir), Path(out_dir)
    check_new_dir(out, overwrite)
    history, corrected_files, noise_files = _read_run(run)
    label_files = io.files_by_stem(labels_dir, "label")
    stems = sorted(corrected_files)
    _check_paired(stems, label_files, f"the labels in {str(labels_dir)!r} and the run's corrected labels in "
                                      f"{str(run / 'corrected')!r}")
    recorded = history.get("labels_sha256", {})
    given, metas, corrected, noise = [], [], [], []
    for stem in stems:
        labels, meta = io.read_labels(label_files[stem], allow_full=True)
        if stem in recorded and recorded[stem] != io.labels_digest(labels):
            raise io.InputError(f"{label_files[stem]}: not the labels the run in {str(run)!r} trained on "
                                "(their content differs from what history.json recorded)")
        proposal, _ = io.read_array(corrected_files[stem])
        likelihood, _ = io.read_array(noise_files[stem])
        if proposal.shape != labels.shape or likelihood.shape != labels.shape:
            raise io.InputError(f"{label_files[stem]}: shape {labels.shape}, but the run's corrected labels "
                                f"{proposal.shape} and noise map {likelihood.shape}")
        given.append(labels)
        metas.append(meta)
        corrected.append(proposal)
        noise.append(likelihood)
    # Regions as write_run found them: whole-array components, every area, ids in stem order.
    modes = ["2d" if g.ndim == 2 else "volume" for g in given]
    session = CurationSession(given, names=stems, modes=modes, min_area=1, user=user)
    session.set_proposals(noise, corrected, method=history.get("method", ""))
    _check_proposals(run, session)
    if decisions is not None:
        counts = session.apply_decisions(decisions)
        if not counts["accept"] + counts["reject"] + counts["undo"]:
            raise ValueError(f"{decisions}: no decisions (add a 'decision' column with accept or reject "
                             "next to the region ids)")
    else:
        accepted = session.accept_above(float(accept_above))
        counts = {"accept": len(accepted), "reject": 0, "undo": 0, "skipped": len(session.regions) - len(accepted)}
    if not session.original_unchanged():  # a guard: the session works on copies
        raise RuntimeError("the original labels changed in memory; nothing written")
    cleaned, trust = session.cleaned_labels(), session.trust_masks()
    ensure_new_dir(out, overwrite)
    files = []
    for stem, labels, meta, mask, likelihood in zip(stems, cleaned, metas, trust, noise):
        extension = io.split_stem(label_files[stem])[1]
        files.append(io.write_labels(out / "cleaned" / f"{stem}{extension}", labels, meta, overwrite=overwrite))
        files.append(io.write_array(out / "trust" / f"{stem}.tif", mask.astype(np.uint8), overwrite=overwrite))
        # As the viewer's Export: the labels' format and geometry (a NIfTI map overlays in other viewers).
        files.append(io.write_float_map(out / "noise" / f"{stem}{float_map_format(extension)}", likelihood, meta,
                                        overwrite=overwrite))
    files.append(io.atomic_write_text(out / "curation_log.csv", session.log_csv(), overwrite=overwrite))
    files.append(io.atomic_write_text(out / "curation_log.json", session.log_json(), overwrite=overwrite))
    return {
        "counts": counts,
        "regions": len(session.regions),
        "pixels_changed": int(sum((c != g).sum() for c, g in zip(cleaned, given))),
        "pixels_trusted": int(sum(m.sum() for m in trust)),
        "files": files,
    }


def load_trust(trust_dir, names: list, labels: list) -> list:
    """Trust masks for loaded label maps, paired by file stem.

    Parameters
    ----------
    trust_dir : str or Path
        One file per label map (e.g. ``OUT/trust`` of :func:`apply_run_decisions`);
        nonzero means trusted.
    names : list of str
        The label maps' stems.
    labels : list of ndarray
        The label maps (for their shapes).

    Returns
    -------
    list of ndarray of bool
        One per label map, its shape.

    Raises
    ------
    napari_noisyseg.core.io.InputError
        A label map without a trust file (or the reverse), or a shape that differs.
    """
    trust_dir = Path(trust_dir)
    files = io.files_by_stem(trust_dir, "trust mask")
    _check_paired(names, files, f"the trust masks in {str(trust_dir)!r} and the labels")
    masks = []
    for name, label_map in zip(names, labels):
        mask, _ = io.read_array(files[name])
        if mask.shape != label_map.shape:
            raise io.InputError(f"{files[name]}: shape {mask.shape}, but its labels are {label_map.shape}")
        masks.append(np.asarray(mask) != 0)
    return masks
