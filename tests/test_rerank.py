import numpy as np

from spotit import rerank


def test_every_verified_result_among_the_best_expands_the_query():
    fused = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    inliers = np.array([9, 0, 30, 12, 100, 0, 50])
    conf = rerank.confs["default"]
    assert conf["qe_min_inliers"] == conf["min_inliers"]  # verified is enough
    assert rerank.expansion(fused, inliers, conf) == [0, 2]
    # spotit 0.1 asked for 15 inliers; row 6 is beyond the 3 * qe best either way
    assert rerank.expansion(fused, inliers, rerank.confs["v0.1"]) == [2, 4]
    assert rerank.expansion(fused, np.zeros(7), conf) == []
