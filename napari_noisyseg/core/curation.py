"""The curation model: proposed changes as regions, a person's decisions, and their log.

No Qt and no napari: the review widget, the CLI and batch scripts all drive the
same :class:`CurationSession`, and the curation log lives here, not in a widget.

Arrays
------
Everything is kept **per source**, i.e. per labels array the person gave (a 2D
image, a 2D stack or a 3D volume), in the source's own shape and axis order:

* ``given``     the original labels: a private read-only copy, with its SHA-256;
                never modified (:meth:`CurationSession.original_unchanged` checks it).
* ``cleaned``   what the person is building: the original plus accepted changes
                plus anything they painted by hand. Writable; a viewer may show
                *this very array* in a labels layer and paint on it.
* ``noise``     float32 noise likelihood in [0, 1] from the last result.
* ``corrected`` the last result's proposed labels.
* ``region_map`` int32 region ids (0 = no proposal).

Regions
-------
A region is a connected component of proposed change of one kind (``add``,
``remove``, ``relabel``; see :mod:`napari_noisyseg.core.proposals`). Ids are
unique across sources and across rounds (a retrain adds new ids; old decided
regions keep theirs). 2D stacks are split per slice (a region never spans two
images); 3D volumes keep 3D-connected regions.

Decisions and hand edits
------------------------
The session keeps a second array per source, the *decided* labels: the
original with every accepted change and nothing else. A pixel is a **hand
edit** when ``cleaned`` differs from it. Decisions write only the pixels of
their own region, and only where the pixel is not a hand edit, into both
arrays; so accepting never reverts a stroke a person painted, anywhere.
:meth:`~CurationSession.undo` puts back, in those two arrays, exactly the values
the last decision replaced, again skipping pixels painted by hand since.

Trust
-----
:meth:`~CurationSession.trust_masks` marks accepted and rejected regions (a
rejection means the original label was right) and hand edits as trusted; a
retrain trains on :meth:`~CurationSession.cleaned_labels` with that trust, and
:meth:`~CurationSession.add_result` never proposes changes on trusted pixels.

Log
---
Every decision appends one row per region to :attr:`CurationSession.log`
(:data:`LOG_COLUMNS`): time (UTC, ISO 8601), user (``getpass.getuser()``),
decision (``accept``/``reject``/``undo``), region, source, sample, kind, area,
likelihood, the region's status before and after, the number of cleaned pixels
the row changed, and ``step`` (rows of one bulk decision, or of its undo,
share a step). :meth:`~CurationSession.apply_decisions` replays such a file.

Agreement between methods
-------------------------
After a method comparison (``noisyseg compare``, the Compare methods widget)
the session reviews the proposals of the first compared method, and every
region also carries its **agreement**: the mean, over its pixels, of the
fraction of compared methods that flag the pixel as noisy, plus the methods
that flag the region as a whole (``flagged_by``; see
:mod:`napari_noisyseg.core.agreement`). :meth:`~CurationSession.sorted_regions`
then sorts by ``agreement`` too. A later round without a comparison (a plain
retrain) clears it: its regions have no agreement (``None``).
"""

from __future__ import annotations

import csv
import getpass
import hashlib
import io as _io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .agreement import MethodAgreement
from .proposals import Region, find_regions

STATUSES = ("pending", "accepted", "rejected")
DECISIONS = ("accept", "reject", "undo")
SORT_KEYS = ("likelihood", "reliability", "agreement")
DEFAULT_MIN_AREA = 4

LOG_COLUMNS = (
    "time", "user", "decision", "region", "source", "sample", "kind", "area", "likelihood",
    "previous", "status", "pixels_changed", "step", "round", "method",
)
REGION_COLUMNS = (
    "id", "source", "sample", "kind", "area", "likelihood", "reliability", "from_class",
    "to_class", "centroid", "bbox", "status", "round", "agreement", "flagged_by",
)


# ----------------------------------------------------------------------------- data


