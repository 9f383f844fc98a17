"""Writing a curation session: cleaned labels, noise maps, the curation log and the model.

Every write goes through :mod:`napari_noisyseg.core.io` (atomic, never over an existing file
without ``overwrite``); :func:`export_targets` names the files first, so a caller can show
them or refuse before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from .curation import CurationSession, safe_name

LABEL_FORMATS = (".tif", ".png", ".nii.gz", ".npy")


def float_map_format(labels_format: str) -> str:
    """The file extension a float map (the noise likelihood) is written with beside labels
    written as ``labels_format``: the same, except TIFF for PNG (which holds no floats)."""
    return ".tif" if labels_format == ".png" else labels_format


def export_stems(names, file_stems=None) -> list[str]:
    """The stem each source's files are named with: its labels file's own stem where it came
    from a file, else its layer name.

    An image and its labels saved under one name (``imagesTr/hippocampus_001.nii.gz`` and
    ``labelsTr/hippocampus_001.nii.gz``) open in napari as ``hippocampus_001`` and
    ``hippocampus_001 [1]``; the export is ``hippocampus_001_cleaned.nii.gz``, not
    ``hippocampus_001_1_cleaned.nii.gz``. Where two files' stems would clash, every
    source is named after its layer.

    Parameters
    ----------
    names : list of str
        Layer names, one per source.
    file_stems : list of (str or None), optional
        Per source, its labels file's stem (None: no file).
    """
    file_stems = list(file_stems) if file_stems is not None else [None] * len(names)
    stems = [safe_name(file_stem or name) for name, file_stem in zip(names, file_stems)]
    return stems if len(set(stems)) == len(stems) else [safe_name(name) for name in names]


def export_targets(session: CurationSession, folder, labels_format: str = ".tif",
                   include=("cleaned", "noise", "log_csv", "log_json"), sample_names=None,
                   file_stems=None) -> dict:
    """What :func:`export_session` would write: ``{kind: [paths]}`` (nothing is written).

    ``file_stems``: see :func:`export_stems`.
    """
    folder = Path(folder)
    labels_format = _format(labels_format)
    float_format = float_map_format(labels_format)
    targets: dict = {}
    for s, stem in enumerate(export_stems(session.names, file_stems)):
        if "cleaned" in include:
            if labels_format == ".png" and session.given[s].ndim == 3:
                names = _slice_names(session, s, sample_names)
                targets.setdefault("cleaned", []).extend(folder / f"{stem}_cleaned" / f"{n}.png" for n in names)
            else:
                targets.setdefault("cleaned", []).append(folder / f"{stem}_cleaned{labels_format}")
        if "noise" in include:
            targets.setdefault("noise", []).append(folder / f"{stem}_noise{float_format}")
    if "log_csv" in include:
        targets["log_csv"] = [folder / "curation_log.csv"]
    if "log_json" in include:
        targets["log_json"] = [folder / "curation_log.json"]
    if "checkpoint" in include:
        targets["checkpoint"] = [folder / "model.safetensors"]
    return targets


def _format(labels_format: str) -> str:
    fmt = labels_format.lower()
    fmt = fmt if fmt.startswith(".") else "." + fmt
    fmt = {".tiff": ".tif", ".nii": ".nii.gz", ".nifti": ".nii.gz", ".numpy": ".npy"}.get(fmt, fmt)
    if fmt not in LABEL_FORMATS:
        raise ValueError(f"unknown labels format {labels_format!r}; choose from {', '.join(LABEL_FORMATS)}")
    return fmt


def _slice_names(session, s, sample_names=None) -> list[str]:
    depth = session.given[s].shape[0]
    names = (sample_names or {}).get(s) if isinstance(sample_names, dict) else None
    names = names or session.sample_names[s]
    if len(names) != depth or len(set(names)) != depth:
        names = [f"{z:03d}" for z in range(depth)]
    return [safe_name(n) for n in names]


def export_session(session: CurationSession, folder, labels_format: str = ".tif",
                   include=("cleaned", "noise", "log_csv", "log_json"), metas=None, result=None,
                   overwrite: bool = False, checkpoint_extra: dict | None = None, file_stems=None) -> list[Path]:
    """Write the cleaned labels, noise maps, curation log and model of a session.

    Parameters
    ----------
    folder : str or Path
        Created when missing.
    labels_format : {".tif", ".png", ".nii.gz", ".npy"}
        For cleaned labels; noise maps use the same format except PNG (no
        floats) → TIFF. PNG of a 3D source writes one file per slice in a
        ``<name>_cleaned/`` folder, named after the samples.
    include : iterable of str
        Any of ``cleaned``, ``noise``, ``log_csv``, ``log_json``, ``checkpoint``.
    metas : list of (ImageMeta or None), optional
        Per source: NIfTI affine / spacing to write (the source file's affine).
    result : CurationResult, optional
        Needed for ``checkpoint``.
    overwrite : bool
        Without it, nothing is written when any target exists (the error lists them).
    file_stems : list of (str or None), optional
        Per source, the stem of the labels file it came from: files are named after
        it rather than the layer (:func:`export_stems`).

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    FileExistsError
        Some targets exist and ``overwrite`` is False.
    ValueError
        ``checkpoint`` asked for without a result with models.
    """
    from . import io

    include = tuple(include)
    if "checkpoint" in include and (result is None or not getattr(result, "models", None)):
        raise ValueError("no trained model to save: train or load a model first")
    targets = export_targets(session, folder, labels_format, include, file_stems=file_stems)
    if not overwrite:
        existing = [str(p) for paths in targets.values() for p in paths if p.exists()]
        if existing:
            shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
            raise FileExistsError(f"{len(existing)} file(s) exist: {shown}; tick 'overwrite' to replace them")
    metas = list(metas) if metas is not None else [None] * len(session.names)
    written: list[Path] = []
    cleaned_paths = iter(targets.get("cleaned", []))
    for s in range(len(session.names)):
        if "cleaned" in include:
            if _format(labels_format) == ".png" and session.given[s].ndim == 3:
                for z in range(session.given[s].shape[0]):
                    written.append(io.write_labels(next(cleaned_paths), session.cleaned[s][z], overwrite=overwrite))
            else:
                written.append(io.write_labels(next(cleaned_paths), session.cleaned[s], metas[s], overwrite=overwrite))
        if "noise" in include:
            written.append(io.write_float_map(targets["noise"][s], session.noise[s], metas[s], overwrite=overwrite))
    if "log_csv" in include:
        written.append(io.atomic_write_text(targets["log_csv"][0], session.log_csv(), overwrite=overwrite))
    if "log_json" in include:
        written.append(io.atomic_write_text(targets["log_json"][0], session.log_json(), overwrite=overwrite))
    if "checkpoint" in include:
        from .checkpoint import save_result

        extra = {"names": session.names, "modes": session.modes, **(checkpoint_extra or {})}
        written.append(save_result(targets["checkpoint"][0], result, overwrite=overwrite, extra=extra))
    return written
