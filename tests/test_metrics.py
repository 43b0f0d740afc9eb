import math

import numpy as np
import pytest

from spotit.evaluation.metrics import (
    average_precision,
    mean_metrics,
    ns_score,
    positive_ranks,
    precision_at,
    query_metrics,
)
from spotit.search.ranking import rank


def test_average_precision_hand_worked():
    # positives at 0-based ranks 1 and 3 of 2 positives:
    # (0/1 + 1/2)/2 * 1/2 + (1/3 + 2/4)/2 * 1/2 = 0.125 + 0.208333
    assert average_precision(np.array([1, 3]), 2) == pytest.approx(0.3333333, abs=1e-6)
    assert average_precision(np.array([0, 1, 2]), 3) == pytest.approx(1.0)
    # a positive never retrieved adds nothing: first of two at rank 0 -> (1 + 1)/2 * 1/2
    assert average_precision(np.array([0]), 2) == pytest.approx(0.5)
    assert math.isnan(average_precision(np.array([], dtype=int), 0))


def test_junk_is_removed_before_ranks_are_counted():
    ranking = ["x", "junk", "p1", "y", "p2"]
    ranks = positive_ranks(ranking, ["p1", "p2"], junk=["junk"])
    assert ranks.tolist() == [1, 3]
    assert query_metrics(ranking, ["p1", "p2"], ["junk"])["ap"] == pytest.approx(0.3333333, abs=1e-6)
    # without the junk rule the same list scores lower: ranks 2 and 4
    assert query_metrics(ranking, ["p1", "p2"])["ap"] == pytest.approx((1 / 3) / 4 + (1 / 4 + 2 / 5) / 4, abs=1e-6)


def test_tied_scores_are_broken_by_gallery_order_not_by_relevance():
    names = ["a", "b", "c"]
    scores = np.array([0.5, 0.5, 0.5])
    ranking = [names[i] for i in rank(scores)]
    assert ranking == ["a", "b", "c"]
    # the positive "c" sits last among the ties: (0/2 + 1/3)/2
    assert query_metrics(ranking, ["c"])["ap"] == pytest.approx(1 / 6)
    assert query_metrics(ranking, ["a"])["ap"] == pytest.approx(1.0)


def test_precision_at_k_follows_revisitop():
    ranks = np.array([0, 3, 7])  # 1-based: 1, 4, 8
    assert precision_at(ranks, 1) == 1.0
    assert precision_at(ranks, 5) == pytest.approx(2 / 5)
    assert precision_at(ranks, 10) == pytest.approx(3 / 8)  # the cut shrinks to the last positive
    assert precision_at(np.array([], dtype=int), 10) == 0.0


def test_ns_score_counts_positives_in_top_three_without_the_query():
    ranking = ["q", "a", "x", "b", "c"]
    assert ns_score(ranking, ["a", "b", "c"], query="q") == 3.0
    assert ns_score(["a", "b", "c", "q"], ["a", "b", "c"], query="q") == 4.0


def test_mean_skips_queries_without_positives():
    rows = [{"ap": 1.0, "p@1": 1.0}, {"ap": float("nan"), "p@1": float("nan")}, {"ap": 0.5, "p@1": 0.0}]
    assert mean_metrics(rows) == {"ap": 0.75, "p@1": 0.5}
