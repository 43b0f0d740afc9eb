import json

import numpy as np
import pytest
from PIL import Image

from spotit import SpotitError
from spotit.clutter import ClutterConfig, make_clutter


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
