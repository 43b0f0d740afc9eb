"""Behaviour on the real dev sets (../shared/datasets; skipped where absent): no query's top 10 holds a
result whose located box is degenerate. Figures (mAP, speed) live in benchmarks/, not here."""

import math

import cv2
import numpy as np
import pytest

DEV_SETS = ["clutter-hard-dev", "holidays-dev", "ukbench-dev"]


def degenerate(quad: np.ndarray, width: int, height: int, boxed: bool = True) -> str | None:
    """Why a located box is no view of an object, judged from the quadrilateral alone; None if it is sound.
    Only a boxed object must lie mostly within the photo: a whole photo used as the query maps beyond a
    photo that shows part of its scene."""
    quad = np.asarray(quad, np.float32)
    if not cv2.isContourConvex(quad.reshape(-1, 1, 2)):
        return "self-crossing or concave"
    area = abs(cv2.contourArea(quad))
    perimeter = cv2.arcLength(quad.reshape(-1, 1, 2), True)
    if 4 * math.pi * area / perimeter**2 < 0.1:  # a square scores 0.79, a 20:1 sliver 0.14
        return "a thin sliver"
    photo = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    inside, _ = cv2.intersectConvexConvex(quad, photo)
    if boxed and inside < 0.5 * area:
        return "mostly outside the photo"
    return None


def test_degenerate_recognises_slivers_bow_ties_and_quads_outside():
    assert degenerate([[10, 10], [110, 10], [110, 60], [10, 60]], 200, 100) is None
    assert degenerate([[10, 10], [110, 60], [110, 10], [10, 60]], 200, 100) == "self-crossing or concave"
    assert degenerate([[10, 10], [190, 10], [190, 13], [10, 13]], 200, 100) == "a thin sliver"
    assert degenerate([[150, 10], [400, 10], [400, 90], [150, 90]], 200, 100) == "mostly outside the photo"
    assert degenerate([[150, 10], [400, 10], [400, 90], [150, 90]], 200, 100, boxed=False) is None


@pytest.mark.slow
@pytest.mark.parametrize("name", DEV_SETS)
def test_no_dev_query_has_a_degenerate_box_in_its_top_10(name, dev_index):
    dataset, index = dev_index(name)
    bad = []
    for query in dataset.queries:
        for hit in index.search(query.path, query.boxes, top=10):
            if hit.quad is not None and (why := degenerate(hit.quad, hit.width, hit.height, bool(query.boxes))):
                bad.append(f"{query.name} -> {hit.id}: {why}")
    assert not bad, bad[:10]
