"""Searching one committed state of an index (a snapshot) with the cnn, sift, regional and hybrid methods.

A search holds one snapshot from start to end, so a writer's commit in the middle of it cannot mix two
states; searches never write into the index, so a read-only index serves."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..errors import SpotitError
from ..images import Box, load_image
from ..images import crop as crop_to_box
from . import localise, rerank, verdict
from .matching import ratio_matches
from .ranking import rank
from .snapshot import Snapshot
from .verify import map_box

CNN_SHORTLIST = 1000  # photos the cnn method ranks in a gallery searched through faiss, when fewer are asked for


@dataclass
class Result:
    id: str  # unique in the gallery: its relative path without extension (see images.assign_ids)
    path: str  # absolute path of the gallery image
    score: float
    inliers: int | None = None  # hybrid: geometrically consistent matches with the query
    quad: np.ndarray | None = None  # hybrid, verified: corners (4, 2) of the query box, or of the part of it this image shows
    width: int | None = None  # size of the gallery photo, upright
    height: int | None = None
    stale: str | None = None  # "deleted" or "changed": the photo is no longer what was indexed
    query_photo: int | None = None  # several query photos: which one (from 0) matched it best
    # hybrid: does it show the query object (verdict.py), from the verification score and the CNN similarity
    match: str | None = None
    confidence: float | None = None
    evidence: float | None = None
    similarity: float | None = None

    @property
    def box(self) -> Box | None:
        """Bounding box (x, y, w, h) of where the object lies in this gallery image, clipped to the photo."""
        if self.quad is None:
            return None
        x0, y0 = np.floor(self.quad.min(axis=0)).astype(int)
        x1, y1 = np.ceil(self.quad.max(axis=0)).astype(int)
        if self.width and self.height:
            x0, y0 = max(int(x0), 0), max(int(y0), 0)
            x1, y1 = min(int(x1), self.width), min(int(y1), self.height)
        return (int(x0), int(y0), int(max(x1 - x0, 0)), int(max(y1 - y0, 0)))

    def to_dict(self) -> dict:
        out = {"id": self.id, "path": self.path, "score": round(float(self.score), 6)}
        if self.inliers is not None:
            out["inliers"] = self.inliers
        if self.quad is not None:
            out["box"] = list(self.box)
            out["quad"] = np.round(self.quad.astype(np.float64), 1).tolist()
        if self.match is not None:
            out["match"], out["confidence"] = self.match, round(float(self.confidence), 4)
        if self.query_photo is not None:
            out["query_photo"] = self.query_photo
        if self.stale:
            out["stale"] = self.stale
        return out


class Searcher:
    """Scores one query crop against a snapshot; `extractor(kind)` gives the query's feature extractors."""

    def __init__(self, extractor, conf: str = "default"):
        self.extractor = extractor
        self.conf = rerank.confs[conf]

    def cnn(self, snap: Snapshot, query: np.ndarray, top: int | None = None, mask=None) -> np.ndarray:
        """Seed CNN: cosine similarity of global descriptors (in a large gallery, of the CNN_SHORTLIST or `top`
        best in `mask`; the others score -1)."""
        k = None if top is None else max(top, CNN_SHORTLIST)
        return snap.global_vectors().scores(self.extractor("global")(query), k, mask)

    def regional(self, snap: Snapshot, query: np.ndarray, photo_side: int | None = None, boxed: bool = False):
        """Best cosine similarity between the query and any region of each gallery image, in the whitened
        space: (scores, best scores of the turned query, whitened upright query vector).
        `photo_side`: longest side of the photo the query was cropped from. A boxed query scores by its
        best view (rerank.confs); a whole photo by its upright view."""
        regions, whitening = snap.regions()
        descriptors = self.extractor("regions").query(query, photo_side, rerank.query_views(self.conf, boxed))
        if whitening is not None:
            descriptors = whitening(descriptors)
        sims = regions.scores(descriptors)
        if boxed and self.conf["boxed_views"]:
            best = sims.max(axis=0)
            return best, best, descriptors[0]
        rotated = sims[1:].max(axis=0) if len(sims) > 1 else np.full(len(snap.names), -np.inf)
        return sims[0], rotated, descriptors[0]

    def sift(self, snap: Snapshot, query: np.ndarray, progress: bool = False) -> np.ndarray:
        """Seed SIFT: ratio-test match counts against every gallery image."""
        gallery = snap.local("sift")
        features = self.extractor("sift")(query)
        counts = [len(ratio_matches(features.descriptors, gallery[n].descriptors))
                  for n in tqdm(snap.names, desc="matching", disable=not progress)]
        return np.array(counts, np.float32)

    def hybrid(self, snap: Snapshot, query: np.ndarray, photo_side: int, boxed: bool, mask=None):
        """Regional shortlist (of the photos in `mask`) re-ranked by spatial verification: (scores,
        verifications by row)."""
        with ThreadPoolExecutor(1) as pool:  # the query's SIFT (OpenCV, no GIL) runs beside the CNN
            query_local = pool.submit(self.extractor("verify"), query)
            scores, rotated, query_vector = self.regional(snap, query, photo_side, boxed)
            query_local = query_local.result()
        if mask is not None:
            scores, rotated = within(scores, mask), within(rotated, mask)
        fused, checks = rerank.rerank(query_local, (query.shape[1], query.shape[0]), boxed, snap.names, scores, rotated,
                                      snap.reader("verify"), snap.sizes, self.conf, snap.regions()[0], query_vector,
                                      lambda row, transform: looks_alike(query, self._result(snap, row, 0.0), transform))
        return within(fused, mask), checks  # query expansion re-scores the whole gallery

    def scores(self, snap: Snapshot, crop: np.ndarray, method: str, progress: bool, photo_side: int, boxed: bool,
               mask=None, top: int | None = None):
        """(scores, verifications or None) of every gallery image for one query crop; -inf outside `mask`."""
        if method == "hybrid":
            return self.hybrid(snap, crop, photo_side, boxed, mask)
        if method == "cnn":
            scores = self.cnn(snap, crop, top, mask)
        elif method == "sift":
            scores = self.sift(snap, crop, progress)
        else:
            scores = self.regional(snap, crop, photo_side, boxed)[0]
        return within(scores, mask), None

    def search(self, snap: Snapshot, images: list[np.ndarray], boxes: list[list[Box]], method: str, top: int | None,
               progress: bool = False, mask: np.ndarray | None = None, matches: str | None = None) -> list[Result]:
        """Rank the snapshot's gallery (the photos in `mask`) for query photos of one object (`images`), each
        cropped to its boxes (none: the whole photo); every crop is searched and verified on its own, and
        they merge by best score. `matches` ("yes", or "maybe": yes and maybe) keeps only those verdicts."""
        crops = [(photo, image if box is None else crop_to_box(image, box), max(image.shape[:2]), box is not None)
                 for photo, (image, photo_boxes) in enumerate(zip(images, boxes)) for box in (photo_boxes or [None])]
        per_crop = [self.scores(snap, crop, method, progress, side, boxed, mask, top) for _, crop, side, boxed in crops]
        stacked = np.stack([scores for scores, _ in per_crop])
        merged = stacked.max(axis=0)
        if method == "hybrid":  # a result is judged by its crop with the best evidence, not the best hint
            stacked = stacked - np.stack([rerank.hints(checks, len(merged), boxed, self.conf)
                                          for (_, checks), (_, _, _, boxed) in zip(per_crop, crops)])
        best_crop = stacked.argmax(axis=0)
        limit, accepted = top, verdict.VERDICTS
        if matches:
            merged, limit = could_match(merged, [checks for _, checks in per_crop], matches)
            accepted = verdict.VERDICTS[: verdict.VERDICTS.index(matches) + 1]
        ranked = rank(merged, limit)
        ranked = ranked[np.isfinite(merged[ranked])]  # -inf: outside the scope (ranked last)
        if method == "hybrid":  # every candidate's verdict at once: a million-photo search may rank thousands
            checks = [per_crop[best_crop[i]][1].get(i) for i in ranked]
            evidence = np.array([check.score if check else 0.0 for check in checks])
            similarity = stacked[best_crop[ranked], ranked] - rerank.bonus(evidence, self.conf)
            confidence = verdict.probability(evidence, similarity)
        results = []
        for at, i in enumerate(ranked.tolist()):
            if top is not None and len(results) == top:
                break
            result = self._result(snap, i, float(merged[i]))
            if method == "hybrid":
                check, (_, crop, _, boxed) = checks[at], crops[best_crop[i]]
                result.inliers = check.inliers if check else 0
                result.quad = rerank.locate(check, crop.shape[1], crop.shape[0])
                if result.quad is not None and boxed and self.conf["seen_boxes"]:
                    result.quad = seen_quad(crop, result, check.transform)
                result.evidence, result.similarity = float(evidence[at]), float(similarity[at])
                result.confidence = float(confidence[at])
                result.match = verdict.verdict(result.confidence)
            if len(images) > 1:
                result.query_photo = crops[best_crop[i]][0]
            if result.match is None or result.match in accepted:
                results.append(result)
        return results

    def _result(self, snap: Snapshot, row: int, score: float) -> Result:
        name = snap.names[row]
        entry = snap.store.entry(name, row)
        path = os.path.join(snap.manifest["gallery"], name)
        return Result(snap.ids[row], path, score, width=entry.get("width"), height=entry.get("height"),
                      stale=stale_reason(path, entry))


