import json

import numpy as np
import pytest
from PIL import Image

from spotit import SpotitError
from spotit.evaluation.clutter import ClutterConfig, make_clutter


@pytest.fixture
def sources(tmp_path, noise_image):
    objects = tmp_path / "objects"
    (objects / "images").mkdir(parents=True)
    truth = {}
    for obj in range(5):
        views = [f"o{obj}v{v}.jpg" for v in range(3)]
        for v, name in enumerate(views):
            noise_image(objects / "images" / name, seed=100 + 10 * obj + v, size=(60, 80))
        truth.update({n: [m for m in views if m != n] for n in views})
    (objects / "groundtruth.json").write_text(json.dumps(truth))
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for s in range(10):
        noise_image(scenes / f"s{s}.jpg", seed=s, size=(300, 400))
    return objects, scenes


def polygon_area(quad):
    x, y = np.array(quad).T
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def test_make_clutter_writes_a_consistent_assignment_layout(sources, tmp_path):
    config = ClutterConfig(objects=2, distractor_scenes=3, distractor_objects=1, seed=5)
    made = make_clutter(*sources, tmp_path / "out", config, progress=False)
    out = made["out"]
    truth = json.loads((out / "groundtruth.json").read_text())
    placements = json.loads((out / "placements.json").read_text())
    assert sorted(truth) == ["q000.jpg", "q001.jpg"]
    assert made["gallery"] == 2 * 2 + 3 == len(list((out / "gallery").iterdir()))
    for query, relevant in truth.items():
        assert len(relevant) == 2  # the two views not used by the query
        with Image.open(out / "query" / query) as picture:
            width, height = picture.size
        assert max(width, height) == 800  # scenes are brought to about 800 px
        x, y, w, h = map(int, (out / "query_txt" / query.replace(".jpg", ".txt")).read_text().split())
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w * h >= 0.15 * width * height * 0.9
        for name in relevant:
            (placed,) = placements[name.removesuffix(".jpg")]
            with Image.open(out / "gallery" / name) as picture:
                area = picture.width * picture.height
            assert polygon_area(placed["quad"]) <= 0.25 * area * 1.3
            assert polygon_area(placed["quad"]) >= 0.06 * area * 0.5
    distractors = [p for ps in placements.values() for p in ps if p["object"].startswith("distractor")]
    assert len(distractors) == 2  # the distractor object's two views, in distractor scenes


def test_make_clutter_is_deterministic_for_a_seed(sources, tmp_path):
    config = ClutterConfig(objects=2, distractor_scenes=2, distractor_objects=1, seed=1)
    first = make_clutter(*sources, tmp_path / "a", config, progress=False)["out"]
    second = make_clutter(*sources, tmp_path / "b", config, progress=False)["out"]
    other = make_clutter(*sources, tmp_path / "c", ClutterConfig(objects=2, distractor_scenes=2, distractor_objects=1, seed=2), progress=False)["out"]
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert (first / "placements.json").read_text() != (other / "placements.json").read_text()


def test_make_clutter_refuses_a_non_empty_output_and_too_few_objects(sources, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(SpotitError, match="not empty"):
        make_clutter(*sources, tmp_path / "full", ClutterConfig(objects=2), progress=False)
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    with pytest.raises(SpotitError, match="5 objects; 60 were asked"):
        make_clutter(*sources, tmp_path / "new", ClutterConfig(objects=60), progress=False)


def test_hard_clutter_shares_scenes_and_puts_each_query_scene_in_the_gallery_without_the_object(sources, tmp_path):
    config = ClutterConfig(objects=2, distractor_scenes=3, distractor_objects=1, seed=5, shared_scenes=True, turned=0.5)
    out = make_clutter(*sources, tmp_path / "hard", config, progress=False)["out"]
    placements = json.loads((out / "placements.json").read_text())
    assert len(placements) == 2 * 2 + 3 + 2  # object views, distractor scenes, and the two query scenes
    empty = [np.asarray(Image.open(out / "gallery" / f"{name}.jpg"), np.float32) for name, p in placements.items() if not p]
    for query in ("q000", "q001"):
        picture = np.asarray(Image.open(out / "query" / f"{query}.jpg"), np.float32)
        x, y, w, h = map(int, (out / "query_txt" / f"{query}.txt").read_text().split())
        outside = np.ones(picture.shape[:2], bool)
        outside[y : y + h, x : x + w] = False
        # the query's background is in the gallery, as photographed or mirrored (JPEG-compressed anew):
        # far closer to one scene without the object than scenes are to each other
        gaps = sorted(np.abs(g - s)[outside].mean() for g in empty if g.shape == picture.shape for s in (picture, picture[:, ::-1]))
        assert gaps[0] < 0.5 * gaps[len(gaps) // 2]


def test_turned_views_follow_the_asked_share():
    from spotit.evaluation.clutter import turned_angle

    rng = np.random.default_rng(0)
    angles = np.abs([turned_angle(rng, 0.5) for _ in range(4000)])
    # half are turned uniformly up to 180 degrees, 8 in 9 of those beyond 20; the other half stay within 20
    assert 0.40 < (angles > 20).mean() < 0.49 and angles.max() > 170 and (angles <= 20).mean() > 0.5
