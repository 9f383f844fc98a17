"""Label-noise simulators (METHODS.md §8), 2D and 3D, binary and multi-class, seeded.

Every protocol corrupts one integer label array (``(H, W)`` or ``(D, H, W)``,
0 = background, 1..K-1 = classes) and returns a new array of the same shape and
dtype; the input is never modified. :func:`simulate_noise` corrupts a fraction α
of a list of samples and records everything needed to reproduce the run.

Two knobs are shared by all protocols:

* ``fraction`` α — which samples are corrupted: exactly ``round(α·N)`` of them
  (round half up), drawn with the seeded generator.
* ``severity`` S > 0 — scales the protocol's strength inside its usual range
  (S = 1 is the strong end of METHODS.md §8's usual settings). Severity only
  sets the parameters the caller does not pass; an explicit keyword
  (``radius=(2, 5)``, ``p=0.3``, ``beta=0.7``, ``theta=30``...) always wins.

=================  ===========================================  ==================================
protocol           severity mapping (defaults at S = 1)         other parameters (defaults)
=================  ===========================================  ==================================
erode_dilate       radius r ~ U{2 .. round(2 + 8·S)} px per     mode="random" (erode|dilate),
                   object, capped at max_radius_fraction ×      p_erode=0.5, max_radius_fraction=0.5
                   the object's inscribed radius
area_target        beta = max(0.05, 1 − 0.5·S) (0.5 at S=1);    mode="random" (erode|dilate)
                   erosion keeps beta·A px, dilation grows
                   to A/beta px
affine             theta = 30·S degrees, shift = 0.2·S of the   —
                   object's extent per axis
markov_boundary    steps T = round(80 + 120·S) (200 at S=1),    theta1=(0.8, 0.2) (one drawn per
                   theta3 = min(1, 0.2·S); boundary drifts      sample), theta2=0.05, band=2,
                   about ±10 px at T=200                        sigma=1.0
missing            p = min(1, 0.3·S)                            —
spurious           p = min(1, 0.3·S)                            size=None (sample's own sizes),
                                                                default_radius=(4, 12),
                                                                aspect=(0.5, 1.0), max_tries=50
pixel_flip         p = min(1, 0.05·S)                           n_classes=None (max label + 1)
class_flip         p = min(1, 0.3·S)                            n_classes=None (max label + 1)
minority_erode     as erode_dilate                              target_class=None (smallest total
                                                                area in the sample), mode="erode"
=================  ===========================================  ==================================

All protocols also take ``per_slice=True`` for 3D labels: the 2D protocol is then
applied to every slice ``labels[z]`` independently (each slice has its own
generator), as in ADELE's slice-wise SegTHOR protocol.

Objects are the connected components (full connectivity: 8 in 2D, 26 in 3D) of
each foreground class. No protocol lets one foreground class overwrite another,
except ``class_flip`` (whose purpose that is) and the random flips of
``pixel_flip``.

New protocols (e.g. ``model_noise``, which needs the training engine) are added
with :func:`register_protocol`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "PROTOCOLS",
    "NoiseRun",
    "corrupt_sample",
    "describe_protocols",
    "register_protocol",
    "resolve_params",
    "simulate_noise",
]

ProtocolFn = Callable[..., np.ndarray]


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _ProtocolSpec:
    """What the registry keeps for one protocol.

    ``fn(labels, rng, severity, **resolved)`` does the work on a validated label
    array; ``resolve(severity, **params)`` turns the caller's keywords and the
    severity into the full, explicit parameter dict that is recorded.
    """

    name: str
    fn: ProtocolFn
    resolve: Callable[..., dict]
    description: str


_SPECS: dict[str, _ProtocolSpec] = {}

#: name -> ``fn(labels, rng, severity=1.0, per_slice=False, **params) -> np.ndarray``.
#: The callables validate their input, resolve parameters from the severity and
#: return a new array of the same shape and dtype.
PROTOCOLS: dict[str, ProtocolFn] = {}


def _passthrough_resolver(severity: float, **params: Any) -> dict:
    """Default resolver for registered protocols: record the keywords as given."""
    return dict(params)


def register_protocol(
    name: str,
    fn: ProtocolFn,
    *,
    resolve_params: Callable[..., dict] | None = None,
    description: str | None = None,
    replace: bool = False,
) -> None:
    """Add a noise protocol to :data:`PROTOCOLS`.

    Parameters
    ----------
    name : str
        Protocol name as used on the command line (must not contain ``+``).
    fn : callable
        ``fn(labels, rng, severity, **params) -> np.ndarray``. ``labels`` is a
        validated ``(H, W)`` or ``(D, H, W)`` integer array (bool input arrives
        as uint8), ``rng`` a ``np.random.Generator``; the result must have the
        same shape (it is cast back to the input dtype).
    resolve_params : callable, optional
        ``resolve_params(severity, **params) -> dict`` returning every parameter
        ``fn`` will receive, made explicit so the run can be recorded and
        replayed. Its keyword names are the parameters the protocol accepts.
        Default: the keywords are passed and recorded as given.
    description : str, optional
        One-line help for ``noisyseg simulate --help``; default: the first line
        of ``fn``'s docstring.
    replace : bool
        Allow replacing an existing protocol of the same name.
    """
    if not isinstance(name, str) or not name or "+" in name or name != name.strip():
        raise ValueError(f"invalid protocol name {name!r}: use a non-empty name without '+'")
    if name in _SPECS and not replace:
        raise ValueError(f"protocol {name!r} is already registered (pass replace=True)")
    if description is None:
        doc = inspect.getdoc(fn) or ""
        description = doc.splitlines()[0] if doc else name
    spec = _ProtocolSpec(name, fn, resolve_params or _passthrough_resolver, description)
    _SPECS[name] = spec
    PROTOCOLS[name] = _make_public_protocol(spec)


def describe_protocols() -> dict[str, str]:
    """One-line help per registered protocol, in registration order.

    Returns
    -------
    dict[str, str]
        Protocol name -> description.
    """
    return {name: spec.description for name, spec in _SPECS.items()}


def _accepted_params(name: str) -> set[str] | None:
    """Keyword names the protocol's resolver accepts (None: it accepts anything)."""
    sig = inspect.signature(_SPECS[name].resolve)
    names = set()
    for p in list(sig.parameters.values())[1:]:  # first one is severity
        if p.kind is p.VAR_KEYWORD:
            return None
        names.add(p.name)
    return names


