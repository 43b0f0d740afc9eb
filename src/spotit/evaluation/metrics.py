"""Retrieval quality measures, following the published evaluation code of each benchmark.

A ranking is a list of gallery ids, best first. Ties in scores must be broken before (spotit breaks them
by gallery order, never by relevance). Junk ids are removed from the ranking before scoring, as in the
Oxford / Paris / revisitop evaluation; the query itself is junk in sets whose queries are gallery images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def positive_ranks(ranking: Sequence[str], positives: Iterable[str], junk: Iterable[str] = ()) -> np.ndarray:
    """0-based ranks of the positives in the ranking once junk ids are taken out."""
    positives, junk = set(positives), set(junk) - set(positives)
    kept = [item for item in ranking if item not in junk]
    return np.array([rank for rank, item in enumerate(kept) if item in positives], dtype=np.int64)


def average_precision(ranks: np.ndarray, n_positives: int) -> float:
    """AP as the area under the precision-recall curve by trapezoids (Holidays, Oxford, revisitop).

    `ranks` are the sorted 0-based ranks of the retrieved positives; positives never retrieved add nothing.
    """
    if n_positives <= 0:
        return float("nan")
    ap = 0.0
    step = 1.0 / n_positives
    for found, rank in enumerate(np.sort(ranks)):
        precision_before = 1.0 if rank == 0 else found / rank
        precision_at = (found + 1) / (rank + 1)
        ap += (precision_before + precision_at) * step / 2.0
    return ap


def precision_at(ranks: np.ndarray, k: int) -> float:
    """Precision at k as revisitop defines it: the cut-off shrinks to the last positive's rank when that
    comes sooner, so a query with two positives, both in the top 2, scores 1.0 at every k."""
    if len(ranks) == 0:
        return 0.0
    one_based = np.sort(ranks) + 1
    cut = min(int(one_based.max()), k)
    return float((one_based <= cut).sum() / cut)


def ns_score(ranking: Sequence[str], positives: Iterable[str], query: str | None = None) -> float:
    """UKBench's N-S score: 1 for the query itself plus the positives in the top 3 of the ranking without it."""
    rest = [item for item in ranking if item != query][:3]
    positives = set(positives)
    return 1.0 + sum(item in positives for item in rest)


def query_metrics(ranking: Sequence[str], positives: Sequence[str], junk: Sequence[str] = (),
                  kappas: Sequence[int] = (1, 5, 10)) -> dict:
    """AP and P@k of one query (AP is NaN for a query without positives, which the mean then skips)."""
    ranks = positive_ranks(ranking, positives, junk)
    out = {"ap": average_precision(ranks, len(set(positives)))}
    for k in kappas:
        out[f"p@{k}"] = precision_at(ranks, k) if positives else float("nan")
    return out


def mean_metrics(per_query: list[dict]) -> dict:
    """Mean of each measure over the queries that define it."""
    keys = sorted({key for row in per_query for key in row})
    means = {}
    for key in keys:
        values = np.array([row[key] for row in per_query if key in row], dtype=np.float64)
        values = values[~np.isnan(values)]
        means[key] = float(values.mean()) if len(values) else None
    return means
