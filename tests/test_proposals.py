"""Proposed corrections as regions (core/proposals.py), on hand-made arrays."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from napari_noisyseg.core.proposals import CSV_COLUMNS, change_kinds, find_regions, regions_to_csv


def _scene():
    """Given labels with two objects and corrections that add, remove and relabel.

    given      corrected
    object A (class 1) rows 1-3, cols 1-3   -> its right column (col 3) removed (3 px)
    object B (class 2) rows 6-8, cols 6-8   -> relabelled to class 1 except its last row (6 px)
    new blob rows 1-2, cols 6-8 (6 px, class 1) and one stray pixel (9, 0) class 2
    """
    given = np.zeros((10, 10), np.int32)
    given[1:4, 1:4] = 1
    given[6:9, 6:9] = 2
    corrected = given.copy()
    corrected[1:4, 3] = 0
    corrected[6:8, 6:9] = 1
    corrected[1:3, 6:9] = 1
    corrected[9, 0] = 2
    noise = np.zeros((10, 10), np.float32)
    noise[1:4, 3] = 0.9
    noise[6:8, 6:9] = 0.5
    noise[1:3, 6:9] = [[0.2, 0.4, 0.6], [0.2, 0.4, 0.6]]
    noise[9, 0] = 1.0
    return given, corrected, noise


def test_change_kinds():
    given, corrected, _ = _scene()
    kinds = change_kinds(given, corrected)
    assert kinds.dtype == np.uint8 and kinds.shape == given.shape
    assert (kinds == 1).sum() == 7 and (kinds == 2).sum() == 3 and (kinds == 3).sum() == 6
    assert np.all(kinds[given == corrected] == 0)


def test_find_regions_kinds_areas_classes_and_geometry():
    given, corrected, noise = _scene()
    region_map, regions = find_regions(given, corrected, noise, source="img")
    assert region_map.dtype == np.int32 and region_map.shape == given.shape
    assert [r.id for r in regions] == [1, 2, 3, 4]
    by_kind = {}
    for region in regions:
        by_kind.setdefault(region.kind, []).append(region)
        assert region.source == "img" and region.status == "pending"
        np.testing.assert_array_equal(np.argwhere(region_map == region.id).shape[0], region.area)
    blob, stray = sorted(by_kind["add"], key=lambda r: r.area, reverse=True)
    assert (blob.area, blob.from_class, blob.to_class) == (6, 0, 1)
    assert blob.mean_noise == pytest.approx(0.4)
    assert blob.bbox == (1, 6, 3, 9) and blob.centroid == pytest.approx((1.5, 7.0))
    assert (stray.area, stray.to_class, stray.mean_noise, stray.bbox) == (1, 2, 1.0, (9, 0, 10, 1))
    (removed,) = by_kind["remove"]
    assert (removed.area, removed.from_class, removed.to_class) == (3, 1, 0)
    assert removed.centroid == pytest.approx((2.0, 3.0)) and removed.mean_noise == pytest.approx(0.9)
    (relabelled,) = by_kind["relabel"]
    assert (relabelled.area, relabelled.from_class, relabelled.to_class) == (6, 2, 1)
    assert relabelled.bbox == (6, 6, 8, 9)
    assert np.all((region_map > 0) == (given != corrected))


def test_majority_classes_inside_a_mixed_region():
    given = np.zeros((4, 6), np.int32)
    given[:, :2] = 1
    given[:, 2:] = 3  # one relabel region spanning classes 1 (8 px) and 3 (16 px)
    corrected = np.full((4, 6), 2, np.int32)
    corrected[0, :] = 1  # row 0 of class 3 -> 1, row 0 of class 1 unchanged
    _, regions = find_regions(given, corrected)
    (region,) = regions
    assert region.kind == "relabel" and region.area == 4 * 6 - 2
    assert region.from_class == 3 and region.to_class == 2


def test_adjacent_changes_of_different_kinds_stay_apart_and_min_area():
    given = np.zeros((5, 8), np.int32)
    given[:, :4] = 1
    corrected = np.zeros((5, 8), np.int32)
    corrected[:, 4:] = 1  # removal on the left touches the addition on the right
    region_map, regions = find_regions(given, corrected)
    assert sorted(r.kind for r in regions) == ["add", "remove"]
    assert {r.area for r in regions} == {20}
    assert set(np.unique(region_map)) == {1, 2}  # every pixel changed, two regions
    diagonal = np.zeros((5, 5), np.int32)
    diagonal[[0, 1, 2], [0, 1, 2]] = 1  # face connectivity: three single pixels
    _, regions = find_regions(np.zeros_like(diagonal), diagonal)
    assert [r.area for r in regions] == [1, 1, 1]
    region_map, regions = find_regions(np.zeros_like(diagonal), diagonal, min_area=2)
    assert regions == [] and not region_map.any()
    given, corrected, noise = _scene()
    _, regions = find_regions(given, corrected, noise, min_area=2)
    assert sorted(r.area for r in regions) == [3, 6, 6] and [r.id for r in regions] == [1, 2, 3]


def test_ids_unique_across_sources_with_start_id():
    given, corrected, noise = _scene()
    map_a, first = find_regions(given, corrected, noise, source="a")
    map_b, second = find_regions(given, corrected, noise, source="b", start_id=len(first) + 1)
    assert [r.id for r in second] == [5, 6, 7, 8]
    np.testing.assert_array_equal(map_b[map_b > 0], map_a[map_a > 0] + 4)
    assert len({r.id for r in first + second}) == 8


def test_3d_regions_connect_across_slices():
    given = np.zeros((3, 6, 6), np.int32)
    corrected = given.copy()
    corrected[0:3, 2:4, 2:4] = 1  # one tube through every slice: one region
    corrected[0, 0, 5] = 1
    corrected[2, 5, 0] = 1
    region_map, regions = find_regions(given, corrected, source="vol")
    assert sorted(r.area for r in regions) == [1, 1, 12]
    tube = max(regions, key=lambda r: r.area)
    assert tube.bbox == (0, 2, 2, 3, 4, 4) and tube.centroid == pytest.approx((1.0, 2.5, 2.5))
    assert set(np.unique(region_map[:, 2:4, 2:4])) == {tube.id}
    # Voxels touching only by an edge across slices are separate (face connectivity).
    corner = np.zeros((2, 3, 3), np.int32)
    corner[0, 0, 0] = corner[1, 1, 1] = 1
    _, regions = find_regions(np.zeros_like(corner), corner)
    assert len(regions) == 2


def test_no_changes_and_bad_shapes():
    labels = np.ones((4, 4), np.int32)
    region_map, regions = find_regions(labels, labels.copy())
    assert regions == [] and region_map.shape == (4, 4) and not region_map.any()
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        find_regions(labels, np.ones((4, 5), np.int32))
    with pytest.raises(ValueError, match=r"noise map \(2, 2\)"):
        find_regions(labels, labels.copy(), noise=np.zeros((2, 2)))


def test_regions_to_csv_columns_and_values():
    given, corrected, noise = _scene()
    _, regions = find_regions(given, corrected, noise, source="img")
    text = regions_to_csv(regions)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0].split(",") == list(CSV_COLUMNS)
    assert CSV_COLUMNS == ("id", "source", "kind", "area", "mean_noise", "from_class", "to_class",
                           "centroid", "bbox", "status")
    assert len(rows) == 4
    blob = next(row for row in rows if row["area"] == "6" and row["kind"] == "add")
    assert blob["source"] == "img" and blob["status"] == "pending"
    assert float(blob["mean_noise"]) == pytest.approx(0.4)
    assert blob["centroid"] == "1.5 7.0" and blob["bbox"] == "1 6 3 9"
    assert regions_to_csv([]).strip() == ",".join(CSV_COLUMNS)
