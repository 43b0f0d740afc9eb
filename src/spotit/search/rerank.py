"""Re-ranking a CNN shortlist by spatial verification, query expansion, and fusing the scores."""

from __future__ import annotations

import numpy as np

from ..features.local_features import LocalFeatures
from ..features.pooling import l2_normalise
from .ranking import rank
from .verify import Verification, map_box, verify_many
from .verify import confs as verify_confs

confs = {
    # Verified images (inliers >= min_inliers) get weight * inliers / (inliers + half) on top of their CNN
    # score: they outrank unverified ones, more inliers count more, with diminishing returns.
    # The shortlist holds `shortlist` images: up to `rotated_shortlist` best by the query turned by 90, 180
    # and 270 degrees, the rest by the upright CNN score.
    # A whole photo as query (a scene): turned queries, seen at `rotated_scale` of the upright scale, only
    # bring rotated views into the shortlist: scoring by them let unrelated images in (-0.07 mAP on
    # Holidays, whose scenes are upright). A boxed query is an object, which photos show at any angle and
    # size: it is seen at each of `boxed_scales` (the object smaller than in the query photo, as it is in
    # most other photos) and each turn, and scored by its best view.
    # Query expansion averages the query with the best-matching region of up to `qe` images verified with
    # >= qe_min_inliers, and re-scores the whole gallery with it (searched through faiss: the photos the query's
    # own vector search found, whose regions are read already). Since verification refuses unsound shapes
    # and discounts the box's border, every verified image is trusted to expand (spotit 0.1 asked for 15).
    # A boxed object's sound fit with `confirm_from` to min_inliers (weighted) inliers is checked on the
    # photo itself: where at least `confirm_alike` of the box's middle correlates with it (localise.alike),
    # it counts as verified with min_inliers. Small and smooth objects hold few keypoints; a chance fit
    # of a few matches does not make the photo look like the object. The bar is above what chance fits
    # reach (mostly under 0.2) and high enough that a confirmed fit also places the box well.
    # A whole photo (a scene) as query: a photo that looks like many others (a common kind of view) scores
    # high against any query of its kind, so its score loses `density_weight` times how alike it is to its
    # `density_k` nearest photos, relative to the shortlist's median (hubness reduction). Not for a boxed
    # object: a photo's neighbours are those of its scene, which says nothing about one object in it.
    # A whole photo that no homography verifies may still show the same place from elsewhere (a scene has
    # depth): the ratio-test matches that verification found are weak evidence. Unverified, it gains up to
    # `matches_weight` (less than the least a verified photo gains), half of that at `matches_half` matches.
    # The verdict does not read it. Not for a boxed object: a box's surroundings match other photos of its
    # place as well as the object does (it helped one clutter set, hurt one, and was mixed on two).
    "default": {"shortlist": 100, "rotated_shortlist": 10, "query_rotations": 4, "rotated_scale": 0.5,
                "boxed_views": True, "boxed_scales": (1.0, 0.7), "min_inliers": 8, "weight": 1.0, "half": 40,
                "qe": 2, "qe_min_inliers": 8, "verify": "default", "seen_boxes": True,
                "confirm_from": 3, "confirm_alike": 0.35, "density_weight": 0.3, "density_k": 10,
                "matches_weight": 0.1, "matches_half": 10},
}
# steps of the ablation in benchmarks/ablation.py; "v0.1" is spotit 0.1's hybrid
confs["inlier-in-centre"] = {**confs["default"], "matches_weight": 0.0}
confs["hubness"] = {**confs["inlier-in-centre"], "verify": "weighted"}
confs["confirmed"] = {**confs["hubness"], "density_weight": 0.0}
confs["expansion"] = {**confs["confirmed"], "confirm_from": None}
confs["views"] = {**confs["expansion"], "qe_min_inliers": 15}
confs["v0.1"] = {**confs["views"], "verify": "plain", "boxed_views": False, "seen_boxes": False}
confs["no-qe"] = {**confs["v0.1"], "qe": 0}
confs["upright"] = {**confs["no-qe"], "query_rotations": 1, "rotated_shortlist": 0}
confs["shape"] = {**confs["v0.1"], "verify": "shape"}
confs["centre"] = {**confs["v0.1"], "verify": "weighted"}


def query_views(conf: dict, boxed: bool) -> tuple[tuple[float, int], ...]:
    """(scale, quarter turns) of each query view to describe; the first is the upright query itself."""
    if boxed and conf["boxed_views"]:
        views = [(scale, turns) for scale in conf["boxed_scales"] for turns in range(conf["query_rotations"])]
        return ((1.0, 0),) + tuple(v for v in views if v != (1.0, 0))
    return ((1.0, 0),) + tuple((conf["rotated_scale"], turns) for turns in range(1, conf["query_rotations"]))


def bonus(inliers, conf: dict):
    """What verification adds to a CNN score."""
    inliers = np.asarray(inliers, np.float64)
    return conf["weight"] * np.where(inliers >= conf["min_inliers"], inliers / (inliers + conf["half"]), 0.0)


def fuse(cnn: np.ndarray, inliers: np.ndarray, conf: dict) -> np.ndarray:
    return cnn + bonus(inliers, conf)


