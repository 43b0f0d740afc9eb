"""Where a verified object lies in a gallery photo: the part of the query box that the photo shows.

The verified transform maps the whole query box into the photo. A box drawn around an object holds
background at its edges, and another photo may frame the object tighter or show other surroundings, so
the mapped box can reach far beyond the object. Here the photo is warped back onto the query box and
compared pixel by pixel (after one gain and bias per colour, for other light); the box's edges are then
peeled inwards while what they cross does not look like the query. What remains, mapped into the photo,
is the located box.
"""

from __future__ import annotations

import cv2
import numpy as np

from .verify import box_offset

confs = {
    # The comparison runs at `side` px on the query box's longer side, both images blurred by `blur` px
    # there (small misalignments). A pixel agrees when the two are alike in a `window` px square around
    # it: correlated (normalised cross-correlation over `correlation`), or, counting `flat_weight` (two
    # flat patches are weak evidence: any plain wall matches any plain sky), both flat (grey level spread
    # under `flat`) and of one brightness (within `tolerance` of the full range, after a gain and bias
    # per colour fitted on the box's inner `centre` part, for other light). An edge is peeled while under
    # `keep` of its outer `band` of the box agrees. A peeled box under `min_area` of the original means
    # the comparison failed (e.g. blur, glare): the mapped box stays.
    "default": {"side": 128, "blur": 1.0, "window": 7, "correlation": 0.5, "flat": 6.0, "flat_weight": 0.5, "tolerance": 0.08,
                "keep": 0.3, "band": 3, "centre": 0.6, "min_area": 0.1},
}


def scaled_transform(transform: np.ndarray, width: int, height: int, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The transform from a (w, h) grid over the query box, `side` px on its longer side, to photo pixels."""
    scale = side / max(width, height)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    return transform @ np.diag([width / size[0], height / size[1], 1.0]), size


def fit_light(query: np.ndarray, photo: np.ndarray, where: np.ndarray, gains=(0.4, 2.5)) -> np.ndarray:
    """`photo` with a gain (within `gains`: a light change, not a wipe-out) and bias per colour that bring it
    to `query` over the pixels `where`, fitted robustly (medians): parts of the box may not match."""
    out = np.empty_like(photo)
    for c in range(photo.shape[2]):
        x, y = photo[..., c][where], query[..., c][where]
        spread_x, spread_y = (np.percentile(v, 90) - np.percentile(v, 10) for v in (x, y))
        gain = float(np.clip(spread_y / spread_x, *gains)) if spread_x > 1 else 1.0
        out[..., c] = gain * photo[..., c] + float(np.median(y - gain * x))
    return out


def local_stats(a: np.ndarray, b: np.ndarray, window: int):
    """Per pixel, over a window: the normalised cross-correlation of a and b, and each one's spread (std)."""
    mean = lambda x: cv2.blur(x, (window, window))  # noqa: E731
    ma, mb = mean(a), mean(b)
    var_a = np.maximum(mean(a * a) - ma * ma, 0)
    var_b = np.maximum(mean(b * b) - mb * mb, 0)
    cov = mean(a * b) - ma * mb
    return cov / np.sqrt(var_a * var_b + 1e-6), np.sqrt(var_a), np.sqrt(var_b)


def inner(shape: tuple[int, int], part: float) -> np.ndarray:
    """(h, w) mask of a box's inner `part`, by the larger of the two offsets from its centre (1 at the edge)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    return box_offset(xs + 0.5, ys + 0.5, shape[1], shape[0]) < part  # pixel centres


def agreement(query: np.ndarray, photo: np.ndarray, transform: np.ndarray, conf: dict = confs["default"],
              textured: bool = False):
    """How much each pixel of a grid over the query box looks alike in the photo: (agree, scaled transform),
    agree being an (h, w) map of weights from 0 to 1 (0 where the box falls outside the photo).
    `textured`: only correlated pixels where either side has texture count (see `alike`)."""
    height, width = query.shape[:2]
    grid_transform, size = scaled_transform(transform, width, height, conf["side"])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    seen = cv2.warpPerspective(photo.astype(np.float32), grid_transform, size, flags=flags)
    inside = cv2.warpPerspective(np.ones(photo.shape[:2], np.float32), grid_transform, size,
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0.5
    small = cv2.resize(query, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    small, seen = (cv2.GaussianBlur(a, (0, 0), conf["blur"]) for a in (small, seen))
    centre = inside & inner(size[::-1], conf["centre"])
    if centre.sum() < 16:
        return np.zeros(size[::-1]), grid_transform
    correlation, spread_query, spread_seen = local_stats(small.mean(axis=2), seen.mean(axis=2), conf["window"])
    flat = (spread_query < conf["flat"]) & (spread_seen < conf["flat"])
    correlated = correlation > conf["correlation"]
    if textured:  # no light fit needed: flat pixels count nothing
        return inside * (correlated & ~flat), grid_transform
    alike = np.abs(fit_light(small, seen, centre) - small).mean(axis=2) < conf["tolerance"] * 255
    return inside * np.where(correlated, 1.0, conf["flat_weight"] * (flat & alike)), grid_transform


def peel(agree: np.ndarray, keep: float, band: int = 1) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the rectangle left after removing, one row or column at a time, the edge whose
    outer `band` rows or columns of `agree` (weights from 0 to 1) agree least, while they agree under `keep`."""
    height, width = agree.shape
    x0, y0, x1, y1 = 0, 0, width, height
    share = agree.astype(np.float64)
    while x1 - x0 > 2 * band and y1 - y0 > 2 * band:
        inner = share[y0:y1, x0:x1]
        shares = (inner[:, :band].mean(), inner[:, -band:].mean(), inner[:band].mean(), inner[-band:].mean())
        side = int(np.argmin(shares))
        if shares[side] >= keep:
            break
        if side == 0:
            x0 += 1
        elif side == 1:
            x1 -= 1
        elif side == 2:
            y0 += 1
        else:
            y1 -= 1
    return x0, y0, x1, y1


def alike(query: np.ndarray, photo: np.ndarray, transform: np.ndarray, conf: dict = confs["default"]) -> float:
    """The share (0 to 1) of the query box's inner `centre` part that correlates with the photo under
    `transform`, where either side has texture: where an object was boxed, its middle is the object (its
    edges may be background), and two flat patches (a plain object on any plain wall) prove nothing."""
    agree, _ = agreement(query, photo, transform, conf, textured=True)
    return float(agree[inner(agree.shape, conf["centre"])].mean())


def seen_part(query: np.ndarray, photo: np.ndarray, transform: np.ndarray, conf: dict = confs["default"]) -> np.ndarray | None:
    """Corners (4, 2), in photo pixels, of the part of the query box (`query`, RGB) that the photo shows
    under `transform` (query box pixels -> photo pixels); None when the comparison finds too little."""
    agree, grid_transform = agreement(query, photo, transform, conf)
    x0, y0, x1, y1 = peel(agree, conf["keep"], conf["band"])
    if (x1 - x0) * (y1 - y0) < conf["min_area"] * agree.size:
        return None
    corners = np.array([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]], np.float64)
    return cv2.perspectiveTransform(corners, grid_transform)[0].astype(np.float32)
