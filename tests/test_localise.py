"""Located boxes cut to the part of the query box that a photo shows (localise.py)."""

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from spotit.demo import OBJECTS, load_photo
from spotit.evaluation.evaluate import iou
from spotit.search import localise
from spotit.search.verify import map_box


def bounding(quad) -> tuple:
    x0, y0 = quad.min(axis=0)
    x1, y1 = quad.max(axis=0)
    return (x0, y0, x1 - x0, y1 - y0)


def loose_query(name: str, scene: str, margin: float) -> tuple[np.ndarray, tuple]:
    """The object's photo cut to its box and set in the middle of another photo with `margin` of its size
    on every side: (the loose query box's pixels, where the object lies in them)."""
    photo, (x, y, w, h) = OBJECTS[name]
    obj = load_photo(photo).crop((x, y, x + w, y + h))
    mx, my = round(w * margin), round(h * margin)
    query = load_photo(scene).resize((w + 2 * mx, h + 2 * my))
    query.paste(obj, (mx, my))
    return np.asarray(query), (mx, my, w, h)


def test_peel_keeps_the_block_that_agrees_among_scattered_chance_agreement():
    agree = np.random.default_rng(0).random((40, 60)) < 0.15
    agree[10:30, 15:45] = True
    x0, y0, x1, y1 = localise.peel(agree, keep=0.3, band=3)
    assert 13 <= x0 <= 15 and 8 <= y0 <= 10 and 45 <= x1 <= 47 and 30 <= y1 <= 32  # a band stops a line or two early
    assert localise.peel(np.ones((40, 60), bool), keep=0.3) == (0, 0, 60, 40)


def test_the_box_shrinks_to_the_object_when_the_query_box_holds_other_surroundings():
    query, (ox, oy, ow, oh) = loose_query("cup", "brick.png", margin=0.5)
    # the photo: the object (not its query surroundings) seen smaller, moved and darker, in another scene
    transform = np.array([[0.6, 0.05, 40.0], [-0.04, 0.6, 30.0], [0.0, 0.0, 1.0]])
    photo = np.asarray(load_photo("grass.png").resize((800, 600)))
    size = (photo.shape[1], photo.shape[0])
    seen_object = cv2.warpPerspective(query, transform, size)
    mask = np.zeros(query.shape[:2], np.uint8)
    mask[oy : oy + oh, ox : ox + ow] = 1
    inside = cv2.warpPerspective(mask, transform, size, flags=cv2.INTER_NEAREST).astype(bool)
    darker = np.asarray(ImageEnhance.Brightness(Image.fromarray(seen_object)).enhance(0.7))
    photo = np.where(inside[..., None], darker, photo)
    truth = bounding(map_box(transform @ np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1.0]]), ow, oh))
    mapped = bounding(map_box(transform, query.shape[1], query.shape[0]))
    assert iou(mapped, truth) < 0.3  # what the query box alone would say
    seen = localise.seen_part(query, photo, transform)
    assert seen is not None and iou(bounding(seen), truth) > 0.8


def test_the_box_stays_whole_when_the_photo_shows_all_of_it_and_none_when_nothing_agrees():
    query, _ = loose_query("cup", "brick.png", margin=0.2)
    transform = np.array([[0.8, 0.0, 50.0], [0.0, 0.8, 40.0], [0.0, 0.0, 1.0]])
    photo = cv2.warpPerspective(query, transform, (800, 600))
    seen = localise.seen_part(query, photo, transform)
    whole = bounding(map_box(transform, query.shape[1], query.shape[0]))
    assert seen is not None and iou(bounding(seen), whole) > 0.9
    unrelated = np.asarray(load_photo("gravel.png").resize((800, 600)))
    assert localise.seen_part(query, unrelated, transform) is None


