"""`spotit eval`: index a benchmark's gallery, run its queries and measure quality and speed."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import SpotitError
from ..features import backbones
from ..index import METHODS, Index
from ..storage.store import Store
from .datasets import Dataset, load_dataset
from .metrics import mean_metrics, ns_score, query_metrics

KAPPAS = (1, 5, 10)


def default_eval_index(dataset: Dataset, backbone: str) -> Path:
    """One index per dataset folder and backbone, kept in the cache (datasets may be read-only)."""
    key = hashlib.sha256(str(dataset.root.resolve()).encode()).hexdigest()[:10]
    return backbones.cache_dir() / "eval" / f"{dataset.name}-{key}-{backbone}"


def eval_index(dataset: Dataset, method: str, backbone: str, index_dir=None) -> Index:
    """The index `spotit eval` uses for a set: `index_dir`, or its own in the cache (rebuilt when outdated)."""
    path = Path(index_dir or default_eval_index(dataset, backbone))
    # the default cache index is ours to rebuild; a user's --index is never replaced behind their back
    stale = index_dir is None and Store.exists(path) and not Index.is_current(path)
    return Index.open_or_create(path, dataset.gallery, [method], backbone, rebuild=stale)


def sample_queries(queries: list, limit: int | None) -> list:
    """At most `limit` queries, evenly spread over the set (deterministic)."""
    if not limit or limit >= len(queries):
        return queries
    picks = np.linspace(0, len(queries) - 1, limit).round().astype(int)
    return [queries[i] for i in sorted(set(picks))]


def evaluate(root, method: str = "hybrid", index_dir=None, backbone: str = backbones.DEFAULT_BACKBONE,
             max_queries: int | None = None, progress: bool = True, index: Index | None = None) -> dict:
    """Quality and speed of `method` on the benchmark at `root`; the dict of `spotit eval --json`."""
    if method not in METHODS:
        raise SpotitError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    dataset = load_dataset(root)
    if not dataset.queries:
        raise SpotitError(f"{root} has no queries")
    if index is None:
        index = eval_index(dataset, method, backbone, index_dir)
    report = index.update(progress=progress)
    result = run_queries(dataset, index, method, max_queries, progress)
    result.pop("query_seconds")
    result["index_bytes_per_image"] = index.store.size_bytes() / max(len(index), 1)
    result["gallery_images"] = len(index)
    result["backbone"] = index.manifest["backbone"]
    result["skipped_images"] = len(report.skipped)
    return result


def run_queries(dataset: Dataset, index: Index, method: str, max_queries: int | None = None, progress: bool = True,
                top: int | None = None, keep=None) -> dict:
    """Quality and speed of `method` for the dataset's queries against `index`, which holds its gallery (and
    maybe more: ids for which `keep` is true count as gallery photos that are never relevant)."""
    allowed = set(dataset.gallery_ids) if dataset.gallery_ids is not None else None
    keep = keep or (lambda _: False)

    queries = sample_queries(dataset.queries, max_queries)
    per_protocol: dict[str, list[dict]] = {p: [] for p in dataset.protocols}
    ns, seconds, overlaps, false_boxes = [], [], [], 0
    object_boxes = dataset.meta.get("object_boxes")
    for query in tqdm(queries, desc=f"eval {method}", unit="query", disable=not progress, dynamic_ncols=True):
        started = time.perf_counter()
        hits = index.search(query.path, query.boxes, method=method, top=top)
        seconds.append(time.perf_counter() - started)
        ranking = [h.id for h in hits if allowed is None or h.id in allowed or keep(h.id)]
        for protocol, (positives, junk) in query.protocols.items():
            per_protocol[protocol].append(query_metrics(ranking, positives, junk, KAPPAS))
        if dataset.groups_of_four:
            positives, junk = query.protocols["default"]
            ns.append(ns_score(ranking, positives, query=junk[0] if junk else None))
        if object_boxes is not None:
            positives = set(query.protocols["default"][0])
            overlaps += [best_iou(h.box, object_boxes.get(h.id, [])) for h in hits if h.box is not None and h.id in positives]
            false_boxes += sum(h.box is not None and h.id not in positives for h in hits[:10])

    main_protocol = "medium" if "medium" in per_protocol else "default"
    means = {p: mean_metrics(rows) for p, rows in per_protocol.items()}
    result = {
        "dataset": dataset.name,
        "method": method,
        "queries": len(queries),
        "map": means[main_protocol]["ap"],
        **{f"p@{k}": means[main_protocol][f"p@{k}"] for k in KAPPAS},
        "ns": float(np.mean(ns)) if ns else None,
        "index_images_per_s": index.manifest.get("images_per_s"),
        "query_seconds": seconds,
        "query_s_median": float(np.median(seconds)),
        "query_s_p95": float(np.percentile(seconds, 95)),
    }
    if object_boxes is not None:
        # localisation: verified relevant results whose box overlaps where the object truly lies
        result["localised_iou50"] = float(np.mean(np.array(overlaps) >= 0.5)) if overlaps else None
        result["verified_relevant"] = len(overlaps)
        result["false_boxes_top10"] = false_boxes
    if dataset.layout == "revisited":
        for protocol in ("easy", "hard"):
            result[f"map_{protocol}"] = means[protocol]["ap"]
    return result


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - width * height
    return width * height / union if union > 0 else 0.0


def best_iou(box, truths) -> float:
    return max((iou(box, truth) for truth in truths), default=0.0)


def format_result(result: dict) -> str:
    lines = [f"{result['dataset']} ({result['method']}, {result['queries']} queries, {result['gallery_images']} gallery images)"]
    quality = [f"mAP {result['map']:.4f}"]
    if "map_easy" in result:
        quality = [f"mAP E {result['map_easy']:.4f}  M {result['map']:.4f}  H {result['map_hard']:.4f}"]
    quality += [f"P@{k} {result[f'p@{k}']:.4f}" for k in KAPPAS]
    if result["ns"] is not None:
        quality.append(f"N-S {result['ns']:.3f}")
    lines.append("  " + "  ".join(quality))
    speed = [f"query {result['query_s_median'] * 1000:.0f} ms median, {result['query_s_p95'] * 1000:.0f} ms p95"]
    if result["index_images_per_s"]:
        speed.append(f"indexing {result['index_images_per_s']:.1f} images/s")
    speed.append(f"{result['index_bytes_per_image'] / 1024:.1f} KiB per image")
    lines.append("  " + "; ".join(speed))
    if result.get("verified_relevant") is not None:
        share = result["localised_iou50"]
        lines.append(f"  localisation: {'-' if share is None else f'{share:.1%}'} of {result['verified_relevant']} verified "
                     f"relevant results overlap the object with IoU >= 0.5; {result['false_boxes_top10']} boxes on "
                     f"false positives in the top 10s")
    return "\n".join(lines)
