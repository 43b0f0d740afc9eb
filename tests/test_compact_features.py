"""Gallery photos' local features are stored compact; matching sees them expanded."""

import numpy as np

from spotit.features.local_features import LocalFeatures, compact, expand
from spotit.search.verify import rootsift


def features(n=300, seed=0, scale=1000.0):
    rng = np.random.default_rng(seed)
    keypoints = np.column_stack([rng.random((n, 2)) * scale, rng.random(n) * 30, rng.random(n) * 360]).astype(np.float32)
    return LocalFeatures(keypoints, rng.integers(0, 256, (n, 128)).astype(np.uint8))


def test_compact_keeps_the_largest_keypoints_in_half_a_byte_a_value():
    full = features()
    stored = compact(full, 100, 4)
    assert stored.descriptors.shape == (100, 64) and stored.keypoints.dtype == np.float16
    assert np.isclose(stored.keypoints[:, 2].min(), np.sort(full.keypoints[:, 2])[-100], atol=0.02)
    back = expand(stored)
    assert back.descriptors.shape == (100, 128) and back.keypoints.dtype == np.float32
    kept = np.argsort(-full.keypoints[:, 2], kind="stable")[:100]
    assert np.abs(back.keypoints[:, :2] - full.keypoints[kept, :2]).max() <= 0.5  # float16 at < 1024 px
    # square-root levels: RootSIFT of the stored descriptor stays close to the original's
    cosine = (rootsift(back.descriptors) * rootsift(full.descriptors[kept])).sum(axis=1)
    assert cosine.min() > 0.97


def test_compact_keeps_float32_geometry_beyond_float16_and_empty_features_stay_empty():
    huge = compact(features(scale=100_000.0), None, 4)
    assert huge.keypoints.dtype == np.float32 and len(huge) == 300
    empty = compact(LocalFeatures(np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8)), 50, 4)
    assert len(expand(empty)) == 0 and expand(empty).descriptors.shape == (0, 128)


def test_eight_bit_storage_is_lossless_for_descriptors():
    full = features(seed=1)
    back = expand(compact(full, None, 8))
    order = np.argsort(-full.keypoints[:, 2], kind="stable")
    assert np.array_equal(back.descriptors, full.descriptors[order])


def test_rootsift_of_stored_four_bit_descriptors_equals_that_of_their_expansion():
    stored = compact(features(seed=2), None, 4)
    stored.descriptors[0] = 0  # an empty descriptor stays zero, not NaN
    direct, expanded = rootsift(stored.descriptors), rootsift(expand(stored).descriptors)
    assert direct.shape == (300, 128) and np.allclose(direct, expanded, atol=1e-6)
    assert not direct[0].any() and np.allclose(np.linalg.norm(direct[1:], axis=1), 1.0, atol=1e-5)
