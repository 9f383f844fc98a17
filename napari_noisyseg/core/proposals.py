"""Proposed corrections as reviewable regions.

A region is a connected component of pixels (voxels, for 3D sources) where the
corrected labels differ from the given ones *and* the change is of one kind:
``add`` (background → class), ``remove`` (class → background) or ``relabel``
(class → other class). Keeping kinds apart means accepting a region never
mixes an addition with a removal.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

KINDS = ("add", "remove", "relabel")
KIND_CODES = {"add": 1, "remove": 2, "relabel": 3}

CSV_COLUMNS = (
    "id", "source", "kind", "area", "mean_noise", "from_class", "to_class",
    "centroid", "bbox", "status",
)


@dataclass
class Region:
    """One proposed change.

    Attributes
    ----------
    id : int
        1-based, unique within a :func:`find_regions` call; the value in the region map.
    source : str
        Name of the image/label pair.
    kind : {"add", "remove", "relabel"}
    area : int
        Pixels (or voxels).
    mean_noise : float
        Mean noise likelihood inside the region.
    from_class, to_class : int
        Majority given label and majority proposed label inside the region.
    centroid : tuple of float
        In array coordinates of the source (z, y, x) or (y, x).
    bbox : tuple of int
        (min..., max...) exclusive, in array coordinates.
    status : str
        ``pending``, ``accepted`` or ``rejected``.
    """

    id: int
    source: str
    kind: str
    area: int
    mean_noise: float
    from_class: int
    to_class: int
    centroid: tuple
    bbox: tuple
    status: str = "pending"

    def to_row(self) -> dict:
        row = asdict(self)
        row["centroid"] = " ".join(f"{v:.1f}" for v in self.centroid)
        row["bbox"] = " ".join(str(v) for v in self.bbox)
        row["mean_noise"] = round(self.mean_noise, 4)
        return row


def change_kinds(given: np.ndarray, corrected: np.ndarray) -> np.ndarray:
    """uint8 map of the same shape: 0 unchanged, 1 add, 2 remove, 3 relabel."""
    kinds = np.zeros(given.shape, np.uint8)
    changed = given != corrected
    kinds[changed & (given == 0)] = KIND_CODES["add"]
    kinds[changed & (corrected == 0)] = KIND_CODES["remove"]
    kinds[changed & (given > 0) & (corrected > 0)] = KIND_CODES["relabel"]
    return kinds


def _majority(values: np.ndarray) -> int:
    return int(np.bincount(values.ravel().astype(np.int64)).argmax()) if values.size else 0


def find_regions(
    given: np.ndarray,
    corrected: np.ndarray,
    noise: np.ndarray | None = None,
    source: str = "",
    min_area: int = 1,
    start_id: int = 1,
) -> tuple[np.ndarray, list[Region]]:
    """Regions of proposed change between ``given`` and ``corrected``.

    Parameters
    ----------
    given, corrected : ndarray of int, (H, W) or (D, H, W)
    noise : ndarray of float, same shape, optional
        Noise likelihood; its mean per region ranks the review.
    source : str
        Name recorded in every region.
    min_area : int
        Smaller components are dropped (single stray pixels are rarely worth a decision).
    start_id : int
        First region id (to keep ids unique across several sources).

    Returns
    -------
    region_map : ndarray of int32, same shape
        0 where nothing changes, else the region id.
    regions : list of Region
        Sorted by id.
    """
    given = np.asarray(given)
    corrected = np.asarray(corrected)
    if given.shape != corrected.shape:
        raise ValueError(f"given labels {given.shape} and corrected labels {corrected.shape} differ in shape")
    noise = np.zeros(given.shape, np.float32) if noise is None else np.asarray(noise, np.float32)
    if noise.shape != given.shape:
        raise ValueError(f"noise map {noise.shape} and labels {given.shape} differ in shape")
    kinds = change_kinds(given, corrected)
    region_map = np.zeros(given.shape, np.int32)
    regions: list[Region] = []
    next_id = start_id
    structure = ndimage.generate_binary_structure(given.ndim, 1)
    for kind, code in KIND_CODES.items():
        components, count = ndimage.label(kinds == code, structure=structure)
        if not count:
            continue
        slices = ndimage.find_objects(components)
        for index, box in enumerate(slices, start=1):
            mask = components[box] == index
            area = int(mask.sum())
            if area < min_area:
                continue
            coords = np.argwhere(mask)
            centroid = tuple(float(c + s.start) for c, s in zip(coords.mean(axis=0), box))
            region_map[box][mask] = next_id
            regions.append(
                Region(
                    id=next_id, source=source, kind=kind, area=area,
                    mean_noise=float(noise[box][mask].mean()),
                    from_class=_majority(given[box][mask]), to_class=_majority(corrected[box][mask]),
                    centroid=centroid,
                    bbox=tuple(s.start for s in box) + tuple(s.stop for s in box),
                )
            )
            next_id += 1
    return region_map, regions


def regions_to_csv(regions: list[Region], extra_columns: dict | None = None) -> str:
    """CSV text with :data:`CSV_COLUMNS`, one row per region.

    Parameters
    ----------
    regions : list of Region
    extra_columns : dict of str -> dict of int -> value, optional
        More columns after :data:`CSV_COLUMNS`, in the dict's order: column name →
        {region id: value}; a region missing from a column gets an empty cell
        (``noisyseg compare`` adds ``agreement`` and ``flagged_by``).
    """
    extra_columns = dict(extra_columns or {})
    clash = set(extra_columns) & set(CSV_COLUMNS)
    if clash:
        raise ValueError(f"extra columns {sorted(clash)} would replace standard ones")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS + tuple(extra_columns))
    writer.writeheader()
    for region in regions:
        row = region.to_row()
        for column, values in extra_columns.items():
            value = values.get(region.id, "")
            row[column] = round(value, 4) if isinstance(value, float) else value
        writer.writerow(row)
    return buffer.getvalue()
