import numpy as np
import pytest

from spotit.features.pooling import average, gem, l2_normalise, max_
from spotit.search.ranking import rank, ranklist_line, read_ranklist, write_ranklist
from spotit.vectors import region_scores


def test_poolings_on_a_hand_worked_map():
    fmap = np.array([[[[1.0, 3.0], [0.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]])  # (1, 2, 2, 2)
    assert np.allclose(average(fmap), [[2.0, 2.0]])
    assert np.allclose(max_(fmap), [[4.0, 2.0]])
    assert np.allclose(gem(fmap, p=1.0), average(fmap), atol=1e-5)
    assert np.allclose(gem(fmap, p=3.0), [[((1 + 27 + 0 + 64) / 4) ** (1 / 3), 2.0]], atol=1e-4)


def test_l2_normalise_gives_unit_rows_and_survives_zero():
    x = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(x[0], [0.6, 0.8]) and np.all(np.isfinite(x[1]))


def test_rank_orders_best_first_and_keeps_ties_in_gallery_order():
    assert rank(np.array([0.2, 0.9, 0.2, 0.5])).tolist() == [1, 3, 0, 2]


def test_ranklist_format_and_round_trip(tmp_path):
    line = ranklist_line("7", ["12", "3", "4981"])
    assert line == "Q7: 12, 3, 4981"
    write_ranklist(tmp_path / "r.txt", [line, ranklist_line("8", ["3", "12", "4981"])])
    assert read_ranklist(tmp_path / "r.txt") == {"7": ["12", "3", "4981"], "8": ["3", "12", "4981"]}


def test_region_grid_covers_whole_image_then_overlapping_windows():
    from spotit.features.global_features import region_grid

    grid = region_grid(3)
    assert len(grid) == 1 + 4 + 9 and grid[0] == (0.0, 1.0, 0.0, 1.0)
    assert all(0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1 for y0, y1, x0, x1 in grid)
    assert grid[1] == pytest.approx((0.0, 2 / 3, 0.0, 2 / 3))


def test_pool_regions_takes_gem_of_each_window():
    from spotit.features.global_features import pool_regions

    fmap = np.zeros((1, 4, 4), np.float32)
    fmap[0, :2, :2] = 2.0  # top-left quarter lit
    pooled = pool_regions(fmap, [(0.0, 1.0, 0.0, 1.0), (0.0, 0.5, 0.0, 0.5), (0.5, 1.0, 0.5, 1.0)], p=1.0)
    assert pooled[:, 0] == pytest.approx([0.5, 2.0, 0.0], abs=1e-5)


def test_whitening_decorrelates_and_refuses_too_few_vectors():
    from spotit.features.whitening import Whitening

    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((64, 64))
    data = rng.standard_normal((5000, 64)) @ mixing
    whitening = Whitening.fit(data, dims=48, power=0.5)
    projected = (data - whitening.mean) @ whitening.projection
    covariance = np.cov(projected.T)
    assert np.allclose(covariance, np.eye(48), atol=0.1)
    assert np.allclose(np.linalg.norm(whitening(data[:5]), axis=1), 1.0, atol=1e-5)
    assert Whitening.fit(data[:40], dims=48) is None


def test_region_scores_take_each_images_best_region_per_vector():
    rng = np.random.default_rng(1)
    images, per_image, dim = 5, 3, 8
    regions = rng.standard_normal((images * per_image, dim)).astype(np.float32)
    vectors = rng.standard_normal((2, dim)).astype(np.float32)
    scores = region_scores(np.ascontiguousarray(regions.T), per_image, vectors)
    assert scores.shape == (2, images)
    for k in range(2):
        for i in range(images):
            assert scores[k, i] == pytest.approx(max(regions[i * per_image + r] @ vectors[k] for r in range(per_image)), abs=1e-5)
    assert np.allclose(region_scores(np.ascontiguousarray(regions.T), per_image, vectors[0]), scores[:1])


def test_a_partial_ranking_is_the_full_rankings_prefix_ties_included():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, 500).astype(np.float32)  # many ties
    full = rank(scores)
    for top in (1, 7, 50, 499, 500, 900):
        assert np.array_equal(rank(scores, top), full[:top])