@dataclass
class ReviewRegion(Region):
    """A :class:`~napari_noisyseg.core.proposals.Region` with what the review needs.

    Attributes
    ----------
    source_index : int
        Which source (0-based) the region lies in.
    sample : str
        Name of the sample (image, or slice of a stack/volume) at the region's centroid.
    reliability : float
        That sample's reliability in [0, 1] (low = review first).
    round : int
        Which result proposed it (1 = first training, 2 = first retrain, ...).
    agreement : float or None
        After a method comparison: mean fraction of the compared methods that
        flag its pixels (0..1); None when no comparison was run.
    flagged_by : tuple of str
        After a method comparison: the methods whose mean noise over the region
        reaches the agreement threshold.
    """

    source_index: int = 0
    sample: str = ""
    reliability: float = 1.0
    round: int = 1
    agreement: float | None = None
    flagged_by: tuple = ()

    @property
    def likelihood(self) -> float:
        return self.mean_noise

    def to_row(self) -> dict:
        """One row of :data:`REGION_COLUMNS` (strings and plain numbers)."""
        return {
            "id": self.id, "source": self.source, "sample": self.sample, "kind": self.kind,
            "area": self.area, "likelihood": round(float(self.mean_noise), 4),
            "reliability": round(float(self.reliability), 4), "from_class": self.from_class,
            "to_class": self.to_class, "centroid": " ".join(f"{v:.1f}" for v in self.centroid),
            "bbox": " ".join(str(v) for v in self.bbox), "status": self.status, "round": self.round,
            "agreement": None if self.agreement is None else round(float(self.agreement), 4),
            "flagged_by": " ".join(self.flagged_by),
        }


@dataclass
class _Pixels:
    """Where a region lies and what it proposes: flat indices into its source."""

    flat: np.ndarray  # int64 (A,)
    base: np.ndarray  # labels the proposal was made against (A,)
    proposed: np.ndarray  # proposed labels (A,)


@dataclass
class Proposals:
    """One round of proposals, computed by :meth:`CurationSession.prepare_proposals`."""

    method: str = ""
    first_id: int = 1
    next_id: int = 1
    round: int = 1
    noise: list = field(default_factory=list)
    corrected: list = field(default_factory=list)
    reliability: list = field(default_factory=list)
    regions: list = field(default_factory=list)
    pixels: dict = field(default_factory=dict)
    agreement: MethodAgreement | None = None


@dataclass
class _Change:
    """What one decision did to one region (enough to undo it exactly)."""

    region: int
    previous: str
    status: str
    before: np.ndarray  # decided labels before, on the region's pixels
    after: np.ndarray  # decided labels after


@dataclass
class _Step:
    decision: str
    changes: list = field(default_factory=list)
    number: int = 0


def _sha256(array: np.ndarray) -> str:
    hasher = hashlib.sha256()
    hasher.update(str(array.dtype).encode())
    hasher.update(str(array.shape).encode())
    hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): still log something
        return "unknown"