def resolve_params(protocol: str, severity: float = 1.0, **params: Any) -> dict:
    """Full, explicit parameters a protocol will use at this severity.

    Parameters
    ----------
    protocol : str
        Registered protocol name.
    severity : float
        Severity S > 0.
    **params
        Explicit overrides.

    Returns
    -------
    dict
        Every parameter, JSON-friendly (tuples become lists).
    """
    spec = _get_spec(protocol)
    _check_severity(severity)
    accepted = _accepted_params(protocol)
    if accepted is not None:
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ValueError(
                f"protocol {protocol!r} has no parameter(s) {', '.join(unknown)}; "
                f"it accepts: {', '.join(sorted(accepted)) or 'none'}"
            )
    return _jsonable(spec.resolve(severity, **params))


def _get_spec(protocol: str) -> _ProtocolSpec:
    try:
        return _SPECS[protocol]
    except KeyError:
        raise ValueError(
            f"unknown noise protocol {protocol!r}; available: {', '.join(_SPECS)}"
        ) from None


def _make_public_protocol(spec: _ProtocolSpec) -> ProtocolFn:
    def protocol(
        labels: np.ndarray,
        rng: np.random.Generator | int,
        severity: float = 1.0,
        per_slice: bool = False,
        **params: Any,
    ) -> np.ndarray:
        arr = _check_labels(labels)
        resolved = resolve_params(spec.name, severity, **params)
        return _run_protocol(spec, arr, _as_rng(rng), severity, resolved, per_slice)

    protocol.__name__ = spec.name
    protocol.__qualname__ = spec.name
    protocol.__doc__ = spec.fn.__doc__
    return protocol


def _run_protocol(
    spec: _ProtocolSpec,
    labels: np.ndarray,
    rng: np.random.Generator,
    severity: float,
    resolved: dict,
    per_slice: bool,
) -> np.ndarray:
    """Apply one protocol to a validated array, whole or slice by slice."""
    work = labels.astype(np.uint8) if labels.dtype == bool else labels
    if per_slice:
        if work.ndim != 3:
            raise ValueError(
                f"per_slice=True needs 3D (D, H, W) labels, got shape {work.shape}"
            )
        if "n_classes" in resolved and resolved["n_classes"] is None:
            # The class set is the volume's, not each slice's (a slice may miss a class).
            resolved = {**resolved, "n_classes": max(2, int(work.max()) + 1 if work.size else 2)}
        # One seed per slice drawn up front, so slice z's noise does not depend
        # on how many random numbers the other slices consumed.
        seeds = rng.integers(0, 2**63 - 1, size=work.shape[0])
        out = np.empty_like(work)
        for z in range(work.shape[0]):
            out[z] = _call_fn(spec, work[z], np.random.default_rng(seeds[z]), severity, resolved)
    else:
        out = _call_fn(spec, work, rng, severity, resolved)
    return out.astype(labels.dtype, copy=False)


def _call_fn(spec, labels, rng, severity, resolved) -> np.ndarray:
    out = np.asarray(spec.fn(labels, rng, severity, **resolved))
    if out.shape != labels.shape:
        raise RuntimeError(
            f"noise protocol {spec.name!r} returned shape {out.shape} for labels of shape "
            f"{labels.shape}"
        )
    return out


# --------------------------------------------------------------------------- validation


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Validate a label array: 2D/3D, integer or bool, no negative values."""
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2D (H, W) or 3D (D, H, W) label array, got shape {arr.shape}"
        )
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{name}: labels must be integers (0 = background, 1..K-1 = classes), got dtype "
            f"{arr.dtype}; cast them first, e.g. labels.astype(np.uint8)"
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {arr.min()}")
    return arr


def _check_severity(severity: float) -> None:
    if not (isinstance(severity, (int, float, np.integer, np.floating)) and math.isfinite(severity)
            and severity > 0):
        raise ValueError(f"severity must be a finite number > 0, got {severity!r}")


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _check_probability(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {p}")
    return p


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _jsonable(value: Any) -> Any:
    """Convert tuples, numpy scalars and arrays to plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


# --------------------------------------------------------------------------- helpers


def _foreground_classes(labels: np.ndarray) -> np.ndarray:
    """Sorted foreground class values present in ``labels`` (int64, may be empty)."""
    values = np.unique(labels)
    return values[values != 0].astype(np.int64)


def _label_objects(
    labels: np.ndarray, classes: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of each foreground class, numbered across classes.

    Parameters
    ----------
    labels : np.ndarray, (H, W) or (D, H, W), int
    classes : sequence of int, optional
        Only these classes (default: every foreground class present).

    Returns
    -------
    object_ids : np.ndarray, same shape, int32
        0 = not an object, 1..n = object index.
    object_class : np.ndarray, (n + 1,), int64
        Class of each object; ``object_class[0] == 0``.
    """
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    object_ids = np.zeros(labels.shape, np.int32)
    object_class = [0]
    if classes is None:
        classes = _foreground_classes(labels)
    for c in classes:
        components, n = ndimage.label(labels == c, structure=structure)
        if n == 0:
            continue
        inside = components > 0
        object_ids[inside] = components[inside] + (len(object_class) - 1)
        object_class.extend([int(c)] * n)
    return object_ids, np.asarray(object_class, dtype=np.int64)


def _padded_box(box: tuple[slice, ...], pad: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Grow a bounding box by ``pad`` on every side, clipped to the array."""
    return tuple(
        slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, shape)
    )


