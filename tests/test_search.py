import numpy as np
import pytest

from spotit import SpotitError
from spotit.images import load_image


@pytest.mark.parametrize("method", ["cnn", "sift", "hybrid"])
def test_both_methods_find_the_pasted_copies_of_the_boxed_object(demo, demo_index, method):
    hits = demo_index.search(demo["query"], [demo["box"]], method=method, top=3)
    assert {h.id for h in hits} == set(demo["relevant"])
    assert hits[0].score >= hits[1].score >= hits[2].score
    assert all(h.path.endswith(".jpg") for h in hits)


def test_search_ranks_the_whole_gallery_when_top_is_none(demo_index):
    gallery_image = demo_index.gallery / "cat-2.jpg"
    hits = demo_index.search(gallery_image, top=None)
    assert len(hits) == len(demo_index) and hits[0].id == "cat-2"


def test_array_query_gives_the_same_scores_as_the_path(demo, demo_index):
    by_path = demo_index.search(demo["query"], [demo["box"]], top=5)
    by_array = demo_index.search(load_image(demo["query"]), [demo["box"]], top=5)
    assert [h.id for h in by_path] == [h.id for h in by_array]
    assert np.allclose([h.score for h in by_path], [h.score for h in by_array])


def test_several_boxes_merge_by_best_score(demo, demo_index):
    cup_box = demo["box"]
    far_box = (500, 300, 90, 90)  # a corner of the table, not the cup
    cup = {h.id: h.score for h in demo_index.search(demo["query"], [cup_box], top=None)}
    far = {h.id: h.score for h in demo_index.search(demo["query"], [far_box], top=None)}
    both = demo_index.search(demo["query"], [cup_box, far_box], top=None)
    for hit in both:
        assert hit.score == pytest.approx(max(cup[hit.id], far[hit.id]), abs=1e-6)


def test_bad_boxes_are_refused(demo, demo_index):
    with pytest.raises(SpotitError, match="outside"):
        demo_index.search(demo["query"], [(5000, 10, 20, 20)])
    with pytest.raises(SpotitError, match="zero"):
        demo_index.search(demo["query"], [(5, 10, 0, 20)])
