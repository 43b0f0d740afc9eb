"""Benchmark layouts: where a set's gallery, queries, boxes and ground truth are.

Three layouts are recognised:
- `images/` + `groundtruth.json` ({query file: [relevant files]}): every query is a gallery image too,
  and is junk in its own ranking (the shared dev sets; UKBench and Holidays).
- the assignment layout: `gallery/`, `query/`, `query_txt/` (one `x y w h` line per box) and
  `groundtruth.json` mapping query file names to relevant gallery file names.
- Revisited Oxford / Paris: `jpg/` + `gnd_roxford5k.pkl` or `gnd_rparis6k.pkl`; Easy / Medium / Hard
  protocols with junk exactly as revisitop; queries cropped to `bbx`.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpotitError
from ..images import Box, image_id, read_box_file

REVISITED = {"gnd_roxford5k.pkl": "roxford5k", "gnd_rparis6k.pkl": "rparis6k"}


@dataclass
class Query:
    name: str  # file name of the query image
    path: Path
    boxes: list[Box]
    # protocol name -> (positive ids, junk ids); plain sets have one protocol, "default"
    protocols: dict[str, tuple[list[str], list[str]]]


@dataclass
class Dataset:
    name: str
    layout: str  # "plain", "assignment" or "revisited"
    root: Path
    gallery: Path
    queries: list[Query]
    gallery_ids: list[str] | None = None  # ids to rank when the gallery folder holds other files too
    groups_of_four: bool = False  # UKBench-style: every object has exactly four views
    meta: dict = field(default_factory=dict)

    @property
    def protocols(self) -> list[str]:
        return list(self.queries[0].protocols) if self.queries else ["default"]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpotitError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise SpotitError(f"{path} must map each query file name to a list of relevant file names")
    return data


def _object_boxes(path: Path) -> dict[str, list[Box]]:
    """Gallery id -> boxes (x, y, w, h) of the query objects pasted into it, from make-clutter's placements."""
    try:
        placements = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpotitError(f"cannot read {path}: {exc}") from None
    return {image_id(name): [tuple(p["box"]) for p in entries if p.get("object", "").startswith("object-")]
            for name, entries in placements.items()}


def _is_groups_of_four(truth: dict[str, list[str]]) -> bool:
    return bool(truth) and all(len(set(v) - {k}) == 3 for k, v in truth.items())


def load_dataset(root: str | os.PathLike) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise SpotitError(f"dataset folder not found: {root}")
    for pkl, name in REVISITED.items():
        if (root / pkl).is_file() and (root / "jpg").is_dir():
            return _load_revisited(root, root / pkl, name)
    truth_path = root / "groundtruth.json"
    if (root / "images").is_dir() and truth_path.is_file():
        truth = _read_json(truth_path)
        queries = [
            Query(q, root / "images" / q, [], {"default": ([image_id(r) for r in rel if r != q], [image_id(q)])})
            for q, rel in sorted(truth.items())
        ]
        return Dataset(root.name, "plain", root, root / "images", queries, groups_of_four=_is_groups_of_four(truth))
    if all((root / d).is_dir() for d in ("gallery", "query")) and truth_path.is_file():
        truth = _read_json(truth_path)
        queries = []
        for q, rel in sorted(truth.items()):
            path = root / "query" / q
            if not path.is_file():
                raise SpotitError(f"{truth_path} names query {q}, which is not in {root / 'query'}")
            box_file = root / "query_txt" / f"{Path(q).stem}.txt"
            boxes = read_box_file(box_file) if box_file.is_file() else []
            queries.append(Query(q, path, boxes, {"default": ([image_id(r) for r in rel], [])}))
        meta = {"object_boxes": _object_boxes(root / "placements.json")} if (root / "placements.json").is_file() else {}
        return Dataset(root.name, "assignment", root, root / "gallery", queries, meta=meta)
    raise SpotitError(
        f"{root} is no benchmark layout spotit knows: expected images/ + groundtruth.json, "
        f"gallery/ + query/ + query_txt/ + groundtruth.json, or jpg/ + gnd_roxford5k.pkl / gnd_rparis6k.pkl"
    )


def _load_revisited(root: Path, pkl: Path, name: str) -> Dataset:
    try:
        with open(pkl, "rb") as handle:
            gnd = pickle.load(handle)
        imlist, qimlist, entries = gnd["imlist"], gnd["qimlist"], gnd["gnd"]
    except (OSError, pickle.UnpicklingError, KeyError, EOFError) as exc:
        raise SpotitError(f"cannot read {pkl}: {exc}") from None
    ids = [str(i) for i in imlist]
    queries = []
    for qname, entry in zip(qimlist, entries):
        easy = [ids[i] for i in entry["easy"]]
        hard = [ids[i] for i in entry["hard"]]
        junk = [ids[i] for i in entry["junk"]]
        x0, y0, x1, y1 = (float(v) for v in entry["bbx"])
        box = (round(x0), round(y0), max(1, round(x1 - x0)), max(1, round(y1 - y0)))
        queries.append(Query(
            f"{qname}.jpg", root / "jpg" / f"{qname}.jpg", [box],
            {
                # revisitop: Easy ignores hard positives, Hard ignores easy ones, both as junk
                "easy": (easy, junk + hard),
                "medium": (easy + hard, junk),
                "hard": (hard, junk + easy),
            },
        ))
    return Dataset(name, "revisited", root, root / "jpg", queries, gallery_ids=ids)