def _random_rotation(ndim: int, max_angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Rotation matrix by an angle ~ U(±max_angle) (2D) or about a random axis (3D)."""
    angle = math.radians(rng.uniform(-max_angle_deg, max_angle_deg)) if max_angle_deg > 0 else 0.0
    c, s = math.cos(angle), math.sin(angle)
    if ndim == 2:
        return np.array([[c, -s], [s, c]])
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis) + 1e-12
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + s * k + (1 - c) * (k @ k)  # Rodrigues' formula


def _uniform_rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    """Rotation matrix drawn uniformly (Haar) over all orientations."""
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _face_neighbour_views(ndim: int):
    """Pairs of slices (target, source) so that ``a[target] op= b[source]`` visits the
    2·ndim face neighbours of every pixel without wrapping round the edges."""
    pairs = []
    for axis in range(ndim):
        for lo, hi in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            target = [slice(None)] * ndim
            source = [slice(None)] * ndim
            target[axis], source[axis] = lo, hi
            pairs.append((tuple(target), tuple(source)))
    return pairs


def _equivalent_radius(size: float, ndim: int) -> float:
    """Radius of the disc (2D) or ball (3D) with this area/volume."""
    if ndim == 2:
        return math.sqrt(size / math.pi)
    return (3.0 * size / (4.0 * math.pi)) ** (1.0 / 3.0)


def _at_least_one(chosen: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Force one chosen item when p > 0 and chance chose none, so that a sample
    picked for corruption is always actually corrupted."""
    if p > 0 and chosen.size and not chosen.any():
        chosen[rng.integers(chosen.size)] = True
    return chosen


# --------------------------------------------------------------------------- erode_dilate


def _resolve_erode_dilate(
    severity: float,
    radius: int | Sequence[int] | None = None,
    mode: str = "random",
    p_erode: float = 0.5,
    max_radius_fraction: float | None = 0.5,
) -> dict:
    if radius is None:
        low, high = 2, max(2, int(round(2 + severity * (10 - 2))))
    elif np.isscalar(radius):
        low = high = int(radius)
    else:
        low, high = (int(v) for v in radius)
    if not 1 <= low <= high:
        raise ValueError(f"radius must be an int >= 1 or a range (low, high) with 1 <= low <= high, "
                         f"got {radius!r}")
    if max_radius_fraction is not None and max_radius_fraction <= 0:
        raise ValueError(f"max_radius_fraction must be > 0 or None, got {max_radius_fraction}")
    return {
        "radius": [low, high],
        "mode": _check_choice("mode", mode, ("random", "erode", "dilate")),
        "p_erode": _check_probability("p_erode", p_erode),
        "max_radius_fraction": None if max_radius_fraction is None else float(max_radius_fraction),
    }


def _erode_dilate_objects(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    radius: Sequence[int],
    mode: str,
    p_erode: float,
    max_radius_fraction: float | None,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """Erode or dilate each object (of ``classes``) by a Euclidean disk/ball.

    Erosion by radius r keeps the object pixels farther than r from its
    outside; dilation adds pixels within r of the object. Both use the exact
    Euclidean distance transform, which equals a morphological operation with
    ``skimage.morphology.disk(r)`` / ``ball(r)`` and is much faster for large r.
    The image border does not count as outside (objects cut by the border are
    not eroded from it). Dilation only grows into pixels that are background
    in the input, so no foreground (of any class) is overwritten, and two
    growing objects do not fight over a pixel: objects are processed in a random
    order and the first one to claim a pixel keeps it.
    """
    out = labels.copy()
    object_ids, object_class = _label_objects(labels, classes)
    n_objects = len(object_class) - 1
    if n_objects == 0:
        return out
    boxes = ndimage.find_objects(object_ids)
    claimed = labels != 0
    low, high = radius
    # Draw every per-object quantity up front, indexed by object, so each
    # object's radius/direction does not depend on the processing order.
    radii = rng.integers(low, high + 1, size=n_objects)
    if mode == "erode":
        erode = np.ones(n_objects, bool)
    elif mode == "dilate":
        erode = np.zeros(n_objects, bool)
    else:
        erode = rng.random(n_objects) < p_erode
    for k in rng.permutation(n_objects):
        window = _padded_box(boxes[k], high + 1, labels.shape)
        obj = object_ids[window] == k + 1
        depth = ndimage.distance_transform_edt(obj)  # distance to the object's outside
        r = int(radii[k])
        if max_radius_fraction is not None:
            # Cap by the inscribed radius so small objects keep their core.
            r = max(1, min(r, int(max_radius_fraction * depth.max())))
        out_view = out[window]
        if erode[k]:
            keep = depth > r
            if not keep.any():  # never delete an object outright: keep its deepest pixels
                keep = depth >= depth.max()
            out_view[obj & ~keep] = 0
        else:
            grow = (ndimage.distance_transform_edt(~obj) <= r) & ~claimed[window]
            out_view[grow] = object_class[k + 1]
            claimed[window] |= grow
    return out


def _erode_dilate(labels, rng, severity, **params) -> np.ndarray:
    """Erode or dilate every object by a disk/ball of radius r (per object, random)."""
    return _erode_dilate_objects(labels, rng, **params)


# --------------------------------------------------------------------------- minority_erode


def _resolve_minority_erode(
    severity: float,
    target_class: int | None = None,
    radius: int | Sequence[int] | None = None,
    mode: str = "erode",
    p_erode: float = 0.5,
    max_radius_fraction: float | None = 0.5,
) -> dict:
    resolved = _resolve_erode_dilate(severity, radius, mode, p_erode, max_radius_fraction)
    if target_class is not None and int(target_class) < 1:
        raise ValueError(f"target_class must be a foreground class >= 1, got {target_class}")
    resolved["target_class"] = None if target_class is None else int(target_class)
    return resolved


def _minority_erode(labels, rng, severity, *, target_class, **params) -> np.ndarray:
    """Erode/dilate only the objects of one class (default: the smallest class by area)."""
    if target_class is None:
        classes = _foreground_classes(labels)
        if classes.size == 0:
            return labels.copy()
        areas = np.bincount(labels.ravel().astype(np.int64))[classes]
        target_class = int(classes[np.argmin(areas)])  # ties: smallest class value
    return _erode_dilate_objects(labels, rng, classes=[target_class], **params)


# --------------------------------------------------------------------------- area_target


def _resolve_area_target(severity: float, beta: float | None = None, mode: str = "random") -> dict:
    if beta is None:
        beta = max(0.05, 1.0 - 0.5 * severity)
    beta = float(beta)
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    return {"beta": beta, "mode": _check_choice("mode", mode, ("random", "erode", "dilate"))}


def _area_target(labels, rng, severity, *, beta: float, mode: str) -> np.ndarray:
    """Shrink the foreground to beta·A pixels (erode) or grow it to A/beta (dilate).

    Pixels are removed (added) in order of increasing distance to the
    foreground boundary, ties broken at random: the same as repeated 1-pixel
    Euclidean erosions (dilations) with the last step only partly applied, so
    the target area is met to the pixel. Erosion measures, for each class, the
    distance to anything that is not that class; dilation gives each new pixel
    the class of its nearest foreground pixel (no class overwrites another).
    """
    out = labels.copy()
    foreground = labels != 0
    area = int(foreground.sum())
    if area == 0:
        return out
    do_erode = rng.random() < 0.5 if mode == "random" else mode == "erode"
    if do_erode:
        n_remove = area - int(round(beta * area))
        depth = np.zeros(labels.shape, np.float64)
        for c in _foreground_classes(labels):
            is_c = labels == c
            depth[is_c] = ndimage.distance_transform_edt(is_c)[is_c]
        index = np.flatnonzero(foreground)
        order = np.lexsort((rng.random(index.size), depth.ravel()[index]))
        out.ravel()[index[order[:n_remove]]] = 0
    else:
        target = min(labels.size, int(round(area / beta)))
        n_add = target - area
        if n_add <= 0:
            return out
        distance, nearest = ndimage.distance_transform_edt(~foreground, return_indices=True)
        index = np.flatnonzero(~foreground)
        order = np.lexsort((rng.random(index.size), distance.ravel()[index]))
        chosen = index[order[:n_add]]
        nearest_flat = np.ravel_multi_index(tuple(a.ravel()[chosen] for a in nearest), labels.shape)
        out.ravel()[chosen] = labels.ravel()[nearest_flat]
    return out


# --------------------------------------------------------------------------- affine


def _resolve_affine(severity: float, theta: float | None = None, shift: float | None = None) -> dict:
    theta = 30.0 * severity if theta is None else float(theta)
    shift = 0.2 * severity if shift is None else float(shift)
    if theta < 0 or shift < 0:
        raise ValueError(f"theta and shift must be >= 0, got theta={theta}, shift={shift}")
    return {"theta": theta, "shift": shift}


def _affine(labels, rng, severity, *, theta: float, shift: float) -> np.ndarray:
    """Rotate each object by U(±theta) degrees about its centroid and shift it.

    The shift along each axis is U(±shift × the object's bounding-box extent).
    In 3D the rotation is about a random axis. Objects are resampled with
    linear interpolation of their mask (threshold 0.5) so the outlines stay
    smooth, and painted in a random order onto an empty canvas; a later object
    does not overwrite an earlier one. Parts moved outside the image are lost.
    """
    ndim = labels.ndim
    out = np.zeros_like(labels)
    object_ids, object_class = _label_objects(labels)
    n_objects = len(object_class) - 1
    if n_objects == 0:
        return out
    boxes = ndimage.find_objects(object_ids)
    for k in rng.permutation(n_objects):
        box = boxes[k]
        extent = np.array([s.stop - s.start for s in box], float)
        rotation = _random_rotation(ndim, theta, rng)
        translation = rng.uniform(-shift, shift, size=ndim) * extent
        # Work in a local frame large enough for any rotation and the shift, not
        # clipped to the image, so the rotated object is never truncated early.
        pad = int(math.ceil(np.linalg.norm(extent) / 2 + np.abs(translation).max())) + 2
        local = np.zeros(tuple(int(e) + 2 * pad for e in extent), np.float32)
        inner = tuple(slice(pad, pad + int(e)) for e in extent)
        local[inner] = object_ids[box] == k + 1
        centroid = np.array(ndimage.center_of_mass(local))
        # output x' = R (x - c) + c + t  <=>  input x = R^T x' + c - R^T (c + t)
        inverse = rotation.T
        offset = centroid - inverse @ (centroid + translation)
        moved = ndimage.affine_transform(local, inverse, offset=offset, order=1) > 0.5
        # Paste the local frame back into image coordinates, clipped to the image.
        origin = [s.start - pad for s in box]
        dst, src = [], []
        for o, size, n in zip(origin, moved.shape, labels.shape):
            lo, hi = max(0, o), min(n, o + size)
            if lo >= hi:
                break
            dst.append(slice(lo, hi))
            src.append(slice(lo - o, hi - o))
        else:
            target = out[tuple(dst)]
            target[moved[tuple(src)] & (target == 0)] = object_class[k + 1]
    return out


# --------------------------------------------------------------------------- markov_boundary


def _resolve_markov_boundary(
    severity: float,
    steps: int | None = None,
    theta1: float | Sequence[float] = (0.8, 0.2),
    theta2: float = 0.05,
    theta3: float | None = None,
    band: int = 2,
    sigma: float = 1.0,
) -> dict:
    steps = int(round(80 + 120 * severity)) if steps is None else int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    theta1 = [float(theta1)] if np.isscalar(theta1) else [float(t) for t in theta1]
    if not theta1:
        raise ValueError("theta1 needs at least one value")
    for t in theta1:
        _check_probability("theta1", t)
    theta3 = min(1.0, 0.2 * severity) if theta3 is None else theta3
    if int(band) < 1 or float(sigma) < 0:
        raise ValueError(f"band must be >= 1 and sigma >= 0, got band={band}, sigma={sigma}")
    return {
        "steps": steps,
        "theta1": theta1,
        "theta2": _check_probability("theta2", theta2),
        "theta3": _check_probability("theta3", theta3),
        "band": int(band),
        "sigma": float(sigma),
    }


def _markov_boundary(
    labels, rng, severity, *, steps: int, theta1: list, theta2: float, theta3: float,
    band: int, sigma: float,
) -> np.ndarray:
    """Random boundary growth/shrinkage for T steps, boundary flips, smoothing.

    At every step each object independently grows (prob. theta1) or shrinks;
    a growing object takes each adjacent background pixel with prob. theta2, a
    shrinking one loses each of its pixels that touch background with prob.
    theta2 (face neighbours; the image border is not background). theta1 is
    drawn once per sample from the given values (default 0.8 or 0.2: mostly
    over- or mostly under-segmented). Then pixels within ``band`` px of a
    boundary flip with prob. theta3 (foreground -> background, background ->
    class of the nearest object), and each class's indicator is smoothed by a
    Gaussian (sigma px) and the label map rebuilt by argmax. The whole image is
    updated at once per step, so the cost does not grow with the object count.

    Scale: with theta2 = 0.05 the boundary moves about 0.05·T·(2·theta1 − 1)·1.7
    px (the rough Eden-like front advances faster than a smooth one): about
    ±10 px at T = 200 and theta1 0.8 / 0.2 (measured on a disc of radius 100).
    Objects smaller than that vanish when shrinking; for small nuclei lower
    the severity or pass ``steps``.
    """
    object_ids, object_class = _label_objects(labels)
    n_objects = len(object_class) - 1
    if n_objects == 0:
        return labels.copy()
    p_grow = float(theta1[rng.integers(len(theta1))])
    neighbour_views = _face_neighbour_views(labels.ndim)
    # uint16 ids halve the memory traffic of the per-step whole-image passes.
    if n_objects < 2**16:
        object_ids = object_ids.astype(np.uint16)
    source = np.zeros_like(object_ids)
    growing_ids = np.empty_like(object_ids)
    background = np.empty(labels.shape, bool)
    is_growing = np.empty(labels.shape, bool)
    touches_background = np.empty(labels.shape, bool)
    scratch = np.empty(labels.shape, bool)
    for _ in range(steps):
        growing = rng.random(n_objects + 1) < p_grow
        growing[0] = False
        np.equal(object_ids, 0, out=background)
        np.take(growing, object_ids, out=is_growing)
        # Growth: a background pixel takes the id of a growing neighbour.
        np.multiply(object_ids, is_growing, out=growing_ids)
        source.fill(0)
        for target, src in neighbour_views:
            np.maximum(source[target], growing_ids[src], out=source[target])
        np.logical_and(background, source, out=scratch)
        candidates = np.flatnonzero(scratch)
        taken = candidates[rng.random(candidates.size) < theta2]
        # Shrinkage: a pixel of a shrinking object that touches background.
        touches_background.fill(False)
        for target, src in neighbour_views:
            touches_background[target] |= background[src]
        np.logical_or(background, is_growing, out=scratch)
        np.greater(touches_background, scratch, out=scratch)  # touches & ~(bg | growing)
        candidates = np.flatnonzero(scratch)
        lost = candidates[rng.random(candidates.size) < theta2]
        object_ids.ravel()[taken] = source.ravel()[taken]
        object_ids.ravel()[lost] = 0
    noisy = object_class[object_ids]

    if theta3 > 0 and (noisy != 0).any():
        boundary = np.zeros(labels.shape, bool)
        for target, src in neighbour_views:
            boundary[target] |= noisy[target] != noisy[src]
        if band > 1:
            boundary = ndimage.binary_dilation(boundary, iterations=band - 1)
        candidates = np.flatnonzero(boundary)
        flipped = candidates[rng.random(candidates.size) < theta3]
        nearest = ndimage.distance_transform_edt(
            noisy == 0, return_distances=False, return_indices=True
        )
        nearest_class = noisy[tuple(nearest)]
        flat = noisy.ravel()
        flat[flipped] = np.where(flat[flipped] == 0, nearest_class.ravel()[flipped], 0)

    if sigma > 0:
        classes = np.unique(noisy)
        smoothed = np.stack(
            [ndimage.gaussian_filter((noisy == c).astype(np.float32), sigma) for c in classes]
        )
        noisy = classes[np.argmax(smoothed, axis=0)]
    return noisy.astype(labels.dtype)


# --------------------------------------------------------------------------- missing


def _resolve_p(default_at_s1: float):
    def resolve(severity: float, p: float | None = None) -> dict:
        p = min(1.0, default_at_s1 * severity) if p is None else p
        return {"p": _check_probability("p", p)}

    return resolve


def _missing(labels, rng, severity, *, p: float) -> np.ndarray:
    """Drop whole objects (set them to background) with probability p each.

    At least one object is dropped when p > 0 and the sample has any.
    """
    out = labels.copy()
    object_ids, object_class = _label_objects(labels)
    n_objects = len(object_class) - 1
    if n_objects == 0:
        return out
    dropped = _at_least_one(rng.random(n_objects) < p, p, rng)
    out[np.concatenate([[False], dropped])[object_ids]] = 0
    return out


# --------------------------------------------------------------------------- spurious


def _resolve_spurious(
    severity: float,
    p: float | None = None,
    size: Sequence[float] | None = None,
    default_radius: Sequence[float] = (4.0, 12.0),
    aspect: Sequence[float] = (0.5, 1.0),
    max_tries: int = 50,
) -> dict:
    p = min(1.0, 0.3 * severity) if p is None else p
    ranges = {"default_radius": default_radius, "aspect": aspect}
    if size is not None:
        ranges["size"] = size
    for name, value in ranges.items():
        low, high = (float(v) for v in value)
        if not 0 < low <= high:
            raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high, got {value!r}")
    if float(aspect[1]) > 1:
        raise ValueError(f"aspect ratios must be <= 1, got {aspect!r}")
    return {
        "p": _check_probability("p", p),
        "size": None if size is None else [float(v) for v in size],
        "default_radius": [float(v) for v in default_radius],
        "aspect": [float(v) for v in aspect],
        "max_tries": max(1, int(max_tries)),
    }


def _random_blob(radius: float, aspect: Sequence[float], ndim: int, rng) -> np.ndarray:
    """Boolean ellipse/ellipsoid with the area/volume of a disc/ball of ``radius``,
    random axis ratios in ``aspect`` and random orientation; odd-sized, centred."""
    if ndim == 2:
        q = rng.uniform(*aspect)
        axes = radius * np.array([1 / math.sqrt(q), math.sqrt(q)])
    else:
        q = rng.uniform(*aspect, size=3)
        axes = radius * q / np.prod(q) ** (1 / 3)
    axes = np.maximum(axes, 0.5)
    half = int(math.ceil(axes.max()))
    grid = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * ndim, indexing="ij"), -1)
    local = grid @ _uniform_rotation(ndim, rng)  # coordinates in the blob's own axes
    blob = ((local / axes) ** 2).sum(-1) <= 1.0
    blob[(half,) * ndim] = True
    return blob