def test_a_loose_box_is_located_as_the_object_in_each_photo(demo, demo_index, tmp_path):
    """A query box with half the object's size of other surroundings on every side: the found photos'
    boxes are where the pasted object lies, not the query box mapped whole (four times its area: IoU 0.25)."""
    query, _ = loose_query("cup", "coins.png", margin=0.5)  # surroundings that no gallery photo shows
    path = tmp_path / "loose.jpg"
    Image.fromarray(query).save(path, quality=95)
    hits = demo_index.search(path, [(0, 0, query.shape[1], query.shape[0])], method="hybrid", top=3)
    assert {h.id for h in hits} == set(demo["relevant"])
    for hit in hits:
        assert hit.box is not None and iou(hit.box, demo["places"][hit.id]) > 0.5, (hit.id, hit.box, demo["places"][hit.id])


def test_a_photo_deleted_since_indexing_keeps_the_mapped_box(demo, gallery_copy, tmp_path):
    from spotit import Index

    index = Index.create(tmp_path / "idx", gallery_copy, ["hybrid"])
    index.update(progress=False)
    gone = demo["relevant"][0]
    (gallery_copy / f"{gone}.jpg").unlink()
    hit = next(h for h in index.search(demo["query"], [demo["box"]], method="hybrid", top=3) if h.id == gone)
    assert hit.stale == "deleted" and hit.box is not None and iou(hit.box, demo["places"][gone]) > 0.6


def test_a_big_photo_is_compared_at_the_size_the_box_needs(demo, demo_index, tmp_path):
    """A gallery photo four times larger (decoded smaller for the comparison) gets the same box, scaled."""
    from spotit import Index

    query, _ = loose_query("cup", "coins.png", margin=0.5)
    path = tmp_path / "loose.jpg"
    Image.fromarray(query).save(path, quality=95)
    box = [(0, 0, query.shape[1], query.shape[0])]
    small = {h.id: h.box for h in demo_index.search(path, box, method="hybrid", top=3)}
    gallery = tmp_path / "big"
    gallery.mkdir()
    for name in small:
        with Image.open(demo["gallery"] / f"{name}.jpg") as photo:
            photo.resize((photo.width * 4, photo.height * 4), Image.BICUBIC).save(gallery / f"{name}.jpg", quality=95)
    index = Index.create(tmp_path / "idx", gallery, ["hybrid"])
    index.update(progress=False)
    for hit in index.search(path, box, method="hybrid", top=3):
        assert iou(hit.box, tuple(v * 4 for v in small[hit.id])) > 0.8, (hit.id, hit.box, small[hit.id])


def test_alike_is_high_where_the_photo_shows_the_object_and_low_where_a_wrong_fit_lands():
    query, (ox, oy, ow, oh) = loose_query("cup", "brick.png", margin=0.2)
    transform = np.array([[0.7, 0.05, 60.0], [-0.05, 0.7, 50.0], [0.0, 0.0, 1.0]])
    photo = np.asarray(load_photo("grass.png").resize((800, 600))).copy()
    seen = cv2.warpPerspective(query, transform, (800, 600))
    inside = cv2.warpPerspective(np.ones(query.shape[:2], np.uint8), transform, (800, 600)).astype(bool)
    photo[inside] = np.asarray(ImageEnhance.Brightness(Image.fromarray(seen)).enhance(0.8))[inside]
    assert localise.alike(query, photo, transform) > 0.6
    elsewhere = np.array([[0.35, 0.0, 560.0], [0.0, 0.35, 340.0], [0.0, 0.0, 1.0]])  # a chance fit: on grass
    assert localise.alike(query, photo, elsewhere) < 0.2


def test_two_flat_patches_are_no_evidence_that_a_fit_is_right():
    rng = np.random.default_rng(0)
    plain_object = np.clip(np.full((200, 240, 3), (200, 40, 40)) + rng.normal(0, 1.5, (200, 240, 3)), 0, 255)
    wall = np.clip(np.full((600, 800, 3), (40, 40, 190)) + rng.normal(0, 1.5, (600, 800, 3)), 0, 255)
    transform = np.array([[0.8, 0.0, 100.0], [0.0, 0.8, 80.0], [0.0, 0.0, 1.0]])
    agree, _ = localise.agreement(plain_object.astype(np.uint8), wall.astype(np.uint8), transform)
    assert agree.mean() > 0.4  # for placing a box, plain on plain counts half
    assert localise.alike(plain_object.astype(np.uint8), wall.astype(np.uint8), transform) < 0.05
