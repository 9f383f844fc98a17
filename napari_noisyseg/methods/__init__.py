"""The method registry: one module per method, one line per registration.

Every method module exposes ``NAME``, ``SUMMARY``, ``DEFAULTS`` (its own
parameters) and ``fit(dataset, config, events) -> CurationResult``. A module may add
``refit(dataset, config, previous, events)``, its retrain after an earlier result of its
own (the viewer's "Retrain with decisions"), ``REFIT_NOTE`` where that retrain does
not continue the earlier models, and ``refit_refusal(previous) -> str``, why it cannot
retrain after that result ("" when it can).
"""

from __future__ import annotations

import importlib

from .base import CurationResult, TrainConfig

# name -> module path; modules are imported on first use so listing methods stays fast.
REGISTRY: dict[str, str] = {
    "adele": "napari_noisyseg.methods.adele",
    "baseline": "napari_noisyseg.methods.baseline",
    "clcs": "napari_noisyseg.methods.clcs",
    "confident": "napari_noisyseg.methods.confident",
    "distill": "napari_noisyseg.methods.distill",
    "cleansing": "napari_noisyseg.methods.cleansing",
    "coseg": "napari_noisyseg.methods.coseg",
}

DEFAULT_METHOD = "coseg"


def get_method(name: str):
    """The module implementing ``name``; unknown names list the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])


def available_methods() -> dict[str, str]:
    """Method name -> one-line summary."""
    return {name: get_method(name).SUMMARY for name in REGISTRY}


def fit(dataset, config: TrainConfig, events=None) -> CurationResult:
    """Run ``config.method`` on ``dataset``."""
    return get_method(config.method).fit(dataset, config, events)


def has_refit(method: str) -> bool:
    """Whether ``method``'s module has its own retrain after an earlier result (``refit``)."""
    return callable(getattr(get_method(method), "refit", None))


def warm_start_refusal(method: str, previous, n_classes: int | None = None) -> str:
    """Why :func:`refit_or_fit` trains ``method`` afresh instead of continuing ``previous``.

    Parameters
    ----------
    method : str
        The method to run.
    previous : CurationResult or None
        The earlier result a retrain would continue.
    n_classes : int, optional
        Classes of the labels to train on (:func:`~napari_noisyseg.core.dataset.class_count`);
        None skips that check.

    Returns
    -------
    str
        "" when it warm-starts, else the reason, for the user.
    """
    if not has_refit(method):
        return f"{method} has no refit"
    if previous is None or previous.method != method or not previous.models:
        return f"{method} has no trained model of its own to start from"
    if n_classes is not None and n_classes != previous.n_classes:
        return f"the labels hold {n_classes} classes, its models {previous.n_classes}"
    method_refusal = getattr(get_method(method), "refit_refusal", None)
    return method_refusal(previous) if callable(method_refusal) else ""


def refit_note(method: str) -> str:
    """How ``method``'s ``refit`` trains where it does not continue the earlier models
    (its module's ``REFIT_NOTE``, e.g. ADELE's "afresh on the decided labels …"); "" where
    it continues them (Co-Seg)."""
    return getattr(get_method(method), "REFIT_NOTE", "")


def refit_or_fit(dataset, config: TrainConfig, previous=None, events=None) -> CurationResult:
    """``config.method``'s ``refit`` after ``previous`` (Co-Seg warm-starts from its models, ADELE
    trains afresh on the decided labels) where :func:`warm_start_refusal` gives no reason not
    to, else ``fit`` afresh (also when ``previous`` is None). The viewer's and
    ``noisyseg train --from``'s retrain."""
    if not warm_start_refusal(config.method, previous, dataset.n_classes):
        return get_method(config.method).refit(dataset, config, previous, events)
    return fit(dataset, config, events)


__all__ = ["REGISTRY", "DEFAULT_METHOD", "CurationResult", "TrainConfig", "available_methods", "fit", "get_method",
           "has_refit", "refit_note", "refit_or_fit", "warm_start_refusal"]
