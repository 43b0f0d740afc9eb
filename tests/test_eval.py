import json
import pickle

import pytest
from PIL import Image

from spotit import Index, SpotitError
from spotit.cli import main
from spotit.evaluation.datasets import load_dataset
from spotit.evaluation.evaluate import evaluate
from spotit.index import Result


@pytest.fixture
def four_views_set(tmp_path, noise_image):
    """Plain layout: objects a and b with four views each; every image is a query."""
    root = tmp_path / "tiny"
    (root / "images").mkdir(parents=True)
    names = [f"{o}{v}.jpg" for o in "ab" for v in range(1, 5)]
    for seed, name in enumerate(names):
        noise_image(root / "images" / name, seed=seed)
    truth = {n: [m for m in names if m[0] == n[0] and m != n] for n in names}
    (root / "groundtruth.json").write_text(json.dumps(truth))
    return root


def alphabetical(index):
    """Make the index rank its gallery alphabetically, whatever the query: hand-computable metrics."""

    def search(query, boxes=None, method="cnn", top=None, progress=False):
        return [Result(n.rsplit(".", 1)[0], str(index.gallery / n), 1.0) for n in index.snapshot().names]

    index.search = search
    return index


def test_eval_end_to_end_matches_hand_computed_metrics(four_views_set, tmp_path):
    index = Index.create(tmp_path / "idx", four_views_set / "images", ["cnn"])
    result = evaluate(four_views_set, "cnn", index=alphabetical(index), progress=False)
    # a-queries: the other a's fill ranks 0-2 -> AP 1. b-queries: positives at ranks 4, 5, 6 of 7:
    b_ap = ((0 / 4 + 1 / 5) + (1 / 5 + 2 / 6) + (2 / 6 + 3 / 7)) / 2 / 3
    assert result["map"] == pytest.approx((1 + b_ap) / 2)
    assert result["p@1"] == pytest.approx(0.5)
    assert result["p@5"] == pytest.approx((1 + 1 / 5) / 2)
    assert result["p@10"] == pytest.approx((1 + 3 / 7) / 2)
    assert result["ns"] == pytest.approx((4 + 1) / 2)
    assert result["queries"] == 8 and result["gallery_images"] == 8
    assert result["index_images_per_s"] > 0 and result["index_bytes_per_image"] > 0
    assert 0 <= result["query_s_median"] <= result["query_s_p95"]


def test_revisited_layout_scores_easy_medium_hard_with_junk(tmp_path, noise_image):
    root = tmp_path / "roxford5k"
    (root / "jpg").mkdir(parents=True)
    imlist = ["e1", "h1", "j1", "x1", "x2", "q1"]
    for seed, name in enumerate(imlist):
        noise_image(root / "jpg" / f"{name}.jpg", seed=seed, size=(64, 64))
    gnd = {"imlist": imlist, "qimlist": ["q1"],
           "gnd": [{"bbx": [2.0, 3.0, 40.0, 50.0], "easy": [0], "hard": [1], "junk": [2]}]}
    with open(root / "gnd_roxford5k.pkl", "wb") as handle:
        pickle.dump(gnd, handle)
    dataset = load_dataset(root)
    assert dataset.layout == "revisited" and dataset.queries[0].boxes == [(2, 3, 38, 47)]
    index = Index.create(tmp_path / "idx", root / "jpg", ["cnn"])
    result = evaluate(root, "cnn", index=alphabetical(index), progress=False)
    # alphabetical ranking: e1, h1, j1, q1, x1, x2
    assert result["map_easy"] == pytest.approx(1.0)  # h1 and j1 are junk
    assert result["map"] == pytest.approx(1.0)  # medium: e1, h1 positives at 0, 1
    assert result["map_hard"] == pytest.approx(1.0)  # e1 junk, so h1 is first
    assert result["ns"] is None and result["dataset"] == "roxford5k"


def test_assignment_layout_crops_queries_to_their_boxes(tmp_path, noise_image):
    root = tmp_path / "boxed"
    for sub in ("gallery", "query", "query_txt"):
        (root / sub).mkdir(parents=True)
    for seed in range(3):
        noise_image(root / "gallery" / f"{seed}.jpg", seed=seed)
    noise_image(root / "query" / "7.jpg", seed=9)
    (root / "query_txt" / "7.txt").write_text("1 2 30 40\n5 5 10 10\n")
    (root / "groundtruth.json").write_text(json.dumps({"7.jpg": ["2.jpg"]}))
    dataset = load_dataset(root)
    assert dataset.layout == "assignment" and dataset.queries[0].boxes == [(1, 2, 30, 40), (5, 5, 10, 10)]
    assert dataset.queries[0].protocols["default"] == (["2"], [])


def test_unknown_layout_is_refused_with_what_is_expected(tmp_path):
    with pytest.raises(SpotitError, match="no benchmark layout"):
        load_dataset(tmp_path)


def test_eval_command_json_last_line_has_every_key(demo, tmp_path, capsys):
    """Real CNN end to end on a generated set: the demo's object photos, four views each."""
    root = tmp_path / "objects"
    (root / "images").mkdir(parents=True)
    truth = {}
    for obj, views in demo["truth"].items():
        group = [f"{v}.jpg" for v in views]
        for view in group:
            Image.open(demo["gallery"] / view).save(root / "images" / view)
        for view in group:
            truth[view] = [g for g in group if g != view]
    (root / "groundtruth.json").write_text(json.dumps(truth))
    assert main(["eval", str(root), "--index", str(tmp_path / "idx"), "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = {"dataset", "method", "queries", "map", "p@1", "p@5", "p@10", "ns", "index_images_per_s",
            "query_s_median", "query_s_p95", "index_bytes_per_image"}
    assert keys <= set(result)
    assert result["queries"] == 12 and result["ns"] is None  # groups of three, not UKBench's four
    assert 0.5 < result["map"] <= 1.0


def test_eval_measures_localisation_on_a_set_with_placements(demo, tmp_path):
    """The demo as a boxed set with make-clutter's placements: where each pasted cup truly lies."""
    import shutil

    root = tmp_path / "boxed"
    shutil.copytree(demo["gallery"], root / "gallery")
    (root / "query").mkdir(), (root / "query_txt").mkdir()
    shutil.copy(demo["query"], root / "query" / "q.jpg")
    (root / "query_txt" / "q.txt").write_text(" ".join(map(str, demo["box"])) + "\n")
    (root / "groundtruth.json").write_text(json.dumps({"q.jpg": [f"{n}.jpg" for n in demo["relevant"]]}))
    placements = {name: [{"object": "object-0" if name in demo["relevant"] else "distractor-0", "box": list(box)}]
                  for name, box in demo["places"].items()}
    (root / "placements.json").write_text(json.dumps(placements))
    result = evaluate(root, "hybrid", index_dir=tmp_path / "idx", progress=False)
    assert result["verified_relevant"] == 3 and result["localised_iou50"] == 1.0 and result["false_boxes_top10"] == 0
    # boxes moved off the objects are no longer localised
    placements = {name: [{**p, "box": [0, 0, 5, 5]} for p in entries] for name, entries in placements.items()}
    (root / "placements.json").write_text(json.dumps(placements))
    assert evaluate(root, "hybrid", index_dir=tmp_path / "idx", progress=False)["localised_iou50"] == 0.0
