"""The method registry: one module per method, one line per registration.

Every method module exposes ``NAME``, ``SUMMARY``, ``DEFAULTS`` (its own
parameters) and ``fit(dataset, config, events) -> CurationResult``.
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
    """Whether ``method``'s module can warm-start from an earlier result (has ``refit``)."""
    return callable(getattr(get_method(method), "refit", None))


def can_refit(method: str, previous) -> bool:
    """Whether ``method`` warm-starts (:func:`has_refit`) from ``previous``, a
    :class:`CurationResult` of the same method holding its models."""
    return has_refit(method) and previous is not None and previous.method == method and bool(previous.models)


def refit_or_fit(dataset, config: TrainConfig, previous=None, events=None) -> CurationResult:
    """``config.method`` warm-started from ``previous`` (:func:`can_refit`, same classes), else
    trained afresh (also when ``previous`` is None). The viewer's and ``noisyseg train --from``'s
    retrain."""
    if can_refit(config.method, previous) and dataset.n_classes == previous.n_classes:
        return get_method(config.method).refit(dataset, config, previous, events)
    return fit(dataset, config, events)


__all__ = ["REGISTRY", "DEFAULT_METHOD", "CurationResult", "TrainConfig", "available_methods", "can_refit", "fit",
           "get_method", "has_refit", "refit_or_fit"]