def _spurious(
    labels, rng, severity, *, p: float, size, default_radius, aspect, max_tries: int
) -> np.ndarray:
    """Add false blobs on background: about p × (number of objects), at least one.

    Each blob is an ellipse/ellipsoid whose area is that of a randomly chosen
    object of the sample (or radius ~ U(size) / U(default_radius) px when
    ``size`` is given / the sample is empty), with a class drawn uniformly from
    the foreground classes present (class 1 if none). A position where the
    blob and a 1-pixel margin lie entirely on background is searched for
    (``max_tries`` random centres); failing that, the blob goes where it
    overlaps least and is painted on background pixels only.
    """
    out = labels.copy()
    if p == 0:
        return out
    ndim = labels.ndim
    object_ids, object_class = _label_objects(labels)
    n_objects = len(object_class) - 1
    n_blobs = max(1, int(round(p * n_objects)))
    object_sizes = np.bincount(object_ids.ravel())[1:]
    classes = _foreground_classes(labels)
    if classes.size == 0:
        classes = np.array([1])
    structure = ndimage.generate_binary_structure(ndim, ndim)
    free = ~ndimage.binary_dilation(labels != 0, structure)
    for _ in range(n_blobs):
        if size is not None:
            radius = rng.uniform(*size)
        elif n_objects:
            radius = _equivalent_radius(object_sizes[rng.integers(n_objects)], ndim)
        else:
            radius = rng.uniform(*default_radius)
        blob = _random_blob(radius, aspect, ndim, rng)
        blob_class = classes[rng.integers(classes.size)]
        margin = ndimage.binary_dilation(np.pad(blob, 1), structure)
        half = blob.shape[0] // 2 + 1  # half-size of the margin array
        best = None
        for _ in range(max_tries):
            centre = [rng.integers(n) for n in labels.shape]
            window, local = [], []
            for c, n in zip(centre, labels.shape):
                lo, hi = max(0, c - half), min(n, c + half + 1)
                window.append(slice(lo, hi))
                local.append(slice(lo - (c - half), hi - (c - half)))
            window, local = tuple(window), tuple(local)
            clash = int((margin[local] & ~free[window]).sum())
            if best is None or clash < best[0]:
                best = (clash, window, local)
            if clash == 0:
                break
        _, window, local = best
        inner = np.pad(blob, 1)[local]
        target = out[window]
        painted = inner & (target == 0)
        target[painted] = blob_class
        free[window] &= ~margin[local]
    return out