def indexed_photo(result: Result, quad: np.ndarray, transform: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The result's photo, decoded as small as a comparison over `quad` (its pixels) allows, `transform`
    (query box -> photo pixels) in the decoded pixels, and their scale; None where the photo is no longer
    the one indexed or cannot be read."""
    if result.stale or not (result.width and result.height):
        return None
    # the comparison needs only `side` px across the box: a big photo may decode smaller (with a margin)
    extent = float(np.ptp(np.clip(quad, 0, [result.width, result.height]), axis=0).max())
    at_least = int(min(result.width, result.height) * 2 * localise.confs["default"]["side"] / max(extent, 1.0))
    try:
        photo = load_image(result.path, at_least=at_least)
    except (SpotitError, OSError):
        return None
    scale = photo.shape[1] / result.width
    if abs(photo.shape[0] / result.height - scale) > 0.02:  # not the photo that was indexed
        return None
    return photo, np.diag([scale, scale, 1.0]) @ transform, scale


def seen_quad(crop: np.ndarray, result: Result, transform: np.ndarray) -> np.ndarray:
    """The result's located quad cut to the part of the query box that its photo shows (localise.py); the
    mapped box as it is where the photo is no longer the one indexed or the comparison finds too little."""
    loaded = indexed_photo(result, result.quad, transform)
    if loaded is None:
        return result.quad
    photo, scaled, scale = loaded
    seen = localise.seen_part(crop, photo, scaled)
    return result.quad if seen is None else seen / scale


def looks_alike(crop: np.ndarray, result: Result, transform: np.ndarray) -> float:
    """How alike the result's photo looks to the query box under `transform` (localise.alike); 0 where the
    photo is no longer the one indexed or cannot be read."""
    loaded = indexed_photo(result, map_box(transform, crop.shape[1], crop.shape[0]), transform)
    return 0.0 if loaded is None else localise.alike(crop, *loaded[:2])


def stale_reason(path: str, entry: dict) -> str | None:
    """'deleted' or 'changed' when the gallery photo is no longer the one that was indexed (one stat)."""
    try:
        stat = os.stat(path)
    except OSError:
        return "deleted"
    if (stat.st_size, stat.st_mtime_ns) != (entry.get("size"), entry.get("mtime_ns")):
        return "changed"
    return None


def within(scores: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """`scores` with -inf for the photos outside `mask` (None: all are inside)."""
    return scores if mask is None else np.where(mask, scores, -np.inf)


def could_match(merged: np.ndarray, checks: list[dict], matches: str) -> tuple[np.ndarray, int]:
    """The scores of the photos that may get a `matches` verdict or better (-inf for the others), and how
    many: the verified ones, and those whose CNN similarity (their score, unverified) is enough alone."""
    cut = verdict.confs["default"]["yes" if matches == "yes" else "maybe"]
    candidates = np.zeros(len(merged), bool)
    for rows in checks:
        candidates[list(rows)] = True
    with np.errstate(over="ignore"):  # -inf outside the scope
        candidates |= verdict.probability(0.0, merged) >= cut
    return np.where(candidates, merged, -np.inf), int(candidates.sum())
