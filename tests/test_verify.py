import numpy as np
import pytest
from PIL import Image

from spotit import Index
from spotit.evaluation.evaluate import iou
from spotit.features.local_features import LocalFeatures
from spotit.search.matching import ratio_matches, ratio_matches_unit
from spotit.search.verify import anisotropy, centre_weighted, confs, map_box, plausible, rootsift, sound, verify


def synthetic_pair(consistent: bool, n: int = 200, seed: int = 0):
    """Gallery features that are the query's seen through a homography, or shuffled to random places."""
    rng = np.random.default_rng(seed)
    descriptors = rng.integers(0, 120, (n, 128)).astype(np.uint8)
    points = rng.uniform(0, 300, (n, 2)).astype(np.float32)
    homography = np.array([[0.9, -0.2, 40.0], [0.25, 0.95, 10.0], [1e-4, 2e-4, 1.0]])
    moved = np.c_[points, np.ones(n)] @ homography.T
    moved = (moved[:, :2] / moved[:, 2:]).astype(np.float32)
    if not consistent:
        moved = rng.uniform(0, 400, (n, 2)).astype(np.float32)
    pad = np.zeros((n, 2), np.float32)
    return LocalFeatures(np.c_[points, pad], descriptors), LocalFeatures(np.c_[moved, pad], descriptors), homography


def test_verification_accepts_a_consistent_match_set_and_recovers_the_transform():
    query, gallery, homography = synthetic_pair(consistent=True)
    check = verify(query, gallery, (300, 300), (400, 400))
    assert check.inliers >= 190
    corners = map_box(check.transform, 300, 300)
    expected = map_box(homography, 300, 300)
    assert np.abs(corners - expected).max() < 1.0


def test_verification_rejects_a_geometrically_inconsistent_match_set():
    query, gallery, _ = synthetic_pair(consistent=False)
    # every descriptor matches its twin: the ratio test passes, only geometry can reject them
    matched = len(ratio_matches_unit(rootsift(query.descriptors), [rootsift(gallery.descriptors)], 0.8)[0])
    assert matched >= 190
    check = verify(query, gallery, (300, 300), (400, 400))
    assert check.inliers < 10
    assert check.matches == matched  # what was matched is kept, sound or not (rerank.hint reads it)


def test_plausible_rejects_mirror_and_collapse():
    assert plausible(np.eye(3))
    assert not plausible(np.diag([-1.0, 1.0, 1.0]))  # a mirror image is no view of an object
    assert not plausible(np.diag([1e-4, 1e-4, 1.0]))
    assert not plausible(None)


def test_sound_rejects_slivers_self_crossing_quads_and_fits_outside_the_photo():
    box, photo = (200, 100), (640, 480)
    assert sound(np.array([[0.8, 0.3, 50], [-0.2, 0.9, 60], [1e-4, 0, 1.0]]), box, photo)  # a turned, tilted view
    sliver = np.array([[1.0, 0, 0], [0, 0.05, 100], [0, 0, 1.0]])  # plausible (det 0.05), but a thin line
    assert plausible(sliver) and anisotropy(sliver, 100, 50) == pytest.approx(20) and not sound(sliver, box, photo)
    # a homography whose horizon crosses the box folds it into a bow tie
    bow_tie = np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.009, 0, 1.0]])
    assert not sound(bow_tie, box, photo)
    assert not sound(np.array([[0.05, 0, 10], [0, 0.05, 10], [0, 0, 1.0]]), box, photo)  # 10 x 5 px: too small
    assert not sound(np.array([[1.0, 0, 560], [0, 1.0, 10], [0, 0, 1.0]]), box, photo)  # mostly outside the photo
    # a corner near the horizon line: flung far away though the centre looks tame (a real ukbench fit)
    horizon = np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.0042, -0.0015, 1.0]])
    assert anisotropy(horizon, 100, 50) < 4 and not sound(horizon, box, photo, boxed=False)


def test_centre_weighted_counts_inliers_near_the_box_border_less():
    points = np.array([[50, 50], [48, 52], [2, 2], [98, 3]], np.float32)  # two central, two at corners
    assert centre_weighted(points, (100, 100)) == pytest.approx(2 + 2 * 0.25)


def test_a_fit_of_the_box_border_alone_is_no_evidence():
    border = np.array([[2, 2], [98, 3], [97, 96], [3, 60]] * 10, np.float32)  # 40 inliers, all near the edges
    assert centre_weighted(border, (100, 100)) == 0.0
    assert centre_weighted(border, (100, 100), confs["weighted"]) == pytest.approx(40 * 0.25)  # the step before
    assert centre_weighted(np.vstack([border, [[50, 50]]]), (100, 100)) == pytest.approx(1 + 40 * 0.25)


def test_matrix_product_matching_equals_brute_force_ratio_test():
    rng = np.random.default_rng(3)
    query = rootsift(rng.integers(0, 255, (150, 128)).astype(np.uint8))
    galleries = []
    for size in [1, 40, 300, 7]:
        gallery = rootsift(rng.integers(0, 255, (size, 128)).astype(np.uint8))
        gallery[: min(size, 20)] = query[: min(size, 20)] * 0.999 + 0.001
        galleries.append(gallery / np.linalg.norm(gallery, axis=1, keepdims=True))
    for fast, gallery in zip(ratio_matches_unit(query, galleries, 0.8), galleries):
        slow = ratio_matches(query, gallery, 0.8)
        assert sorted(map(tuple, fast)) == sorted(map(tuple, slow))


def test_iou_of_hand_worked_boxes():
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0 and iou((1, 2, 3, 4), (1, 2, 3, 4)) == 1


def test_mapped_query_box_lands_on_the_pasted_object(demo, demo_index):
    hits = demo_index.search(demo["query"], [demo["box"]], method="hybrid", top=3)
    assert {h.id for h in hits} == set(demo["relevant"])
    for hit in hits:
        assert hit.inliers >= 8 and hit.box is not None
        assert iou(hit.box, demo["places"][hit.id]) > 0.6, (hit.id, hit.box, demo["places"][hit.id])
        assert set(hit.to_dict()) >= {"box", "quad", "inliers"}


def test_a_90_degree_rotated_copy_is_found(gallery_copy, tmp_path):
    with Image.open(gallery_copy / "motorbike-2.jpg") as picture:
        picture.transpose(Image.Transpose.ROTATE_90).save(gallery_copy / "turned.jpg", quality=92)
    index = Index.create(tmp_path / "idx", gallery_copy, ["hybrid"])
    index.update(progress=False)
    hits = index.search(gallery_copy / "motorbike-2.jpg", method="hybrid", top=2)
    assert [h.id for h in hits] == ["motorbike-2", "turned"]
    assert hits[1].inliers >= 20