# --------------------------------------------------------------------------- pixel_flip


def _resolve_flip(default_at_s1: float):
    def resolve(severity: float, p: float | None = None, n_classes: int | None = None) -> dict:
        p = min(1.0, default_at_s1 * severity) if p is None else p
        if n_classes is not None and int(n_classes) < 2:
            raise ValueError(f"n_classes must be >= 2 (background + classes), got {n_classes}")
        return {
            "p": _check_probability("p", p),
            "n_classes": None if n_classes is None else int(n_classes),
        }

    return resolve


def _n_classes(labels: np.ndarray, n_classes: int | None) -> int:
    highest = int(labels.max()) if labels.size else 0
    if n_classes is None:
        return max(2, highest + 1)
    if highest >= n_classes:
        raise ValueError(f"labels contain class {highest} but n_classes={n_classes}")
    return n_classes


def _pixel_flip(labels, rng, severity, *, p: float, n_classes: int | None) -> np.ndarray:
    """Flip each pixel with prob. p to a different class, drawn uniformly.

    Classes are 0..n_classes-1 (default: max label + 1, at least 2), so a
    binary mask flips 0 <-> 1 and background can become any class.
    """
    k = _n_classes(labels, n_classes)
    out = labels.copy()
    flipped = np.flatnonzero(rng.random(labels.shape) < p)
    # Adding 1..k-1 modulo k gives a uniformly random *other* class.
    offset = rng.integers(1, k, size=flipped.size)
    flat = out.ravel()
    flat[flipped] = (flat[flipped].astype(np.int64) + offset) % k
    return out


