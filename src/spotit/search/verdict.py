"""Whether a result shows the query object: `yes`, `maybe` or `no`, with a probability.

The evidence is what the hybrid method measured: the verification score (inliers weighted by where they lie
in the query box, rerank.py) and the CNN similarity. A logistic model turns them into a probability that
the photo is relevant; `yes` and `maybe` are cut-offs on it. Model and cut-offs are calibrated on labelled
sets by benchmarks/verdict.py (`fit`, `cut_off`), which reports their precision and recall per set.
"""

from __future__ import annotations

import numpy as np

VERDICTS = ("yes", "maybe", "no")

confs = {
    # written by `python benchmarks/verdict.py --write`: weights of (log(1 + evidence), similarity), bias;
    # `yes` keeps the precision of yes >= 0.98 on every calibration set, `maybe` that of yes + maybe >= 0.5
    "default": {"weights": [1.303315, 26.438556], "bias": -10.84704, "yes": 0.961286, "maybe": 0.029299},
}


def features(evidence, similarity) -> np.ndarray:
    """(n, 2) model inputs of n results."""
    evidence, similarity = np.broadcast_arrays(np.asarray(evidence, np.float64), np.asarray(similarity, np.float64))
    return np.stack([np.log1p(np.maximum(evidence, 0.0)), similarity], axis=-1)


def probability(evidence, similarity, conf: dict = confs["default"]) -> np.ndarray:
    """The calibrated probability that each result shows the query object."""
    z = features(evidence, similarity) @ np.asarray(conf["weights"]) + conf["bias"]
    return 1.0 / (1.0 + np.exp(-z))


def verdict(p: float, conf: dict = confs["default"]) -> str:
    return "yes" if p >= conf["yes"] else "maybe" if p >= conf["maybe"] else "no"


def fit(x: np.ndarray, labels: np.ndarray, l2: float = 1e-3, steps: int = 50) -> tuple[np.ndarray, float]:
    """Logistic regression by Newton's method: (weights, bias) for inputs `x` (n, d) and 0/1 `labels`."""
    design = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(design.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-design @ theta))
        gradient = design.T @ (p - labels) + l2 * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + l2 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:-1], float(theta[-1])


def cut_off(sets: list[tuple[np.ndarray, np.ndarray]], precision: float) -> float:
    """The lowest probability at which, on every one of `sets` ((probabilities, 0/1 labels) each), the
    results at or above it reach `precision`: the most recall that keeps it everywhere. (Precision does not
    fall steadily as the cut-off falls, so each set's own cut-off would not do for the others.)"""
    candidates = np.unique(np.concatenate([p for p, _ in sets]))
    holds = np.ones(len(candidates), bool)
    for p, labels in sets:
        order = np.argsort(p, kind="stable")
        ascending, hits_below = p[order], np.concatenate([[0], np.cumsum(labels[order])])
        first = np.searchsorted(ascending, candidates, side="left")  # results at or above each candidate
        count, hits = len(p) - first, hits_below[-1] - hits_below[first]
        holds &= (count == 0) | (hits >= precision * np.maximum(count, 1))
    return float(candidates[np.argmax(holds)]) if holds.any() else float(np.nextafter(candidates[-1], np.inf))