def hint(inliers, matches, conf: dict):
    """What a whole photo's ratio-test matches add where it is not verified (see confs)."""
    matches = np.asarray(matches, np.float64)
    unverified = np.asarray(inliers) < conf["min_inliers"]
    return np.where(unverified, conf["matches_weight"] * matches / (matches + conf["matches_half"]), 0.0)


def hints(checks: dict[int, Verification], size: int, boxed: bool, conf: dict) -> np.ndarray:
    """Each of `size` photos' hint from its verification in `checks` (none for a boxed query, or unchecked)."""
    out = np.zeros(size)
    if not boxed and checks:
        rows = np.fromiter(checks, np.int64, len(checks))
        out[rows] = hint([c.score for c in checks.values()], [c.matches for c in checks.values()], conf)
    return out


def shortlist(upright: np.ndarray, rotated: np.ndarray, conf: dict) -> list[int]:
    """`shortlist` rows in all: the best by the rotated query's score (up to `rotated_shortlist`), the rest
    by the upright score."""
    chosen: dict[int, None] = {}
    if conf["rotated_shortlist"] and np.isfinite(rotated).any():
        chosen.update(dict.fromkeys(int(i) for i in rank(rotated, conf["rotated_shortlist"]) if np.isfinite(rotated[i])))
    for i in rank(upright, conf["shortlist"] + len(chosen)):
        if len(chosen) >= conf["shortlist"] or not np.isfinite(upright[i]):  # -inf: outside the search's scope
            break
        chosen.setdefault(int(i))
    return list(chosen)


def rerank(query: LocalFeatures, query_size: tuple[int, int], boxed: bool, names: list[str], upright: np.ndarray,
           rotated: np.ndarray, read, sizes: np.ndarray, conf: dict, regions,
           query_vector: np.ndarray, alike=None) -> tuple[np.ndarray, dict[int, Verification]]:
    """Verify the shortlist; returns the final scores of every image and each verification by row.
    `query_size` is the query crop's (width, height), `sizes` each gallery photo's; `boxed`: the query
    was cut from a photo by a box.

    `regions` searches the gallery's whitened region descriptors (vectors.ExactRegions or ApproximateRegions)
    and knows how alike photos are to their nearest neighbours where it holds every photo (`density`);
    `alike(row, transform)` says how alike the photo of `row` looks to a boxed query (localise.alike)."""
    rows = shortlist(upright, rotated, conf)
    verifications = verify_many(query, [read(names[i], i) for i in rows], query_size,
                                [tuple(sizes[i].tolist()) for i in rows], boxed, verify_confs[conf["verify"]])
    checks = dict(zip(rows, verifications))
    if boxed and alike is not None:
        confirm(checks, alike, conf)
    inliers = np.zeros(len(names))  # the evidence: inliers weighted by where they lie in the box
    for i, check in checks.items():
        inliers[i] = check.score
    verified = inliers >= conf["min_inliers"]
    # a verified image seen turned counts with the rotated query's score
    base = np.where(verified, np.maximum(upright, rotated), upright)
    if conf["qe"]:
        fused = fuse(base, inliers, conf)
        expanding = expansion(fused, inliers, conf)
        if expanding:
            blocks = [regions.block(i) for i in expanding]
            best_regions = [block[:, np.argmax(query_vector @ block)] for block in blocks]
            expanded = l2_normalise(query_vector + np.sum(best_regions, axis=0))
            base = np.maximum(base, regions.requery(expanded)[0])
    scores = fuse(base, inliers, conf) + hints(checks, len(names), boxed, conf)
    if not boxed and conf["density_weight"] and rows:
        density = regions.density(np.array(rows), conf["density_k"])
        if density is not None:
            scores[rows] -= crowding(density, conf)
    return scores, checks


def crowding(density: np.ndarray, conf: dict) -> np.ndarray:
    """What the shortlist's photos lose for their `density` (see confs): centred on its median, so the photos
    outside the shortlist, and scores on the whole, keep their place and scale (verdict.py reads them)."""
    return conf["density_weight"] * (density - np.median(density))


def confirm(checks: dict[int, Verification], alike, conf: dict) -> None:
    """Raise to min_inliers the evidence of each weak but sound fit whose photo looks like the query
    (see confs); `alike(row, transform)` -> share of the box's middle that agrees."""
    if not conf["confirm_from"]:
        return
    for row, check in checks.items():
        weak = check.transform is not None and conf["confirm_from"] <= check.score < conf["min_inliers"]
        if weak and alike(row, check.transform) >= conf["confirm_alike"]:
            check.score = float(conf["min_inliers"])


def expansion(fused: np.ndarray, inliers: np.ndarray, conf: dict) -> list[int]:
    """Rows whose best region joins the query in query expansion: up to `qe` of the 3 * `qe` best by
    `fused` score that hold >= qe_min_inliers (weighted) inliers."""
    return [int(i) for i in rank(fused, 3 * conf["qe"]) if inliers[i] >= conf["qe_min_inliers"]][: conf["qe"]]


def locate(check: Verification | None, width: int, height: int, conf: dict = confs["default"]):
    """Where the query box lies in the gallery image: (4, 2) corners, or None when not verified.

    The crop's keypoints are in crop pixels, so the box is the crop's own rectangle."""
    if check is None or check.transform is None or check.score < conf["min_inliers"]:
        return None
    return map_box(check.transform, width, height)