# --------------------------------------------------------------------------- class_flip


def _class_flip(labels, rng, severity, *, p: float, n_classes: int | None) -> np.ndarray:
    """Relabel whole objects to another foreground class with prob. p (multi-class only).

    The new class is uniform over the other foreground classes 1..n_classes-1;
    the foreground set is unchanged. At least one object flips when p > 0 and
    the sample has any.
    """
    k = _n_classes(labels, n_classes)
    if k < 3:
        raise ValueError(
            "class_flip needs multi-class labels (at least two foreground classes); these "
            f"labels are binary (n_classes={k}). Use missing, spurious, erode_dilate or "
            "pixel_flip, or pass n_classes if some classes are absent from this sample."
        )
    out = labels.copy()
    object_ids, object_class = _label_objects(labels)
    n_objects = len(object_class) - 1
    if n_objects == 0:
        return out
    flipped = _at_least_one(rng.random(n_objects) < p, p, rng)
    # Adding 1..k-2 within the foreground classes 1..k-1 (cyclic) gives a uniform other class.
    offset = rng.integers(1, k - 1, size=n_objects)
    new_class = object_class.copy()
    new_class[1:] = np.where(flipped, (object_class[1:] - 1 + offset) % (k - 1) + 1, object_class[1:])
    inside = object_ids > 0
    out[inside] = new_class[object_ids[inside]]
    return out


