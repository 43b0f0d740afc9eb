import numpy as np
import pytest

from spotit.features.local_features import empty_features
from spotit.search import rerank
from spotit.search.verify import Verification
from spotit.vectors import ExactRegions


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


def crowded_gallery() -> ExactRegions:
    """Six photos of two regions each: photos 0-2 alike (a common view), 3-5 each unlike any other."""
    rng = np.random.default_rng(0)
    wholes = np.eye(8)[[0, 0, 0, 3, 4, 5]] + 0.05 * rng.normal(size=(6, 8))
    parts = np.eye(8)[[6, 6, 6, 7, 7, 7]] + 0.5 * rng.normal(size=(6, 8))
    regions = np.stack([wholes, parts], axis=1)
    return ExactRegions(regions / np.linalg.norm(regions, axis=2, keepdims=True), 2)


def test_density_is_how_alike_a_photo_is_to_its_nearest_other_photos():
    density = crowded_gallery().density(np.arange(6), 2)
    assert np.all(density[:3] > 0.9)  # each has two near copies
    assert np.all(np.abs(density[3:]) < 0.3)  # itself does not count
    wholes = crowded_gallery().neighbourhood.wholes
    sims = wholes.T @ wholes
    everyone = crowded_gallery().density(np.array([0, 3]), 50)  # k beyond the gallery: every other photo
    assert np.allclose(everyone, [np.delete(sims[0], 0).mean(), np.delete(sims[3], 3).mean()], atol=1e-6)
    asked_alone, asked_together = crowded_gallery().density(np.array([4]), 3), crowded_gallery().density(np.arange(6), 3)
    assert np.allclose(asked_alone, asked_together[4])
    assert np.array_equal(crowded_gallery().density(np.array([1, 1]), 2), density[[1, 1]])
    assert np.array_equal(ExactRegions(np.ones((1, 2, 8), np.float32), 2).density(np.array([0]), 10), [0.0])


def test_a_whole_photo_like_many_others_ranks_below_one_as_similar_that_is_like_no_other():
    regions = crowded_gallery()
    upright = np.array([0.50, 0.30, 0.30, 0.49, 0.20, 0.10])
    nothing = empty_features()

    def final(boxed, conf):
        scores, checks = rerank.rerank(nothing, (100, 100), boxed, [str(i) for i in range(6)], upright.copy(),
                                       np.full(6, -np.inf), lambda name, row: nothing, np.full((6, 2), 100), conf,
                                       regions, np.eye(8)[0], alike=lambda row, transform: 0.0)
        assert all(check.transform is None for check in checks.values())  # no evidence: CNN scores decide
        return scores

    scores = final(False, rerank.confs["default"])
    assert scores[3] > scores[0]
    assert np.median(scores) == pytest.approx(np.median(upright), abs=0.05)  # scores keep their scale
    assert final(True, rerank.confs["default"])[0] > final(True, rerank.confs["default"])[3]  # a boxed object: no
    assert np.array_equal(final(False, rerank.confs["confirmed"]), upright)  # the ablation step before it


def test_a_whole_photos_unverified_matches_lift_it_a_little_not_above_a_verified_one_it_was_close_to(monkeypatch):
    upright = np.array([0.50, 0.48, 0.40, 0.30])
    found = [Verification(0, None, matches=2), Verification(0, None, matches=30),
             Verification(8, np.eye(3), 8.0, matches=40), Verification(0, None, matches=0)]
    monkeypatch.setattr(rerank, "verify_many", lambda *args: found)
    nothing = empty_features()

    def final(boxed, conf):
        conf = {**conf, "qe": 0, "density_weight": 0.0}
        return rerank.rerank(nothing, (100, 100), boxed, ["a", "b", "c", "d"], upright.copy(), np.full(4, -np.inf),
                             lambda name, row: nothing, np.full((4, 2), 100), conf, crowded_gallery(), np.eye(8)[0],
                             alike=lambda row, transform: 0.0)[0]

    conf = rerank.confs["default"]
    scores = final(False, conf)
    assert scores[1] > scores[0]  # another view of the scene: many matches, no single plane
    assert scores[2] > scores[1]  # a verified photo stays above any unverified one it was close to
    assert conf["matches_weight"] < rerank.bonus(conf["min_inliers"], conf)
    assert scores[3] == pytest.approx(upright[3])
    assert final(True, conf)[0] > final(True, conf)[1]  # a boxed object: no
    assert final(False, rerank.confs["inlier-in-centre"])[0] > final(False, rerank.confs["inlier-in-centre"])[1]