def safe_name(name: str) -> str:
    """A file-name-safe version of a layer name (``"nuclei labels"`` → ``"nuclei_labels"``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return cleaned or "labels"


# ----------------------------------------------------------------------------- session


class CurationSession:
    """Regions, decisions, cleaned labels and the curation log of one or more sources.

    Parameters
    ----------
    given : list of ndarray of int
        The original labels per source, (H, W) or (D, H, W). Copied; the
        copies are read-only and hashed.
    names : list of str, optional
        Source names (layer names); default ``source_0``, ...
    modes : list of str, optional
        Per source ``"2d"``, ``"stack"`` or ``"volume"`` (as in
        :func:`~napari_noisyseg.core.dataset.build_dataset`); default ``"2d"``
        for 2D arrays and ``"volume"`` for 3D ones.
    sample_names : list of (list of str), optional
        Per source, the name of each sample (slice); used in the log.
    min_area : int
        Smaller components of change are not proposed.
    user : str, optional
        Recorded in the log; default the login name.
    """

    def __init__(self, given, names=None, modes=None, sample_names=None,
                 min_area: int = DEFAULT_MIN_AREA, user: str | None = None):
        self.given: list[np.ndarray] = []
        for array in given:
            # C order: decisions write through ravel() views, which a Fortran-ordered
            # array (a NIfTI read) would silently turn into copies
            copy = np.array(array, copy=True, order="C")
            if copy.dtype.kind not in "iub":
                raise ValueError(f"labels must be integers, got {copy.dtype}")
            copy.setflags(write=False)
            self.given.append(copy)
        n = len(self.given)
        self.names = list(names) if names is not None else [f"source_{i}" for i in range(n)]
        self.modes = list(modes) if modes is not None else ["2d" if g.ndim == 2 else "volume" for g in self.given]
        if len(self.names) != n or len(self.modes) != n:
            raise ValueError(f"{n} sources but {len(self.names)} names and {len(self.modes)} modes")
        for name, mode, array in zip(self.names, self.modes, self.given):
            if mode not in ("2d", "stack", "volume"):
                raise ValueError(f"{name}: mode must be 2d, stack or volume, not {mode!r}")
            if (mode == "2d") != (array.ndim == 2):
                raise ValueError(f"{name}: mode {mode!r} does not fit labels of shape {array.shape}")
        self.sample_names = (
            [list(s) for s in sample_names] if sample_names is not None else [self._default_samples(i) for i in range(n)]
        )
        self.hashes = [_sha256(g) for g in self.given]
        self.cleaned: list[np.ndarray] = [np.array(g, copy=True) for g in self.given]
        self._decided: list[np.ndarray] = [np.array(g, copy=True) for g in self.given]
        self.noise: list[np.ndarray] = [np.zeros(g.shape, np.float32) for g in self.given]
        self.corrected: list[np.ndarray] = [np.array(g, copy=True) for g in self.given]
        self.region_maps: list[np.ndarray] = [np.zeros(g.shape, np.int32) for g in self.given]
        self.reliability: list[np.ndarray] = [np.ones(self._n_samples(i)) for i in range(n)]
        self.regions: dict[int, ReviewRegion] = {}
        self._pixels: dict[int, _Pixels] = {}
        self.log: list[dict] = []
        self._undo: list[_Step] = []
        self._steps = 0
        self._next_id = 1
        self.round = 0
        self.method = ""
        self.agreement: MethodAgreement | None = None
        self.min_area = int(min_area)
        self.user = user or _user()

    # ----- construction -------------------------------------------------------
    @classmethod
    def from_result(cls, dataset, result, given=None, names=None, min_area: int = DEFAULT_MIN_AREA,
                    user: str | None = None, agreement: MethodAgreement | None = None) -> "CurationSession":
        """A session from a :class:`~napari_noisyseg.core.dataset.NoisyDataset` and its
        :class:`~napari_noisyseg.methods.base.CurationResult`.

        Parameters
        ----------
        given : list of ndarray, optional
            The original labels per source (e.g. the layers' data); default the
            dataset's labels reassembled.
        agreement : MethodAgreement, optional
            From a method comparison whose first method gave ``result``.
        """
        if given is None:
            given = dataset.reassemble([s.labels for s in dataset.samples])
        sample_names = [[dataset.samples[i].name for i in src.sample_indices] for src in dataset.sources]
        session = cls(
            given, names or [src.name for src in dataset.sources], [src.mode for src in dataset.sources],
            sample_names, min_area=min_area, user=user,
        )
        session.add_result(dataset, result, agreement=agreement)
        return session

    def add_result(self, dataset, result, agreement: MethodAgreement | None = None) -> list[ReviewRegion]:
        """Take a (new) result's noise and proposals: see :meth:`set_proposals`."""
        return self.apply_proposals(self.prepare_result(dataset, result, agreement=agreement))

    def prepare_result(self, dataset, result, cleaned=None, protected=None,
                       agreement: MethodAgreement | None = None) -> "Proposals":
        """:meth:`prepare_proposals` from a dataset and its result (per-sample arrays reassembled)."""
        if len(dataset.sources) != len(self.given):
            raise ValueError(f"the result has {len(dataset.sources)} sources, this session {len(self.given)}")
        noise = dataset.reassemble(result.noise)
        corrected = dataset.reassemble(result.corrected)
        reliability = [np.asarray(result.sample_reliability)[src.sample_indices] for src in dataset.sources]
        return self.prepare_proposals(noise, corrected, reliability, result.method, cleaned, protected, agreement)

    def set_proposals(self, noise, corrected, reliability=None, method: str = "",
                      agreement: MethodAgreement | None = None) -> list[ReviewRegion]:
        """Start a new round of proposals.

        Pending regions of the previous round are dropped; decided regions and
        the log stay. New regions are the components where ``corrected``
        differs from the current ``cleaned`` labels, outside trusted pixels
        (decided regions and hand edits).

        Parameters
        ----------
        noise : list of ndarray, float (per source shape)
        corrected : list of ndarray, int (per source shape)
        reliability : list of ndarray (per source, one value per sample), optional
        method : str
        agreement : MethodAgreement, optional
            A method comparison (``noise`` being its first method's): every
            region gets its ``agreement`` and ``flagged_by``.

        Returns
        -------
        list of ReviewRegion
            The new regions.
        """
        return self.apply_proposals(self.prepare_proposals(noise, corrected, reliability, method,
                                                           agreement=agreement))

    def prepare_proposals(self, noise, corrected, reliability=None, method: str = "", cleaned=None,
                          protected=None, agreement: MethodAgreement | None = None) -> "Proposals":
        """The expensive half of :meth:`set_proposals`; changes nothing in the session.

        With ``cleaned`` and ``protected`` snapshots (taken when the training
        started) it may run in a worker thread while the person goes on
        reviewing; :meth:`apply_proposals` then drops any new region that a
        later decision or stroke has touched.

        Parameters
        ----------
        cleaned : list of ndarray, optional
            The cleaned labels to propose against (default: the current ones).
        protected : list of ndarray of bool, optional
            Pixels never proposed (default: :meth:`trust_masks`).
        agreement : MethodAgreement, optional
            See :meth:`set_proposals`.
        """
        n = len(self.given)
        if len(noise) != n or len(corrected) != n:
            raise ValueError(f"expected {n} noise and corrected arrays")
        if agreement is not None and len(agreement.maps) != n:
            raise ValueError(f"the method comparison has {len(agreement.maps)} sources, this session {n}")
        cleaned = self.cleaned if cleaned is None else cleaned
        protected = self.trust_masks() if protected is None else protected
        proposals = Proposals(method=method, first_id=self._next_id, next_id=self._next_id, round=self.round + 1,
                              agreement=agreement)
        for s in range(n):
            shape = self.given[s].shape
            source_noise = np.clip(np.nan_to_num(np.asarray(noise[s], np.float32)), 0.0, 1.0)
            source_corrected = np.asarray(corrected[s])
            if source_noise.shape != shape or source_corrected.shape != shape:
                raise ValueError(
                    f"{self.names[s]}: noise {source_noise.shape} / corrected {source_corrected.shape} "
                    f"do not match the labels {shape}"
                )
            if reliability is not None:
                values = np.clip(np.asarray(reliability[s], np.float64).ravel(), 0.0, 1.0)
            else:
                values = self.reliability[s]
            proposals.noise.append(source_noise)
            proposals.corrected.append(np.array(source_corrected, dtype=self.given[s].dtype, copy=True))
            proposals.reliability.append(values)
            base = np.array(cleaned[s], copy=True)
            effective = np.where(protected[s], base, source_corrected).astype(base.dtype, copy=False)
            region_map, regions = self._find(s, base, effective, source_noise, values, proposals)
            if agreement is not None and regions:
                self._annotate(regions, agreement.annotate(s, region_map))
            indices = ndimage.value_indices(region_map, ignore_value=0) if regions else {}
            for region in regions:
                flat = np.ravel_multi_index(indices[region.id], shape).astype(np.int64)
                proposals.pixels[region.id] = _Pixels(flat, base.ravel()[flat], effective.ravel()[flat])
                proposals.regions.append(region)
        return proposals

    def apply_proposals(self, proposals: "Proposals") -> list[ReviewRegion]:
        """Make prepared proposals the current round (cheap; the GUI thread's half).

        Raises
        ------
        ValueError
            The proposals were prepared before another round was applied.
        """
        if proposals.first_id != self._next_id or proposals.round != self.round + 1:
            raise ValueError("these proposals were prepared for an earlier state of the session")
        self.round = proposals.round
        self.method = proposals.method or self.method
        self.agreement = proposals.agreement
        for rid in [r.id for r in self.regions.values() if r.status == "pending"]:
            self._drop(rid)
        for s in range(len(self.given)):
            self.noise[s] = proposals.noise[s]
            self.corrected[s] = proposals.corrected[s]
            self.reliability[s] = proposals.reliability[s]
        protected = self.trust_masks()
        new = []
        for region in proposals.regions:
            pixels = proposals.pixels[region.id]
            s = region.source_index
            stale = protected[s].ravel()[pixels.flat].any() or (
                self.cleaned[s].ravel()[pixels.flat] != pixels.base).any()
            if stale:  # decided or painted since the proposals were computed
                continue
            self.region_maps[s].ravel()[pixels.flat] = region.id
            self._pixels[region.id] = pixels
            self.regions[region.id] = region
            new.append(region)
        self._next_id = proposals.next_id
        return new

    def _find(self, s: int, base, corrected, noise, reliability, proposals) -> tuple[np.ndarray, list]:
        """Regions of one source, with ids from ``proposals.next_id`` on (advanced here)."""
        name = self.names[s]
        if self.modes[s] != "stack":
            region_map, plain = find_regions(base, corrected, noise, source=name, min_area=self.min_area,
                                             start_id=proposals.next_id)
            proposals.next_id += len(plain)
            return region_map, [self._review(s, r, reliability, proposals.round) for r in plain]
        region_map = np.zeros(base.shape, np.int32)
        regions = []
        for z in range(base.shape[0]):
            slice_map, plain = find_regions(base[z], corrected[z], noise[z], source=name,
                                            min_area=self.min_area, start_id=proposals.next_id)
            region_map[z] = slice_map
            for r in plain:
                r.centroid = (float(z),) + tuple(r.centroid)
                r.bbox = (z,) + tuple(r.bbox[:2]) + (z + 1,) + tuple(r.bbox[2:])
                regions.append(self._review(s, r, reliability, proposals.round))
            proposals.next_id += len(plain)
        return region_map, regions

    def _review(self, s: int, region: Region, reliability, round_: int) -> ReviewRegion:
        position = 0 if self.given[s].ndim == 2 else int(round(region.centroid[0]))
        position = min(max(position, 0), len(reliability) - 1)
        names = self.sample_names[s]
        return ReviewRegion(
            id=region.id, source=region.source, kind=region.kind, area=region.area,
            mean_noise=region.mean_noise, from_class=region.from_class, to_class=region.to_class,
            centroid=tuple(region.centroid), bbox=tuple(region.bbox), status=region.status,
            source_index=s, sample=names[position] if position < len(names) else f"{self.names[s]}[{position}]",
            reliability=float(reliability[position]), round=round_,
        )

    @staticmethod
    def _annotate(regions, values: dict) -> None:
        for region in regions:
            region.agreement, region.flagged_by = values.get(region.id, (None, ()))

    def set_agreement(self, agreement: MethodAgreement | None) -> None:
        """Attach a method comparison to the current round (or drop it with None).

        Every region (pending or decided) gets its ``agreement`` and
        ``flagged_by`` from the comparison's maps over its pixels.

        Raises
        ------
        ValueError
            The comparison's sources or shapes do not match the session's.
        """
        if agreement is None:
            self.agreement = None
            for region in self.regions.values():
                region.agreement, region.flagged_by = None, ()
            return
        if len(agreement.maps) != len(self.given):
            raise ValueError(f"the method comparison has {len(agreement.maps)} sources, this session "
                             f"{len(self.given)}")
        values = {}
        for s in range(len(self.given)):
            values.update(agreement.annotate(s, self.region_maps[s]))
        self._annotate(self.regions.values(), values)
        self.agreement = agreement

    @property
    def has_agreement(self) -> bool:
        """Whether the current round comes with a method comparison (sorting by agreement works)."""
        return self.agreement is not None

    def _drop(self, rid: int) -> None:
        region = self.regions.pop(rid)
        pixels = self._pixels.pop(rid)
        self.region_maps[region.source_index].ravel()[pixels.flat] = 0

    def _n_samples(self, s: int) -> int:
        return 1 if self.given[s].ndim == 2 else self.given[s].shape[0]

    def _default_samples(self, s: int) -> list[str]:
        if self.given[s].ndim == 2:
            return [self.names[s]]
        return [f"{self.names[s]}[{z}]" for z in range(self.given[s].shape[0])]

    # ----- queries ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.regions)

    def region(self, rid: int) -> ReviewRegion:
        try:
            return self.regions[int(rid)]
        except KeyError:
            raise KeyError(f"no region {rid}; known ids: {self._id_range()}") from None

    def _id_range(self) -> str:
        if not self.regions:
            return "none"
        return f"{min(self.regions)}..{max(self.regions)}"

    def sorted_regions(self, by: str = "likelihood", status=None) -> list[ReviewRegion]:
        """Regions in review order.

        Parameters
        ----------
        by : {"likelihood", "reliability", "agreement"}
            ``likelihood``: most likely wrong first. ``reliability``: least
            reliable sample first ("which image first"), then by likelihood.
            ``agreement``: the region most compared methods flag first, then by
            likelihood (regions without agreement last); only after a method
            comparison (:attr:`has_agreement`).
        status : str or iterable of str, optional
            Keep only these statuses.

        Raises
        ------
        ValueError
            Unknown key, or ``agreement`` without a method comparison.
        """
        if by not in SORT_KEYS:
            raise ValueError(f"sort by one of {SORT_KEYS}, not {by!r}")
        if by == "agreement" and not self.has_agreement:
            raise ValueError("no agreement to sort by: compare several methods first (noisyseg compare, "
                             "or the Compare methods widget)")
        regions = list(self.regions.values())
        if status is not None:
            keep = {status} if isinstance(status, str) else set(status)
            regions = [r for r in regions if r.status in keep]
        if by == "likelihood":
            return sorted(regions, key=lambda r: (-r.mean_noise, -r.area, r.id))
        if by == "agreement":
            return sorted(regions, key=lambda r: (r.agreement is None, -(r.agreement or 0.0), -r.mean_noise,
                                                  -r.area, r.id))
        return sorted(regions, key=lambda r: (r.reliability, r.sample, -r.mean_noise, r.id))

    def counts(self) -> dict:
        """Number of regions per status."""
        out = {status: 0 for status in STATUSES}
        for region in self.regions.values():
            out[region.status] += 1
        return out

    def count_above(self, threshold: float) -> int:
        """How many pending regions :meth:`accept_above` would accept."""
        return len(self._pending_above(threshold))

    def _pending_above(self, threshold: float) -> list[int]:
        return [r.id for r in self.sorted_regions("likelihood", "pending") if r.mean_noise >= threshold]

    def region_indices(self, rid: int) -> np.ndarray:
        """Flat indices (int64) of the region's pixels in its source array."""
        return self._pixels[self.region(rid).id].flat

    def focus_point(self, rid: int) -> tuple:
        """Where to look at a region, in its source's array coordinates.

        2D: the centroid. 3D: the slice (first axis) holding most of its pixels,
        and the centroid of the region within that slice, so that a viewer
        showing that slice shows the region (a 3D centroid may fall outside it).
        """
        region = self.region(rid)
        shape = self.given[region.source_index].shape
        if len(shape) == 2:
            return tuple(float(c) for c in region.centroid)
        coords = np.unravel_index(self.region_indices(rid), shape)
        z = int(np.bincount(coords[0]).argmax())
        inside = coords[0] == z
        return (float(z), float(coords[1][inside].mean()), float(coords[2][inside].mean()))

    def region_mask(self, rid: int) -> np.ndarray:
        """bool array of the region's source shape."""
        region = self.region(rid)
        mask = np.zeros(self.given[region.source_index].shape, bool)
        mask.ravel()[self._pixels[region.id].flat] = True
        return mask

    def manual_edits(self, s: int) -> np.ndarray:
        """bool mask of pixels of source ``s`` painted by hand (``cleaned`` ≠ decided labels)."""
        return self.cleaned[s] != self._decided[s]

    def trust_masks(self, include_manual: bool = True) -> list[np.ndarray]:
        """Per source bool arrays: accepted ∪ rejected regions (∪ hand edits)."""
        masks = [np.zeros(g.shape, bool) for g in self.given]
        for region in self.regions.values():
            if region.status != "pending":
                masks[region.source_index].ravel()[self._pixels[region.id].flat] = True
        if include_manual:
            for s, mask in enumerate(masks):
                mask |= self.manual_edits(s)
        return masks

    def cleaned_labels(self) -> list[np.ndarray]:
        """Copies of the cleaned labels per source (what a retrain trains on)."""
        return [c.copy() for c in self.cleaned]

    def original_unchanged(self) -> bool:
        """True while every private copy of the original labels still has its hash."""
        return all(_sha256(g) == h for g, h in zip(self.given, self.hashes))

    def status_map(self, s: int) -> np.ndarray:
        """uint8 map of source ``s``: 0 none, 1 pending, 2 accepted, 3 rejected."""
        codes = {"pending": 1, "accepted": 2, "rejected": 3}
        out = np.zeros(self.given[s].shape, np.uint8)
        for region in self.regions.values():
            if region.source_index == s:
                out.ravel()[self._pixels[region.id].flat] = codes[region.status]
        return out

    def table(self, by: str = "likelihood") -> list[dict]:
        """Rows of :data:`REGION_COLUMNS` in review order."""
        return [r.to_row() for r in self.sorted_regions(by)]

    # ----- decisions ----------------------------------------------------------
    def accept(self, rid: int) -> int:
        """Accept one region; return the number of cleaned pixels changed (0 if already accepted)."""
        return self._decide("accept", [rid])

    def reject(self, rid: int) -> int:
        """Reject one region (the original label was right); return pixels changed."""
        return self._decide("reject", [rid])

    def accept_above(self, threshold: float) -> list[int]:
        """Accept every pending region with likelihood ≥ ``threshold`` as one undoable step.

        Returns
        -------
        list of int
            The accepted region ids.
        """
        ids = self._pending_above(threshold)
        if ids:
            self._decide("accept", ids)
        return ids

    def accept_many(self, ids) -> int:
        """Accept several regions as one undoable step; return pixels changed."""
        return self._decide("accept", list(ids))

    def reject_many(self, ids) -> int:
        """Reject several regions as one undoable step; return pixels changed."""
        return self._decide("reject", list(ids))

    def _decide(self, decision: str, ids: list) -> int:
        status = "accepted" if decision == "accept" else "rejected"
        step = _Step(decision, number=self._steps + 1)
        changed = 0
        for rid in ids:
            region = self.region(rid)
            if region.status == status:
                continue
            pixels = self._pixels[region.id]
            before = self._decided[region.source_index].ravel()[pixels.flat].copy()
            after = pixels.proposed if decision == "accept" else pixels.base
            n = self._write(region.source_index, pixels.flat, after)
            step.changes.append(_Change(region.id, region.status, status, before, after.copy()))
            self._log(decision, region, region.status, status, n, step.number)
            region.status = status
            changed += n
        if step.changes:
            self._steps += 1
            self._undo.append(step)
        return changed

    def _write(self, s: int, flat: np.ndarray, new: np.ndarray) -> int:
        """Set the decided labels on ``flat`` to ``new``; ``cleaned`` follows where not hand-edited.

        Returns the number of ``cleaned`` pixels whose value changed.
        """
        cleaned = self.cleaned[s].ravel()
        decided = self._decided[s].ravel()
        untouched = cleaned[flat] == decided[flat]
        targets = flat[untouched]
        values = new[untouched].astype(cleaned.dtype, copy=False)
        n = int(np.count_nonzero(cleaned[targets] != values))
        cleaned[targets] = values
        decided[flat] = new.astype(decided.dtype, copy=False)
        return n

    def can_undo(self) -> bool:
        return bool(self._undo)

    def undo(self) -> list[int]:
        """Undo the last decision step (one region, or one bulk accept).

        Returns
        -------
        list of int
            Ids of the regions whose decision was undone (empty when nothing to undo).
        """
        if not self._undo:
            return []
        step = self._undo.pop()
        self._steps += 1
        ids = []
        for change in reversed(step.changes):
            region = self.regions.get(change.region)
            if region is None:  # pragma: no cover - decided regions are never dropped
                continue
            pixels = self._pixels[region.id]
            n = self._write(region.source_index, pixels.flat, change.before)
            self._log("undo", region, region.status, change.previous, n, self._steps)
            region.status = change.previous
            ids.append(region.id)
        return ids

    def _log(self, decision, region, previous, status, pixels_changed, step) -> None:
        self.log.append({
            "time": _now(), "user": self.user, "decision": decision, "region": region.id,
            "source": region.source, "sample": region.sample, "kind": region.kind, "area": region.area,
            "likelihood": round(float(region.mean_noise), 4), "previous": previous, "status": status,
            "pixels_changed": int(pixels_changed), "step": int(step), "round": region.round,
            "method": self.method,
        })

    # ----- decision files -----------------------------------------------------
    def apply_decisions(self, path) -> dict:
        """Replay a decision file (a curation log, or any CSV/JSON of decisions).

        A row needs ``region`` (or ``id``) and ``decision`` (``accept``/``accepted``,
        ``reject``/``rejected``, ``undo``); ``pending`` rows are skipped. When
        ``source``, ``kind`` or ``area`` are given they must match the region, so a
        file made for other proposals is refused instead of applied to the wrong
        pixels. Rows sharing a ``step`` are one decision (a bulk accept, or the
        undo of one) as in the log. JSON may be a list of rows or an object with
        ``log`` or ``decisions``.

        Returns
        -------
        dict
            Counts: ``accept``, ``reject``, ``undo``, ``skipped``.

        Raises
        ------
        ValueError
            Unknown region or decision, or a mismatching row (the message names
            the file and the row); nothing is applied then.
        """
        path = Path(path)
        rows = read_decisions(path)
        plan = []
        for number, row in enumerate(rows, start=1):
            where = f"{path}, row {number}"
            decision = str(row.get("decision", "")).strip().lower()
            decision = {"accepted": "accept", "rejected": "reject"}.get(decision, decision)
            if decision in ("", "pending"):
                plan.append(("skip", None, row.get("step")))
                continue
            if decision not in DECISIONS:
                raise ValueError(f"{where}: unknown decision {row.get('decision')!r}; use accept, reject or undo")
            rid_text = row.get("region", row.get("id"))
            if decision != "undo":
                try:
                    rid = int(rid_text)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: no region id (column 'region' or 'id')") from None
                if rid not in self.regions:
                    raise ValueError(f"{where}: no region {rid} in these proposals (ids {self._id_range()})")
                self._check_row(where, self.regions[rid], row)
            else:
                rid = None
            plan.append((decision, rid, row.get("step")))
        counts = {"accept": 0, "reject": 0, "undo": 0, "skipped": 0}
        groups: list = []
        for decision, rid, step in plan:
            key = (decision, step) if step not in (None, "") else None
            if groups and key is not None and groups[-1][0] == key:
                groups[-1][1].append(rid)
            else:
                groups.append((key if key is not None else (decision, object()), [rid]))
        for (decision, _), ids in groups:
            if decision == "skip":
                counts["skipped"] += len(ids)
            elif decision == "undo":
                self.undo()
                counts["undo"] += 1
            else:
                self._decide(decision, ids)
                counts[decision] += len(ids)
        return counts

    @staticmethod
    def _check_row(where: str, region: ReviewRegion, row: dict) -> None:
        checks = (("source", region.source, str), ("kind", region.kind, str), ("area", region.area, int))
        for column, expected, cast in checks:
            value = row.get(column)
            if value in (None, ""):
                continue
            try:
                value = cast(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {column} {value!r} is not valid") from None
            if value != expected:
                raise ValueError(
                    f"{where}: region {region.id} has {column} {expected!r}, the file says {value!r}; "
                    "the decisions were made for other proposals"
                )

    # ----- log export ---------------------------------------------------------
    def log_csv(self) -> str:
        """The curation log as CSV text (:data:`LOG_COLUMNS`)."""
        buffer = _io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.log:
            writer.writerow(row)
        return buffer.getvalue()

    def log_json(self) -> str:
        """The log plus context: sources with their hashes, counts, the region table."""
        from .. import __version__

        document = {
            "format": "napari-noisyseg-curation-log",
            "version": 1,
            "package_version": __version__,
            "method": self.method,
            "rounds": self.round,
            "user": self.user,
            "sources": [
                {"name": n, "mode": m, "shape": list(g.shape), "sha256": h}
                for n, m, g, h in zip(self.names, self.modes, self.given, self.hashes)
            ],
            "counts": self.counts(),
            "comparison": None if self.agreement is None else {
                "methods": list(self.agreement.methods), "threshold": self.agreement.threshold,
            },
            "log": self.log,
            "regions": self.table(),
        }
        return json.dumps(document, indent=2)


def read_decisions(path) -> list[dict]:
    """Rows of a decision file (``.csv`` or ``.json``), as dicts."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such decision file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        if isinstance(data, dict):
            data = data.get("log", data.get("decisions"))
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise ValueError(f"{path}: expected a list of decision rows (or an object with 'log' or 'decisions')")
        return data
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(_io.StringIO(text)))
    raise ValueError(f"{path}: decision files are .csv or .json")