# --------------------------------------------------------------------------- built-in registry

register_protocol(
    "erode_dilate", _erode_dilate, resolve_params=_resolve_erode_dilate,
    description="erode or dilate each object by a disk/ball, radius ~ U{2..2+8S} px capped "
    "at max_radius_fraction (0.5) x its inscribed radius; mode=random|erode|dilate",
)
register_protocol(
    "area_target", _area_target, resolve_params=_resolve_area_target,
    description="erode to beta x foreground area or dilate to area/beta (beta = 1 - 0.5S, "
    "0.5 at S=1), exact to the pixel; mode=random|erode|dilate",
)
register_protocol(
    "affine", _affine, resolve_params=_resolve_affine,
    description="rotate each object by U(+-theta) about its centroid (theta = 30S deg) and "
    "shift it by up to shift x its size per axis (shift = 0.2S)",
)
register_protocol(
    "markov_boundary", _markov_boundary, resolve_params=_resolve_markov_boundary,
    description="T = 80+120S steps of random boundary growth (theta1 0.8 or 0.2) / shrinkage "
    "(theta2 0.05 per pixel), boundary flips (theta3 = 0.2S), Gaussian smoothing",
)
register_protocol(
    "missing", _missing, resolve_params=_resolve_p(0.3),
    description="drop whole objects to background with prob. p = 0.3S (at least one)",
)
register_protocol(
    "spurious", _spurious, resolve_params=_resolve_spurious,
    description="add about p x (number of objects) false blobs (p = 0.3S, at least one) "
    "sized like the sample's objects, on background",
)
register_protocol(
    "pixel_flip", _pixel_flip, resolve_params=_resolve_flip(0.05),
    description="flip each pixel with prob. p = 0.05S to a random other class",
)
register_protocol(
    "class_flip", _class_flip, resolve_params=_resolve_flip(0.3),
    description="relabel whole objects to another foreground class with prob. p = 0.3S "
    "(multi-class labels only)",
)
register_protocol(
    "minority_erode", _minority_erode, resolve_params=_resolve_minority_erode,
    description="erode (mode=erode|dilate|random) only objects of target_class (default: "
    "smallest class by area), radius as erode_dilate",
)


# --------------------------------------------------------------------------- running


def _parse_protocols(protocol: str | Sequence[str]) -> list[str]:
    """'missing+spurious' or ['missing', 'spurious'] -> ['missing', 'spurious']."""
    names = protocol.split("+") if isinstance(protocol, str) else list(protocol)
    parts = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"protocol names must be strings, got {name!r}")
        parts.extend(n.strip() for n in name.split("+"))
    if not parts or any(not n for n in parts):
        raise ValueError(f"invalid protocol specification {protocol!r}")
    for name in parts:
        _get_spec(name)
    return parts


def _split_params(
    protocols: list[str], params: dict, protocol_params: dict | None
) -> list[dict]:
    """Keyword parameters for each protocol step.

    Plain keywords go to every protocol that accepts them (an error if none
    does); ``protocol_params[name]`` adds or overrides keywords for one protocol.
    """
    protocol_params = dict(protocol_params or {})
    for name in protocol_params:
        if name not in protocols:
            raise ValueError(f"protocol_params names {name!r}, which is not in {protocols}")
    used: set[str] = set()
    per_step = []
    for name in protocols:
        accepted = _accepted_params(name)
        mine = {k: v for k, v in params.items() if accepted is None or k in accepted}
        used |= set(mine)
        mine.update(protocol_params.get(name, {}))
        per_step.append(mine)
    unused = sorted(set(params) - used)
    if unused:
        raise ValueError(
            f"parameter(s) {', '.join(unused)} not accepted by any of {protocols}"
        )
    return per_step


def corrupt_sample(
    labels: np.ndarray,
    protocol: str | Sequence[str],
    rng: np.random.Generator | int,
    severity: float = 1.0,
    per_slice: bool = False,
    protocol_params: dict[str, dict] | None = None,
    **params: Any,
) -> np.ndarray:
    """Corrupt one label array with one protocol or several in order.

    Parameters
    ----------
    labels : np.ndarray, (H, W) or (D, H, W), integer or bool
        Clean labels (0 = background); not modified.
    protocol : str or list of str
        Protocol name, ``"a+b"`` or ``["a", "b"]`` (applied in that order).
    rng : np.random.Generator or int
        Random generator (or a seed), shared by the steps.
    severity : float
        Severity S > 0 (see the module docstring for each protocol's mapping).
    per_slice : bool
        3D only: apply the 2D protocol to every slice independently.
    protocol_params : dict, optional
        ``{protocol: {param: value}}`` for parameters of one protocol only.
    **params
        Explicit parameters, given to every listed protocol that accepts them.

    Returns
    -------
    np.ndarray
        Noisy labels, same shape and dtype as ``labels``.
    """
    arr = _check_labels(labels)
    protocols = _parse_protocols(protocol)
    step_params = _split_params(protocols, params, protocol_params)
    rng = _as_rng(rng)
    noisy = arr
    for name, kwargs in zip(protocols, step_params):
        resolved = resolve_params(name, severity, **kwargs)
        noisy = _run_protocol(_SPECS[name], noisy, rng, severity, resolved, per_slice)
    return noisy.copy() if noisy is arr else noisy


