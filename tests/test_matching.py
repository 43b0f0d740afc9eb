import numpy as np

from spotit.search.matching import ratio_matches


def test_ratio_test_keeps_distinctive_matches_only():
    rng = np.random.default_rng(0)
    gallery = rng.integers(0, 255, (50, 128)).astype(np.uint8)
    query = gallery[[3, 7, 11]].astype(np.int32)
    query[0] += 1  # near-exact copies match distinctively
    ambiguous = gallery[20].astype(np.int32)
    gallery[21] = gallery[20]  # two equally good neighbours fail the ratio test
    query = np.vstack([query, ambiguous]).clip(0, 255).astype(np.uint8)
    matches = ratio_matches(query, gallery)
    assert matches.tolist() == [[0, 3], [1, 7], [2, 11]]


def test_ratio_matches_handles_empty_sets():
    assert ratio_matches(np.zeros((0, 128), np.uint8), np.zeros((5, 128), np.uint8)).shape == (0, 2)
    assert ratio_matches(np.zeros((3, 128), np.uint8), np.zeros((1, 128), np.uint8)).shape == (0, 2)
