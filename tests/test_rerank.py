import numpy as np

from spotit import rerank
from spotit.verify import Verification


def test_every_verified_result_among_the_best_expands_the_query():
    fused = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    inliers = np.array([9, 0, 30, 12, 100, 0, 50])
    conf = rerank.confs["default"]
    assert conf["qe_min_inliers"] == conf["min_inliers"]  # verified is enough
    assert rerank.expansion(fused, inliers, conf) == [0, 2]
    # spotit 0.1 asked for 15 inliers; row 6 is beyond the 3 * qe best either way
    assert rerank.expansion(fused, inliers, rerank.confs["v0.1"]) == [2, 4]
    assert rerank.expansion(fused, np.zeros(7), conf) == []


def test_a_weak_sound_fit_counts_as_verified_only_where_its_photo_looks_like_the_object():
    conf = rerank.confs["default"]
    fit = np.eye(3)
    checks = {0: Verification(5, fit, 5.0), 1: Verification(5, fit, 5.0), 2: Verification(20, fit, 20.0),
              3: Verification(2, fit, 2.0), 4: Verification(0, None, 0.0)}
    asked = []

    def alike(row, transform):
        asked.append(row)
        return {0: 0.6, 1: 0.2}[row]

    rerank.confirm(checks, alike, conf)
    assert sorted(asked) == [0, 1]  # strong fits need no photo, too weak or unsound ones get none
    assert checks[0].score == conf["min_inliers"] and checks[0].inliers == 5
    assert [checks[i].score for i in (1, 2, 3, 4)] == [5.0, 20.0, 2.0, 0.0]
    asked.clear()
    rerank.confirm(checks, alike, rerank.confs["expansion"])  # the ablation step before it
    assert asked == []