@dataclass
class NoiseRun:
    """Result of :func:`simulate_noise`.

    Attributes
    ----------
    noisy : list of np.ndarray
        Noisy labels, one per input sample, same shapes and dtypes (uncorrupted
        samples are copies of the clean ones).
    noise_masks : list of np.ndarray, bool
        True where ``noisy != clean``.
    corrupted : list of bool
        Which samples were chosen for corruption.
    params : dict
        Everything needed to reproduce the run (JSON types only): protocols,
        fraction, severity, seed, per_slice, the resolved parameters of every
        step, the chosen indices and the package version.
    """

    noisy: list[np.ndarray]
    noise_masks: list[np.ndarray]
    corrupted: list[bool]
    params: dict = field(default_factory=dict)

    def to_json_dict(self) -> dict:
        """JSON-serialisable summary: ``params``, ``corrupted`` and, per sample,
        the fraction of pixels changed (``noise_fraction``)."""
        return _jsonable(
            {
                "params": self.params,
                "corrupted": [bool(c) for c in self.corrupted],
                "noise_fraction": [
                    float(m.mean()) if m.size else 0.0 for m in self.noise_masks
                ],
            }
        )


def _n_chosen(fraction: float, n: int) -> int:
    """round(fraction · n), half rounded up (Python's round() rounds half to even)."""
    return min(n, int(math.floor(fraction * n + 0.5)))


def simulate_noise(
    labels: Sequence[np.ndarray],
    protocol: str | Sequence[str],
    fraction: float = 1.0,
    severity: float = 1.0,
    seed: int = 0,
    *,
    per_slice: bool = False,
    protocol_params: dict[str, dict] | None = None,
    **params: Any,
) -> NoiseRun:
    """Corrupt a fraction of a dataset's labels, reproducibly.

    Parameters
    ----------
    labels : list of np.ndarray, each (H, W) or (D, H, W), integer or bool
        Clean labels; not modified. Shapes may differ between samples.
    protocol : str or list of str
        Protocol name, ``"a+b"`` or ``["a", "b"]``: every chosen sample goes
        through the protocols in order.
    fraction : float
        α in [0, 1]: exactly ``round(α·N)`` samples (half up) are corrupted,
        chosen with ``np.random.default_rng(seed)``.
    severity : float
        S > 0, scales each protocol inside its usual range.
    seed : int
        Non-negative seed. Sample i, step j uses its own generator seeded by
        ``SeedSequence(seed, spawn_key=(i, j))``, so its noise does not depend
        on the other samples.
    per_slice : bool
        3D only: apply the 2D protocol to every slice independently.
    protocol_params : dict, optional
        ``{protocol: {param: value}}`` for parameters of one protocol only.
    **params
        Explicit parameters, given to every listed protocol that accepts them.
        ``n_classes`` (pixel_flip, class_flip) defaults to the dataset's
        max label + 1 rather than each sample's.

    Returns
    -------
    NoiseRun
    """
    if isinstance(labels, np.ndarray):
        raise TypeError(
            "simulate_noise takes a list of label arrays; wrap a single array as [labels]"
        )
    clean = [_check_labels(lab, name=f"labels[{i}]") for i, lab in enumerate(labels)]
    protocols = _parse_protocols(protocol)
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    _check_severity(severity)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)

    step_params = _split_params(protocols, params, protocol_params)
    highest = max((int(lab.max()) for lab in clean if lab.size), default=0)
    for name, kwargs in zip(protocols, step_params):
        accepted = _accepted_params(name)
        if accepted is not None and "n_classes" in accepted and kwargs.get("n_classes") is None:
            kwargs["n_classes"] = max(2, highest + 1)
    resolved = [resolve_params(n, severity, **kw) for n, kw in zip(protocols, step_params)]

    n = len(clean)
    chosen = np.sort(
        np.random.default_rng(np.random.SeedSequence(seed)).choice(
            n, _n_chosen(fraction, n), replace=False
        )
    )
    corrupted = np.zeros(n, bool)
    corrupted[chosen] = True

    noisy = []
    for i, lab in enumerate(clean):
        out = lab
        if corrupted[i]:
            for j, (name, kwargs) in enumerate(zip(protocols, resolved)):
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, j)))
                out = _run_protocol(_SPECS[name], out, rng, severity, kwargs, per_slice)
        noisy.append(out.copy() if out is lab else out)

    from .. import __version__

    run_params = {
        "protocols": protocols,
        "steps": [{"protocol": n_, "params": kw} for n_, kw in zip(protocols, resolved)],
        "fraction": fraction,
        "severity": float(severity),
        "seed": seed,
        "per_slice": bool(per_slice),
        "n_samples": n,
        "corrupted_indices": chosen.tolist(),
        "version": __version__,
    }
    return NoiseRun(
        noisy=noisy,
        noise_masks=[a != b for a, b in zip(noisy, clean)],
        corrupted=corrupted.tolist(),
        params=_jsonable(run_params),
    )


# ``model_noise`` needs the training engine and the images; its module registers a
# stub here so that every listing of the protocols shows it (torch loads lazily).
from . import model_noise as _model_noise  # noqa: E402,F401
