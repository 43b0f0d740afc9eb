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
    # `yes` keeps precision >= 0.98 on every calibration set, `maybe` >= 0.5 over them all
    "default": {"weights": [2.0, 4.0], "bias": -8.0, "yes": 0.9, "maybe": 0.5},
}


def features(evidence, similarity) -> np.ndarray:
    """(n, 2) model inputs of n results."""
    evidence = np.asarray(evidence, np.float64)
    return np.stack([np.log1p(np.maximum(evidence, 0.0)), np.asarray(similarity, np.float64)], axis=-1)


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


def cut_off(p: np.ndarray, labels: np.ndarray, precision: float) -> float:
    """The lowest probability whose results, taken from the top down to it, reach `precision`."""
    order = np.argsort(-p, kind="stable")
    hits = np.cumsum(labels[order])
    reached = np.nonzero(hits / np.arange(1, len(p) + 1) >= precision)[0]
    return float(p[order][reached[-1]]) if len(reached) else 1.0
